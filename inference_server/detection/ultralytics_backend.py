"""Ultralytics YOLO detector: any ultralytics weights (.pt, .onnx, .engine, OpenVINO folder)."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnxruntime as ort
from PIL import Image

from inference_server.config import Settings
from inference_server.decode_budget import trim_heap
from inference_server.detection.detector import DetectorModelMissing, RgbPixels, register_detector, rgb_array
from inference_server.detection.onnx_backend import RunsAtOnce, describe_runs, session_options
from inference_server.detection.runtime import (
    Hardware,
    RequestedFormat,
    RuntimePlan,
    artifact_path,
    exported_format,
    plan_exported,
    plan_runtime,
)
from inference_server.domain import Detection

log = logging.getLogger(__name__)


def _import_yolo() -> Any:
    """Import ultralytics without its run-time downloads and installs.

    Nothing may be fetched at run time: no pip installs (YOLO_AUTOINSTALL), no hub or
    analytics calls (YOLO_OFFLINE). ultralytics also replaces ``PIL.Image.open`` process-wide
    with a wrapper that pip-installs a HEIF plugin on the first unidentifiable file; the
    server only reads JPEG and PNG, so Pillow's own ``open`` is put back.
    """
    os.environ.setdefault("YOLO_AUTOINSTALL", "false")
    os.environ.setdefault("YOLO_OFFLINE", "1")
    from ultralytics.models.yolo import YOLO
    from ultralytics.utils import patches

    original = getattr(patches, "_image_open", None)
    if original is not None and Image.open is not original:
        Image.open = original
    return YOLO


#: ultralytics' ``export`` format names for our runtime formats.
_EXPORT_FORMAT = {"tensorrt": "engine", "onnx": "onnx", "openvino": "openvino"}
#: What a failed export or load of an exported model raises (ultralytics asserts on bad arguments).
_EXPORT_ERRORS = (RuntimeError, ImportError, OSError, ValueError, AssertionError, TypeError)


@contextlib.contextmanager
def _quiet_ultralytics() -> Iterator[None]:
    """ultralytics logs an export's progress at INFO to stdout; the server logs its own lines."""
    from ultralytics.utils import LOGGER

    level = LOGGER.level
    LOGGER.setLevel(logging.WARNING)
    try:
        yield
    finally:
        LOGGER.setLevel(level)


