"""The multi-task ranker: the task table, the model, its request-group data, training, metrics, tabular baselines,
KuaiRand protocol A, and the jobs the CLI, DVC and Prefect call."""
