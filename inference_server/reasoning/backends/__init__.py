"""LLM backends, one module per backend, registered by name in ``base``."""
