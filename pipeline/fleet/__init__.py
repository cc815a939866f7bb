"""One folder, every GPU kind of a Ray cluster: the plan, a node's work, the merged report."""
