"""Ultralytics YOLO detector: any ultralytics weights (.pt, .onnx, .engine, OpenVINO folder)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from inference_server.config import Settings
from inference_server.models.detector import Detection, register_detector

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


def resolve_device(requested: str) -> str:
    if requested != "auto":
        return requested
    import torch

    if torch.cuda.is_available():
        return "cuda:0"
    return "cpu"


class UltralyticsDetector:
    name = "ultralytics"

    def __init__(
        self,
        weights: Path,
        *,
        device: str = "auto",
        confidence: float = 0.4,
        imgsz: int = 640,
        keep_classes: Sequence[str] = (),
    ) -> None:
        YOLO = _import_yolo()

        if not weights.exists():
            raise FileNotFoundError(
                f"detector weights not found: {weights} (set HSI_DETECTOR_WEIGHTS; see docs/configuration.md)"
            )
        self.weights = weights
        self.device = resolve_device(device)
        self.half = self.device.startswith("cuda")
        self.confidence = confidence
        self.imgsz = imgsz
        self._model: Any = YOLO(str(weights))
        names: dict[int, str] = dict(self._model.names)
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
            "detector loaded backend=ultralytics weights=%s device=%s half=%s classes=%s",
            weights,
            self.device,
            self.half,
            [names[i] for i in self.kept_ids] if self.kept_ids is not None else "all",
        )

    def detect(self, images: Sequence[Image.Image]) -> list[list[Detection]]:
        """One batched inference per image size, results in input order.

        Ultralytics pads every image of a batch to a square unless all share one shape; grouping
        by size keeps each group on the cheap rectangular letterbox (measured: mixed batches cost
        30-40 % more per image, docs/performance.md)."""
        groups: dict[tuple[int, int], list[int]] = {}
        for index, image in enumerate(images):
            groups.setdefault(image.size, []).append(index)
        out: list[list[Detection]] = [[] for _ in images]
        for indices in groups.values():
            for index, found in zip(indices, self._predict([images[i] for i in indices]), strict=True):
                out[index] = found
        return out

    def _predict(self, images: Sequence[Image.Image]) -> list[list[Detection]]:
        if not images:
            return []
        precision = {"quantize": 16} if self.half else {}
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
                for box, conf, cls in zip(xyxyn, confs, classes, strict=True):
                    x1, y1, x2, y2 = (min(max(float(v), 0.0), 1.0) for v in box)
                    found.append(Detection(self.names[cls], round(float(conf), 4), (x1, y1, x2, y2)))
            found.sort(key=lambda d: d.confidence, reverse=True)
            out.append(found)
        return out

    def warmup(self) -> None:
        self.detect([Image.new("RGB", (self.imgsz, self.imgsz))])


@register_detector("ultralytics")
def _build(settings: Settings) -> UltralyticsDetector:
    return UltralyticsDetector(
        settings.detector_weights,
        device=settings.detector_device,
        confidence=settings.detector_confidence,
        imgsz=settings.detector_imgsz,
        keep_classes=settings.detect_classes,
    )
