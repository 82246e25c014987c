"""Models: shared layers, the two-tower retrieval model, the ranker, training, evaluation and the ANN index."""
