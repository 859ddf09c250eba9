"""Pipeline stages, one worker per module: detect → reason (→ enrich, batch in later issues)."""
