"""Reliability: fuzzing the served API and faults injected into real processes (issue 9)."""
