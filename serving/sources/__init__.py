"""Candidate sources: each returns candidates for a query (in-network, two-tower ANN, popular/fresh fallback)."""
