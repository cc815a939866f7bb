"""Handing a verified folder to serving: Triton model repositories, DeepStream configs."""