class UltralyticsDetector:
    """Any ultralytics weights, run by the runtime ``plan_runtime`` picks for this machine.

    The ``.pt`` weights are the source: ONNX, TensorRT and OpenVINO models are exported
    from them once, cached under ``cache_dir`` (see ``runtime.artifact_path`` for the key) and
    reused. An export that fails falls back to the ``.pt`` model, logged and labelled in
    ``runtime`` (and so in ``hsi/status``), never a crash. Weights that already are an export
    (``.onnx``, ``.engine``, an OpenVINO folder) run as they are, labelled with their format.
    """

    name = "ultralytics"

    def __init__(
        self,
        weights: Path,
        *,
        device: str = "auto",
        confidence: float = 0.4,
        imgsz: int = 640,
        keep_classes: Sequence[str] = (),
        runtime: RequestedFormat = "pytorch",
        half: bool | None = None,
        cache_dir: Path | None = None,
        max_batch: int = 8,
        workspace_gb: float = 4.0,
        hardware: Hardware | None = None,
        onnx_spin: bool = False,
        onnx_threads: int = 0,
    ) -> None:
        YOLO = _import_yolo()
        self.onnx_spin = onnx_spin
        self.onnx_threads = onnx_threads
        #: How an ONNX Runtime session on the CPU runs, once ``warmup`` has built it again.
        self.cpu_runs = ""

        if not weights.exists():
            raise DetectorModelMissing(
                f"detector weights not found: {weights} (set HSI_DETECTOR_WEIGHTS; see docs/configuration.md)"
            )
        self.weights = weights
        self.confidence = confidence
        self.imgsz = imgsz
        hw = hardware or Hardware.probe()
        plan = plan_runtime(runtime, device, half, hw)
        given = exported_format(weights)
        if given is not None:
            plan = plan_exported(given, plan)
        source: Any = YOLO(str(weights))
        self._model: Any = source
        target = (
            None
            if given is not None
            else artifact_path(cache_dir or weights.parent, weights, plan, hw, imgsz=imgsz, batch=max_batch)
        )
        if target is not None:
            try:
                exported = self._export(YOLO, plan, target, max_batch=max_batch, workspace_gb=workspace_gb)
                self._model = YOLO(str(exported), task=source.task)
            except _EXPORT_ERRORS as err:
                log.warning(
                    "detector runtime %s unavailable, falling back to pytorch weights=%s error=%r",
                    plan.format,
                    weights,
                    err,
                )
                on_gpu = plan.device.startswith("cuda")
                plan = RuntimePlan("pytorch", plan.device, on_gpu, runtime, f"{plan.format} failed: {err}", True)
        if plan.fallback:
            log.warning("detector runtime fallback requested=%s using=%s", runtime, plan.describe())
        self.runtime = plan
        self.device = plan.device
        self.half = plan.half
        names: dict[int, str] = dict(source.names)
        self.names = names
        wanted = {c.lower() for c in keep_classes}
        kept = [i for i, n in names.items() if n.lower() in wanted]
        if wanted and not kept:
            # A custom model (say "Normal"/"Fall") shares no class with the security list:
            # every class it knows is something its owner trained it to find, so keep them all.
            log.warning(
                "detector model has none of detect_classes; keeping all its classes weights=%s classes=%s",
                weights,
                sorted(names.values()),
            )
            self.kept_ids: list[int] | None = None
        else:
            self.kept_ids = kept or None
        log.info(
            "detector loaded backend=ultralytics weights=%s runtime=%s reason=%s classes=%s",
            weights,
            plan.describe(),
            plan.reason,
            [names[i] for i in self.kept_ids] if self.kept_ids is not None else "all",
        )

    def describe(self) -> str:
        runs = f", {self.cpu_runs}" if self.cpu_runs else ""
        return f"ultralytics:{self.weights.name} {self.runtime.describe()}{runs}"

    @property
    def model(self) -> Any:
        """The ultralytics model that runs (benchmarks compare the server with it, bare)."""
        return self._model

    def _export(self, yolo: Any, plan: RuntimePlan, target: Path, *, max_batch: int, workspace_gb: float) -> Path:
        if target.exists():
            log.info("detector export reused path=%s", target)
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        log.info("detector export started format=%s path=%s (once per weights, GPU and TensorRT)", plan.format, target)
        # ultralytics writes the export beside the weights it loaded: export a private copy in a
        # temporary folder next to the cache, then move the result into place in one rename, so
        # two workers exporting at once never load a half-written file.
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=".export-") as tmp:
            copy = Path(tmp) / self.weights.name
            shutil.copy2(self.weights, copy)
            options: dict[str, Any] = {"workspace": workspace_gb} if plan.format == "tensorrt" else {}
            if plan.half:
                options["quantize"] = 16  # ultralytics' name for fp16 (``half`` is deprecated)
            with _quiet_ultralytics():
                produced = yolo(str(copy)).export(
                    format=_EXPORT_FORMAT[plan.format],
                    imgsz=self.imgsz,
                    dynamic=True,
                    batch=max_batch,
                    device=plan.device,
                    simplify=False,
                    verbose=False,
                    **options,
                )
            os.replace(produced, target)
        return target

    def prepare(self, image: Image.Image | RgbPixels) -> np.ndarray[Any, np.dtype[np.uint8]]:
        """Resize to the letterbox's inner size and convert to BGR, on the caller's (decode) thread.

        The same arithmetic and interpolation as ultralytics' ``LetterBox`` (the longest side to
        ``imgsz``, ``cv2.INTER_LINEAR``), so the inference thread's letterbox only pads and the
        detections are the ones the full picture would give. Normalised boxes are unchanged by a
        uniform scale: no coordinates to map back."""
        rgb: np.ndarray[Any, Any] = np.ascontiguousarray(rgb_array(image))  # OpenCV wants it packed
        height, width = rgb.shape[:2]
        ratio = min(self.imgsz / height, self.imgsz / width)
        size = (round(width * ratio), round(height * ratio))
        if size != (width, height):
            rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_LINEAR)
        # cvtColor, not a reversed NumPy view made contiguous: 0.1 ms instead of 3.5 (measured).
        bgr: np.ndarray[Any, np.dtype[np.uint8]] = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR).astype(np.uint8, copy=False)
        return bgr

    def detect(self, images: Sequence[Any]) -> list[list[Detection]]:
        """One batched inference per input size, results in input order.

        Inputs are PIL images or arrays from ``prepare``. Ultralytics pads every image of a batch
        to a square unless all share one shape; grouping by size keeps each group on the cheap
        rectangular letterbox (measured: mixed batches cost 30-40 % more per image,
        docs/performance.md)."""
        groups: dict[tuple[int, int], list[int]] = {}
        for index, image in enumerate(images):
            size = image.size if isinstance(image, Image.Image) else (image.shape[1], image.shape[0])
            groups.setdefault(size, []).append(index)
        out: list[list[Detection]] = [[] for _ in images]
        for indices in groups.values():
            for index, found in zip(indices, self._predict([images[i] for i in indices]), strict=True):
                out[index] = found
        return out

    def _predict(self, images: Sequence[Any]) -> list[list[Detection]]:
        if not images:
            return []
        # Exported models carry their precision; only a .pt model is told to run in fp16.
        precision = {"quantize": 16} if self.half and self.runtime.format == "pytorch" else {}
        results = self._model.predict(
            list(images),
            conf=self.confidence,
            imgsz=self.imgsz,
            device=self.device,
            classes=self.kept_ids,
            verbose=False,
            **precision,
        )
        out: list[list[Detection]] = []
        for result in results:
            boxes = result.boxes
            found: list[Detection] = []
            if boxes is not None and len(boxes):
                xyxyn = boxes.xyxyn.cpu().numpy().tolist()
                confs = boxes.conf.cpu().numpy().tolist()
                classes = boxes.cls.cpu().numpy().astype(int).tolist()
                poses = _keypoints(result.keypoints, len(xyxyn))
                for box, conf, cls, pose in zip(xyxyn, confs, classes, poses, strict=True):
                    x1, y1, x2, y2 = (min(max(float(v), 0.0), 1.0) for v in box)
                    found.append(Detection(self.names[cls], round(float(conf), 4), (x1, y1, x2, y2), pose))
            found.sort(key=lambda d: d.confidence, reverse=True)
            out.append(found)
        return out

    def release_idle(self) -> None:
        """PyTorch's cached CUDA blocks back to the driver on a GPU; on a CPU torch hands freed
        memory to the allocator itself, and an exported runtime's session keeps its own."""
        if str(self.device).startswith("cuda"):
            import torch

            torch.cuda.empty_cache()

    def warmup(self) -> None:
        self.detect([Image.new("RGB", (self.imgsz, self.imgsz))])
        runs = _rebuild_cpu_session(self._model, spin=self.onnx_spin, threads=self.onnx_threads)
        if runs is not None:
            self.cpu_runs = runs
            log.info("detector onnx runtime session built again for the cpu: %s", runs)


