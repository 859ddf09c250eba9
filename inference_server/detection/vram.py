"""GPU memory budget: models are admitted onto the GPU in priority order (detector, the face
and body embedders of known people, LLM, enrichment) while they fit, the rest run on the CPU —
logged and listed in ``hsi/status``.

The need of a model is an estimate before it loads (a GPU cannot be asked "would this fit");
where the load happens here, the NVML reading after it replaces the estimate.
"""

from __future__ import annotations

import logging
from pathlib import Path

from inference_server.schemas import ModelStatus
from inference_server.telemetry.gpu import GpuReader

log = logging.getLogger(__name__)

#: Load order (``server.py`` follows it): what matters most for an alert gets the GPU first.
PRIORITY = ("detector", "face_embedder", "body_embedder", "llm", "enrichment")
#: A CUDA context and the framework's workspace, before any weights (measured order of size).
CUDA_OVERHEAD_MB = 500.0
#: ONNX Runtime's CUDA provider per session beyond the weights: its memory arena's first chunks and
#: the cuDNN workspace (an order of size; the NVML reading after the load replaces the estimate).
ORT_SESSION_OVERHEAD_MB = 200.0
#: Activations per 224×224 crop of a MobileNet/ResNet-50-class embedder in fp32 (order of size).
EMBEDDER_MB_PER_CROP = 25.0


def detector_need_mb(weights: Path, batch: int, imgsz: int) -> float:
    """Weights in fp32, plus activations of one batch (YOLO-n/s class models), plus the context."""
    weights_mb = weights.stat().st_size / 2**20
    activations_mb = batch * (imgsz / 640) ** 2 * 60
    return round(CUDA_OVERHEAD_MB + 4 * weights_mb + activations_mb, 1)


def embedder_need_mb(model: Path, crops: int) -> float:
    """An ONNX embedder on ONNX Runtime's CUDA provider: the session's arena and workspace, the
    weights in fp32 (4× the file: the weights and the provider's copies), activations of one
    batch of ``crops`` crops (``embedding_max_people``)."""
    weights_mb = model.stat().st_size / 2**20
    return round(ORT_SESSION_OVERHEAD_MB + 4 * weights_mb + crops * EMBEDDER_MB_PER_CROP, 1)


#: KV cache MB per token of context for a 3-8 B model in f16; q8_0 stores 8.5 bits a value.
_KV_MB_PER_TOKEN = {"f16": 0.25, "q8_0": 0.25 * 8.5 / 16}


def llm_need_mb(model_path: Path, n_ctx: int, kv_cache_type: str) -> float:
    """A GGUF's tensors as stored, 20 % for compute buffers, and a KV cache of ``n_ctx`` tokens."""
    return round(model_path.stat().st_size / 2**20 * 1.2 + n_ctx * _KV_MB_PER_TOKEN[kv_cache_type], 1)


class VramBudget:
    def __init__(self, gpu: GpuReader | None, budget_mb: float | None) -> None:
        self.gpu = gpu
        self.budget_mb = budget_mb
        self.models: list[ModelStatus] = []
        self._granted: dict[str, float] = {}

    @property
    def gpu_present(self) -> bool:
        return self.gpu is not None and self.gpu.read() is not None

    def used_mb(self) -> float | None:
        reading = self.gpu.read() if self.gpu is not None else None
        return reading.memory_used_mb if reading is not None else None

    def admit(self, name: str, need_mb: float) -> str | None:
        """None if ``name`` may load on the GPU (its need is then reserved), else why not."""
        if name in self._granted:
            raise ValueError(f"{name} was already admitted")
        reading = self.gpu.read() if self.gpu is not None else None
        if reading is None:
            return "no GPU"
        granted = sum(self._granted.values())
        if self.budget_mb is not None and granted + need_mb > self.budget_mb:
            left = max(0.0, self.budget_mb - granted)
            return f"needs ~{need_mb:.0f} MB, {left:.0f} MB of the {self.budget_mb:.0f} MB budget left"
        free = reading.memory_total_mb - reading.memory_used_mb
        if need_mb > free:
            return f"needs ~{need_mb:.0f} MB, the GPU has {free:.0f} MB free"
        self._granted[name] = need_mb
        return None

    def loaded(self, name: str, device: str, *, before_mb: float | None, estimate_mb: float | None) -> None:
        """Record a model that is now loaded; on a GPU its VRAM is measured when it can be."""
        vram: float | None = None
        detail = None
        if not device.startswith("cuda"):
            self.release(name)  # admitted, but it runs on the CPU: it holds nothing
        else:
            after = self.used_mb()
            if before_mb is not None and after is not None and after > before_mb:
                vram, detail = round(after - before_mb, 1), "measured"
                self._granted[name] = vram
            else:
                vram, detail = estimate_mb, "estimate"
        self.models.append(ModelStatus(name=name, device=device, state="loaded", vram_mb=vram, detail=detail))
        log.info("model loaded name=%s device=%s vram_mb=%s (%s)", name, device, vram, detail)

    def release(self, name: str) -> None:
        """Give back what ``name`` was admitted with (it did not take the GPU after all)."""
        self._granted.pop(name, None)

    def refused(self, name: str, reason: str, *, fallback_device: str | None) -> None:
        state = "cpu_fallback" if fallback_device else "refused"
        self.models.append(
            ModelStatus(name=name, device=fallback_device or "none", state=state, vram_mb=None, detail=reason)
        )
        log.warning("model refused on the GPU name=%s reason=%s runs_on=%s", name, reason, fallback_device or "nothing")
