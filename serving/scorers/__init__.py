"""Scorers: the ranker's per-action probabilities, their signed blend, author diversity, the out-of-network factor."""
