"""Serving: the multi-stage recommendation pipeline (sources -> filters -> scorers -> selection) behind BentoML."""
