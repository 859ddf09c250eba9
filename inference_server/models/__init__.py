"""Model backends behind small interfaces; each backend registers itself by name."""
