"""What the one inference thread spends per image: pictures handed over as decoded PIL images
(ultralytics converts and letterboxes them on that thread) vs inputs made by
``Detector.prepare`` on the decode threads (the thread then only pads and runs the model).

The real detector the server builds (``detector_runtime`` auto: ONNX Runtime on a CPU, TensorRT
or ``.pt`` on a GPU), real camera-sized frames (bus.jpg and zidane.jpg decoded the way the
server decodes them), batches of ``--batch``, calls interleaved so drift hits both sides.

    YOLO_OFFLINE=1 XDG_RUNTIME_DIR=/tmp .venv/bin/python -m bench.infer_thread --batch 8 --calls 20
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
from inference_server.detection.ultralytics_backend import UltralyticsDetector
from inference_server.pipeline.decode import decode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--runtime", default="auto")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="hsi-infer-bench-") as cache:
        detector = UltralyticsDetector(
            demo_assets.pose_weights(),
            device=args.device,
            runtime=args.runtime,
            imgsz=args.imgsz,
            cache_dir=Path(cache),
            max_batch=args.batch,
        )
        # One camera per batch (same size), as ultralytics batches best; both sources take turns.
        sources = [decode(demo_assets.image(n), args.imgsz) for n in ("bus.jpg", "zidane.jpg")]
        detector.detect([sources[0]] * args.batch)  # warm-up
        pil_ms: list[float] = []
        prepared_ms: list[float] = []
        prepare_ms: list[float] = []
        for call in range(args.calls):
            frames = [sources[call % 2]] * args.batch
            started = time.perf_counter()
            direct = detector.detect(frames)
            pil_ms.append((time.perf_counter() - started) * 1000 / args.batch)
            started = time.perf_counter()
            inputs = [detector.prepare(f) for f in frames]  # the decode threads' share
            prepare_ms.append((time.perf_counter() - started) * 1000 / args.batch)
            started = time.perf_counter()
            via_prepare = detector.detect(inputs)
            prepared_ms.append((time.perf_counter() - started) * 1000 / args.batch)
            assert [len(d) for d in direct] == [len(d) for d in via_prepare]
        result: dict[str, Any] = {
            "detector": detector.describe(),
            "frame": list(sources[0].size) + list(sources[1].size),
            "batch": args.batch,
            "calls": args.calls,
            "infer_thread_ms_per_image_pil_p50": round(statistics.median(pil_ms), 2),
            "infer_thread_ms_per_image_prepared_p50": round(statistics.median(prepared_ms), 2),
            "prepare_ms_per_image_p50": round(statistics.median(prepare_ms), 2),
            "infer_thread_ratio_prepared_to_pil": round(statistics.median(prepared_ms) / statistics.median(pil_ms), 3),
        }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
