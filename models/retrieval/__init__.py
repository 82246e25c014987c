"""The candidate generator: the two-tower model, its training (click sequences or a Feast training set), the ANN
index, the retrieval metrics and baselines, and the jobs the CLI, DVC and Prefect call."""
