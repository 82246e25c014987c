"""Scorers: the ranker's per-action probabilities, their signed blend, author diversity and the out-of-network factor."""
