"""Which runtime runs the detector — chosen once, from the settings and the hardware.

``plan_runtime`` is a pure function of what was asked for and what the machine has, so every
choice and every fallback is testable without a GPU. ``artifact_path`` names the exported model
(ONNX file, TensorRT engine, OpenVINO folder) so a cached export is reused only when it was built
for the same weights, input size, precision and — for TensorRT, whose engines are specific to
one GPU model and one TensorRT release — the same GPU and TensorRT version.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

log = logging.getLogger(__name__)

Format = Literal["pytorch", "tensorrt", "onnx", "openvino"]
RequestedFormat = Literal["auto", "pytorch", "tensorrt", "onnx", "openvino"]

_SUFFIX: dict[Format, str] = {"pytorch": ".pt", "tensorrt": ".engine", "onnx": ".onnx", "openvino": "_openvino_model"}


@dataclass(frozen=True, slots=True)
class Hardware:
    """What this machine can run. ``probe()`` reads it; tests build it by hand."""

    cuda: bool
    gpu_name: str | None
    tensorrt: str | None
    onnxruntime: bool
    openvino: bool

    @classmethod
    def probe(cls) -> Hardware:
        import torch

        cuda = bool(torch.cuda.is_available())
        return cls(
            cuda=cuda,
            gpu_name=torch.cuda.get_device_name(0) if cuda else None,
            tensorrt=_version("tensorrt") or _version("tensorrt-cu12") or _version("tensorrt-cu13"),
            onnxruntime=importlib.util.find_spec("onnxruntime") is not None,
            openvino=importlib.util.find_spec("openvino") is not None,
        )


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


@dataclass(frozen=True, slots=True)
class RuntimePlan:
    format: Format
    device: str
    half: bool
    requested: str
    #: Why this runtime: the auto choice, or — when ``fallback`` — why the requested one is not used.
    reason: str
    fallback: bool = False

    def describe(self) -> str:
        text = f"{self.format} {self.device} {'fp16' if self.half else 'fp32'}"
        return f"{text} (fallback: {self.reason})" if self.fallback else text


def plan_runtime(requested: RequestedFormat, device: str, half: bool | None, hw: Hardware) -> RuntimePlan:
    """The runtime to use. Never fails: an impossible request becomes a labelled fallback."""
    problems: list[str] = []
    if device == "auto":
        device = "cuda:0" if hw.cuda else "cpu"
    elif device.startswith("cuda") and not hw.cuda:
        problems.append(f"device {device} requested but CUDA is not available")
        device = "cpu"
    on_gpu = device.startswith("cuda")

    fmt: Format
    if requested == "auto":
        if on_gpu:
            fmt, why = (
                ("tensorrt", f"auto: CUDA + TensorRT {hw.tensorrt}")
                if hw.tensorrt
                else (
                    "pytorch",
                    "auto: CUDA without TensorRT",
                )
            )
        else:
            fmt, why = (
                ("onnx", "auto: CPU with ONNX Runtime")
                if hw.onnxruntime
                else (
                    "pytorch",
                    "auto: CPU without ONNX Runtime",
                )
            )
    else:
        fmt, why = requested, f"requested {requested}"
        if requested == "tensorrt" and not (on_gpu and hw.tensorrt):
            problems.append("TensorRT needs an NVIDIA GPU" if not on_gpu else "TensorRT is not installed")
            fmt = "pytorch"
        elif requested == "onnx" and not hw.onnxruntime:
            problems.append("onnxruntime is not installed")
            fmt = "pytorch"
        elif requested == "openvino" and not hw.openvino:
            problems.append("openvino is not installed")
            fmt = "onnx" if hw.onnxruntime and not on_gpu else "pytorch"

    # fp16 is for GPUs: on a CPU it is slower or unsupported, so an explicit request is overridden.
    use_half = on_gpu and fmt in ("pytorch", "tensorrt") and (half is None or half)
    if half and not use_half:
        problems.append(f"fp16 is not used with {fmt} on {device}")
    if problems:
        return RuntimePlan(fmt, device, use_half, requested, "; ".join(problems), fallback=True)
    return RuntimePlan(fmt, device, use_half, requested, why)


def exported_format(weights: Path) -> Format | None:
    """The runtime ``weights`` were exported for (``.onnx``, ``.engine``, ``*_openvino_model``);
    None for PyTorch weights, the source every export is made from."""
    for fmt, suffix in _SUFFIX.items():
        if fmt != "pytorch" and weights.name.endswith(suffix):
            return fmt
    return None


def plan_exported(fmt: Format, plan: RuntimePlan) -> RuntimePlan:
    """Weights that already are an export run as they are (nothing can be exported from them),
    on the planned device; a request for another runtime becomes a labelled fallback."""
    reason = f"weights are an {fmt} export"
    if plan.requested in ("auto", fmt):
        return RuntimePlan(fmt, plan.device, False, plan.requested, reason)
    return RuntimePlan(fmt, plan.device, False, plan.requested, f"{reason}, not {plan.requested}", fallback=True)


def weights_digest(weights: Path) -> str:
    sha = hashlib.sha256()
    with weights.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            sha.update(chunk)
    return sha.hexdigest()[:16]


def artifact_path(
    cache_dir: Path, weights: Path, plan: RuntimePlan, hw: Hardware, *, imgsz: int, batch: int
) -> Path | None:
    """Where the export of ``weights`` for ``plan`` lives (None: ``.pt`` runs as it is)."""
    if plan.format == "pytorch":
        return None
    parts = [plan.format, weights_digest(weights), f"imgsz{imgsz}", "fp16" if plan.half else "fp32"]
    if plan.format == "tensorrt":
        parts += [_slug(hw.gpu_name or "unknown-gpu"), f"trt{hw.tensorrt}", f"batch{batch}"]
    key = hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]
    return cache_dir / plan.format / f"{weights.stem}-{key}{_SUFFIX[plan.format]}"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
