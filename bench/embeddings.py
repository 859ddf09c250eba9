"""Same-person and different-person similarity of the face and body embedders, on real photos.

The people of ``astronaut.png``, ``zidane.jpg`` and ``bus.jpg`` (yolo11n-pose finds them,
its keypoints place the faces) are embedded in four views of each photo: as is, mirrored,
brightened by 25 %, and cropped to its middle 90 %. A person in two views is a *same* pair; two
different people (across or within photos) a *different* pair. The script prints each
source's distributions and the threshold that separates them (the midpoint of the gap, when
there is one), from which ``inference_server.embedding.matching.THRESHOLDS`` is chosen, and the
cost of one embedding. Run from the repository root (``scripts/models/fetch`` first)::

    YOLO_OFFLINE=1 .venv/bin/python -m bench.embeddings [--json out.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from inference_server import demo_assets
from inference_server.detection.ultralytics_backend import UltralyticsDetector
from inference_server.embedding.crops import body_box, crop, face_box
from inference_server.embedding.embedder import SOURCES, EmbeddingSource
from inference_server.embedding.onnx_backend import OnnxEmbedder

PHOTOS = ("astronaut.png", "zidane.jpg", "bus.jpg")
Box = tuple[float, float, float, float]


def _views(image: Image.Image) -> dict[str, tuple[Image.Image, Callable[[Box], Box]]]:
    """Each view and the map of its normalised boxes back onto the original photo's."""
    w, h = image.size
    cx1, cy1, cx2, cy2 = round(w * 0.05), round(h * 0.05), round(w * 0.95), round(h * 0.95)
    cw, ch = cx2 - cx1, cy2 - cy1
    return {
        "original": (image, lambda b: b),
        "mirrored": (ImageOps.mirror(image), lambda b: (1 - b[2], b[1], 1 - b[0], b[3])),
        "brighter": (image.point(lambda v: min(255, int(v * 1.25))), lambda b: b),
        "cropped": (
            image.crop((cx1, cy1, cx2, cy2)),
            lambda b: ((cx1 + b[0] * cw) / w, (cy1 + b[1] * ch) / h, (cx1 + b[2] * cw) / w, (cy1 + b[3] * ch) / h),
        ),
    }


def _iou(a: Box, b: Box) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def collect(
    detector: UltralyticsDetector, embedders: dict[EmbeddingSource, OnnxEmbedder]
) -> tuple[dict[str, list[tuple[str, np.ndarray[Any, Any]]]], dict[str, list[float]]]:
    """Per source: (person key, vector) of every embedded view; and the seconds each embed took."""
    found: dict[str, list[tuple[str, np.ndarray[Any, Any]]]] = {s: [] for s in SOURCES}
    cost: dict[str, list[float]] = {s: [] for s in SOURCES}
    for photo in PHOTOS:
        original = Image.open(demo_assets.image(photo)).convert("RGB")
        people: list[Box] = [d.bbox for d in detector.detect([original])[0]]
        for _view, (image, back) in _views(original).items():
            pixels = np.asarray(image)
            for det in detector.detect([image])[0]:
                mapped = back(det.bbox)
                best = max(range(len(people)), key=lambda i: _iou(people[i], mapped), default=None)
                if best is None or _iou(people[best], mapped) < 0.5:
                    continue  # a person this view found and the original did not: no identity to pair
                key = f"{photo}#{best}"
                boxes: tuple[tuple[EmbeddingSource, Any], ...] = (
                    ("face", face_box(det, *image.size)),
                    ("body", body_box(det, *image.size)),
                )
                for source, box in boxes:
                    if box is None:
                        continue
                    started = time.perf_counter()
                    vector = embedders[source].embed([crop(pixels, box)])[0]
                    cost[source].append(time.perf_counter() - started)
                    found[source].append((key, vector))
    return found, cost


def distributions(vectors: list[tuple[str, np.ndarray[Any, Any]]]) -> tuple[list[float], list[float]]:
    same: list[float] = []
    different: list[float] = []
    for (ka, va), (kb, vb) in itertools.combinations(vectors, 2):
        (same if ka == kb else different).append(float(np.dot(va, vb)))
    return same, different


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    detector = UltralyticsDetector(demo_assets.pose_weights(), device="cpu", confidence=0.4, keep_classes=["person"])
    embedders = {s: OnnxEmbedder(s, demo_assets.embedder_model(s)) for s in SOURCES}
    for embedder in embedders.values():  # first run allocates
        embedder.embed([np.zeros((64, 64, 3), np.uint8)])
    found, cost = collect(detector, embedders)
    report: dict[str, Any] = {}
    for source in SOURCES:
        same, different = distributions(found[source])
        gap = (max(different), min(same))
        threshold = round((gap[0] + gap[1]) / 2, 3) if gap[1] > gap[0] else None
        report[source] = {
            "people": len({k for k, _ in found[source]}),
            "crops": len(found[source]),
            "same": {"n": len(same), "min": min(same), "median": statistics.median(same), "max": max(same)},
            "different": {
                "n": len(different),
                "min": min(different),
                "median": statistics.median(different),
                "max": max(different),
            },
            "separating_threshold": threshold,
            "ms_per_crop": round(1000 * statistics.median(cost[source]), 1),
        }
        s, d = report[source]["same"], report[source]["different"]
        print(
            f"{source}: {report[source]['people']} people, {len(found[source])} crops;"
            f" same n={s['n']} {s['min']:.3f}..{s['max']:.3f} (median {s['median']:.3f});"
            f" different n={d['n']} {d['min']:.3f}..{d['max']:.3f} (median {d['median']:.3f});"
            f" separating threshold {threshold}; {report[source]['ms_per_crop']} ms per crop"
        )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
