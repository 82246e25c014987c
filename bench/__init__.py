"""Benchmarks: each script measures a command over repeated runs and records results for BENCHMARKS.md."""
