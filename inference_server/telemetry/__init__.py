"""Metrics (Prometheus) and hardware telemetry."""