def _rebuild_cpu_session(model: Any, *, spin: bool, threads: int) -> str | None:
    """ultralytics builds its ONNX Runtime session without options: on a CPU the runtime splits
    each layer between a thread per core, which busy-wait between parallel sections. Once the
    predictor exists (after the first ``predict``), a CPU session is built again from the same
    file as the onnx backend's is (``detector_onnx_threads``, ``detector_onnx_spin``;
    docs/performance.md, stops 45 and 47): by default each run on one thread and a batch split into
    runs at once, one a CPU. Other providers (CUDA, TensorRT, OpenVINO) are left as they are.
    How the new session runs, or None when it was left alone."""
    backend: Any = getattr(getattr(getattr(model, "predictor", None), "model", None), "backend", None)
    session = getattr(backend, "session", None)
    path = getattr(model, "model_name", None)  # the file YOLO() was given: the .onnx here
    if (
        not isinstance(session, ort.InferenceSession)
        or session.get_providers() != ["CPUExecutionProvider"]
        or not (isinstance(path, str) and path.endswith(".onnx"))
    ):
        return None
    options, runs = session_options(threads, spin, cpu=True)
    rebuilt = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    trim_heap()
    if not isinstance(rebuilt.get_inputs()[0].shape[0], str):
        runs = 1  # a fixed batch of one: nothing to split
    backend.session = BatchSplitSession(rebuilt, RunsAtOnce(runs)) if runs > 1 else rebuilt
    return describe_runs(options, runs) + ("" if spin else ", idle threads sleep")


class BatchSplitSession:
    """An ONNX Runtime session whose ``run`` of a batch goes as up to ``runs.width`` runs at once,
    the batch split between them, each on one thread: what the onnx backend does, for ultralytics'
    ONNX backend, which hands the session its whole batch (``session.run(names, {input: batch})``).
    Everything else is the session's own."""

    def __init__(self, session: ort.InferenceSession, runs: RunsAtOnce) -> None:
        self.session = session
        self.runs = runs

    def run(self, output_names: Any, feeds: dict[str, Any], run_options: Any = None) -> list[Any]:
        batch = next(iter(feeds.values())) if len(feeds) == 1 else None
        parts = min(self.runs.width, len(batch)) if isinstance(batch, np.ndarray) and batch.ndim else 1
        if batch is None or parts < 2:
            out: list[Any] = self.session.run(output_names, feeds, run_options)
            return out
        name = next(iter(feeds))
        pieces = self.runs.map(
            lambda part: self.session.run(output_names, {name: part}, run_options), np.array_split(batch, parts)
        )
        return [np.concatenate(outputs, axis=0) for outputs in zip(*pieces, strict=True)]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.session, name)


def _keypoints(keypoints: Any, count: int) -> list[tuple[tuple[float, float, float], ...] | None]:
    """A pose model's keypoints per box (normalised x, y and confidence); None each without them."""
    if keypoints is None or keypoints.conf is None or len(keypoints) != count:
        return [None] * count
    xyn = keypoints.xyn.cpu().numpy().tolist()
    conf = keypoints.conf.cpu().numpy().tolist()
    return [
        tuple((round(float(x), 4), round(float(y), 4), round(float(c), 3)) for (x, y), c in zip(pts, cs, strict=True))
        for pts, cs in zip(xyn, conf, strict=True)
    ]


@register_detector("ultralytics")
def _build(settings: Settings) -> UltralyticsDetector:
    return UltralyticsDetector(
        settings.detector_weights,
        device=settings.detector_device,
        confidence=settings.detector_confidence,
        imgsz=settings.detector_imgsz,
        keep_classes=settings.detect_classes,
        runtime=settings.detector_runtime,
        half=settings.detector_half,
        cache_dir=settings.data_dir / "models",
        max_batch=settings.detector_batch_size,
        workspace_gb=settings.tensorrt_workspace_gb,
        onnx_spin=settings.detector_onnx_spin,
        onnx_threads=settings.detector_onnx_threads,
    )
