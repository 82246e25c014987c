"""Monitoring (issue 8): data drift and prediction drift with Evidently 0.7, on the exposure log."""
