"""Metrics (Prometheus) and GPU telemetry: leaves that every layer may use and that use none."""
