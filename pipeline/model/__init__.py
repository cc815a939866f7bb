"""What a model is: the zoo, the networks, the data and its preprocessing, training."""
