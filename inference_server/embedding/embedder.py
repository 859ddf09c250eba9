"""The ``Embedder`` interface and its registry.

An embedder turns crops of one kind (``face`` or ``body``) into unit-length vectors whose
cosine similarity says how alike two crops look. Backends register a factory with
``@register_embedder("name")``; ``server.py`` builds one per configured source.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from inference_server.registry import Registry

EmbeddingSource = Literal["face", "body"]
SOURCES: tuple[EmbeddingSource, ...] = ("face", "body")
#: An RGB crop (height × width × 3, uint8).
Crop = np.ndarray[Any, np.dtype[np.uint8]]
#: Unit-length vectors, one row per crop.
Vectors = np.ndarray[Any, np.dtype[np.float32]]


class Embedder(Protocol):
    """Embeds crops of one source. ``embed`` blocks: callers run it off the event loop."""

    name: str
    source: EmbeddingSource
    dimensions: int

    def embed(self, crops: Sequence[Crop]) -> Vectors:
        """One L2-normalised row per crop, in order (one batched call); ``(0, dimensions)`` for none."""
        ...

    def describe(self) -> str:
        """What runs: backend, model file, device."""
        ...


EmbedderFactory = Callable[[EmbeddingSource, Path, str], Embedder]
EMBEDDERS: Registry[EmbedderFactory] = Registry("embedder_backend")
#: ``@register_embedder("name")`` on a backend's factory ``(source, model path, device)``.
register_embedder = EMBEDDERS.register


def build_embedder(backend: str, source: EmbeddingSource, model: Path, device: str = "cpu") -> Embedder:
    # Backends register on import; importing here keeps the choice in one place.
    from inference_server.embedding import onnx_backend  # noqa: F401

    return EMBEDDERS.get(backend)(source, model, device)


def model_key(path: Path) -> str:
    """How vectors of ``path`` are labelled when stored: its name and content hash, so a model
    swapped under the same file name is not compared with the old one's vectors."""
    import hashlib

    digest = hashlib.sha256(path.resolve().read_bytes()).hexdigest()[:12]
    return f"{path.resolve().stem}-{digest}"
