"""Appearance embeddings of people: the ``Embedder`` interface and its backends (face, body),
the crops they see, and the exact nearest-neighbour matching against the enrolled household."""
