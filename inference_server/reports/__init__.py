"""Reports made from stored events: the digest (composed, scheduled, published)."""
