"""Durable job queue in PostgreSQL (see docs/decisions.md for why it is ours)."""
