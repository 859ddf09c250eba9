"""Detector runtimes side by side, then the whole server against the bare engine.

1. Bare engine: the real ``yolo11n-pose.pt`` through the server's own ``UltralyticsDetector``
   (so the same export, cache and pre-processing) for each runtime the machine can run —
   ``.pt`` fp32, ``.pt`` fp16, TensorRT fp16 on a GPU; ``.pt`` and ONNX Runtime on a CPU — at
   batch 1, 8 and 32 on pre-decoded images: images/s and p50/p95 latency of one batch call.
   A runtime the hardware cannot run is skipped with the reason, never silently replaced.
2. End to end (``--e2e``): ``bench.pipeline_cpu`` with the fastest runtime — files landing in
   camera folders → detections stored and events published — against the bare engine on the
   same images in the same run; it prints the ratio.

On the GPU machine (one command, see docs/performance.md)::

    YOLO_OFFLINE=1 XDG_RUNTIME_DIR=/tmp .venv/bin/python -m bench.gpu_detect --e2e --json $OUT/gpu_detect.json

Here (CPU)::

    YOLO_OFFLINE=1 XDG_RUNTIME_DIR=/tmp .venv/bin/python -m bench.gpu_detect --batches 1 4 8 --calls 6
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from inference_server import demo_assets
from inference_server.detection.runtime import Hardware
from inference_server.detection.ultralytics_backend import UltralyticsDetector

SOURCES = ("bus.jpg", "zidane.jpg", "astronaut.png", "chelsea.png")
#: (label, runtime, half) in the order the issue asks for them.
CONFIGS = (
    ("pt fp32", "pytorch", False),
    ("pt fp16", "pytorch", True),
    ("tensorrt fp16", "tensorrt", True),
    ("onnx fp32", "onnx", False),
)


def say(text: str = "") -> None:
    print(text, flush=True)


def pictures(count: int) -> list[Image.Image]:
    decoded = []
    for name in SOURCES:
        with Image.open(demo_assets.image(name)) as img:
            # One size for all, as one camera's frames are: batches stay rectangular.
            decoded.append(img.convert("RGB").resize((1280, 720)))
    return [decoded[i % len(decoded)] for i in range(count)]


def pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def measure(detector: UltralyticsDetector, batch: int, calls: int, warm: int) -> dict[str, float]:
    images = pictures(batch)
    for _ in range(warm):
        detector.detect(images)
    latencies = []
    started = time.perf_counter()
    for _ in range(calls):
        t0 = time.perf_counter()
        detector.detect(images)
        latencies.append(time.perf_counter() - t0)
    wall = time.perf_counter() - started
    return {
        "images_per_s": round(batch * calls / wall, 2),
        "p50_ms": round(statistics.median(latencies) * 1000, 2),
        "p95_ms": round(pct(latencies, 0.95) * 1000, 2),
    }


def bare_matrix(args: argparse.Namespace, hw: Hardware, cache: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    device = "cuda:0" if hw.cuda else "cpu"
    for label, runtime, half in CONFIGS:
        if args.only and runtime not in args.only:
            continue
        started = time.perf_counter()
        detector = UltralyticsDetector(
            demo_assets.pose_weights(),
            device=device,
            imgsz=args.imgsz,
            keep_classes=["person"],
            runtime=runtime,  # type: ignore[arg-type]
            half=half,
            cache_dir=cache,
            max_batch=max(args.batches),
        )
        load_s = time.perf_counter() - started
        plan = detector.runtime
        if plan.fallback or plan.format != runtime or plan.half != half:
            say(f"  {label:14} skipped: {plan.reason}")
            rows.append({"config": label, "skipped": plan.reason})
            continue
        say(f"  {label:14} {plan.describe()} (load/export {load_s:.1f} s)")
        for batch in args.batches:
            figures = measure(detector, batch, args.calls, args.warm)
            rows.append({"config": label, "runtime": plan.describe(), "batch": batch, **figures})
            say(
                f"    batch {batch:3}: {figures['images_per_s']:8.1f} images/s  p50 {figures['p50_ms']:8.1f} ms"
                f"  p95 {figures['p95_ms']:8.1f} ms  (per batch call)"
            )
    return rows


def e2e_argv(images: int, batch: int, runtime: str, cuda: bool) -> list[str]:
    """``bench.pipeline_cpu``'s arguments for the end to end with the fastest runtime."""
    return [
        "--images",
        str(images),
        "--batch-size",
        str(batch),
        "--device",
        "cuda:0" if cuda else "cpu",
        "--runtime",
        runtime,
        "--paced-images",
        "0",
        "--broker",
        "mosquitto" if shutil.which("mosquitto") else "amqtt",
    ]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--calls", type=int, default=30, help="timed batch calls per configuration")
    p.add_argument("--warm", type=int, default=3, help="untimed batch calls first")
    p.add_argument("--imgsz", type=int, default=640)
    p.add_argument("--only", nargs="*", choices=("pytorch", "tensorrt", "onnx"), help="runtimes to run")
    p.add_argument("--e2e", action="store_true", help="also run the server end to end (bench.pipeline_cpu)")
    p.add_argument("--e2e-images", type=int, default=2000)
    p.add_argument("--json", type=Path, help="also write the figures here")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    hw = Hardware.probe()
    say(
        f"HSI detector runtimes — {platform.node()} {hw.gpu_name or platform.processor() or 'CPU'}"
        f" TensorRT={hw.tensorrt} onnxruntime={hw.onnxruntime} imgsz={args.imgsz}"
    )
    cache = Path(tempfile.mkdtemp(prefix="hsi-gpu-bench-", dir="/tmp"))
    figures: dict[str, Any] = {"hardware": dataclasses.asdict(hw)}
    try:
        figures["bare"] = bare_matrix(args, hw, cache)
        if args.e2e:
            from bench import pipeline_cpu

            measured = [r for r in figures["bare"] if "images_per_s" in r]
            best = max(measured, key=lambda r: r["images_per_s"])
            runtime = best["runtime"].split()[0]
            say(f"  end to end with the fastest runtime: {best['runtime']} batch {best['batch']}")
            e2e_args = pipeline_cpu.parse_args(e2e_argv(args.e2e_images, best["batch"], runtime, hw.cuda))
            figures["e2e"] = asyncio.run(pipeline_cpu.amain(e2e_args))
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2, default=str) + "\n", encoding="utf-8")
        say(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
