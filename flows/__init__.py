"""Prefect flows: thin wiring of the same functions and DVC stages the CLI runs."""
