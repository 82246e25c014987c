"""Monitoring: the served model's drift, quality and train/serve skew checks (monitoring/monitor.py), with Evidently."""
