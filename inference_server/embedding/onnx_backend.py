"""ONNX Runtime embedder: any ONNX model taking RGB ``[N, H, W, 3]`` float 0–255 and giving
``[N, D]`` (the models ``scripts/models/fetch`` builds, or ArcFace/OSNet-style models a user
exports to that layout)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort

from inference_server.embedding.embedder import Crop, EmbeddingSource, Vectors, register_embedder

log = logging.getLogger(__name__)


class ModelLayoutError(ValueError):
    """The ONNX model does not take ``[N, H, W, 3]`` and give ``[N, D]``."""


class OnnxEmbedder:
    name = "onnx"

    def __init__(self, source: EmbeddingSource, model: Path, *, device: str = "cpu", threads: int = 1) -> None:
        self.source = source
        self.model = model
        options = ort.SessionOptions()
        # One embedding thread beside the detector's: the pipeline bounds the work, not ORT's pool.
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        providers = ["CPUExecutionProvider"]
        if device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        self._session = ort.InferenceSession(str(model), options, providers=providers)
        self.device = "cuda" if self._session.get_providers()[0] == "CUDAExecutionProvider" else "cpu"
        if device.startswith("cuda") and self.device == "cpu":
            log.warning("embedder on CPU (fallback: no CUDA provider in onnxruntime) source=%s", source)
        inputs, outputs = self._session.get_inputs(), self._session.get_outputs()
        shape = inputs[0].shape
        if len(inputs) != 1 or len(shape) != 4 or shape[3] != 3 or not all(isinstance(s, int) for s in shape[1:3]):
            raise ModelLayoutError(f"{model}: expected one input [N, H, W, 3] with a fixed size, got {shape}")
        out_shape = outputs[0].shape
        if len(out_shape) != 2 or not isinstance(out_shape[1], int):
            raise ModelLayoutError(f"{model}: expected an output [N, D], got {out_shape}")
        self._input = inputs[0].name
        self._output = outputs[0].name
        self.size = (int(shape[2]), int(shape[1]))  # width, height
        self.dimensions = int(out_shape[1])
        # ORT sessions may run concurrently, but one at a time keeps the CPU share predictable.
        self._lock = threading.Lock()

    def embed(self, crops: Sequence[Crop]) -> Vectors:
        if not crops:
            return np.zeros((0, self.dimensions), dtype=np.float32)
        batch = np.stack([cv2.resize(c, self.size, interpolation=cv2.INTER_AREA) for c in crops]).astype(np.float32)
        with self._lock:
            raw = self._session.run([self._output], {self._input: batch})[0]
        vectors = np.asarray(raw, dtype=np.float32)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        normalised: Vectors = vectors / np.maximum(norms, 1e-12)
        return normalised

    def describe(self) -> str:
        return f"onnx {self.source} {self.model.name} ({self.dimensions}-d, {self.device})"


@register_embedder("onnx")
def _build(source: EmbeddingSource, model: Path, device: str) -> OnnxEmbedder:
    return OnnxEmbedder(source, model, device=device)
