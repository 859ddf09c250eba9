"""A batch of pictures of several shapes on the onnx backend: how its runs at once share the CPUs.

    YOLO_OFFLINE=1 .venv/bin/python -m bench.mixed_batch [--rounds 20]

The burst of ``bench.pipeline_cpu`` sends four pictures in turn (bus.jpg 810×1080, zidane.jpg
1280×720, astronaut 512×512, chelsea 451×300), so each batch of four holds four shapes: four runs
of one picture, two at once on two CPUs. The real detector (yolo11n-pose exported to ONNX) on the
four, decoded as the server decodes them (the "letterbox" fit) and ``prepare``d; only the runs
are timed (``OnnxDetector._run`` of each picture's tensor), wall and process CPU ms a batch,
medians of ``--rounds``, the ways taking turns so that the machine's drift hits each alike:

- waves, as stops 45-48 ran them: two runs at once, the next two when both have ended, in the
  batch's order;
- taken as cores free up, in the batch's order;
- taken as cores free up, the longest first (``OnnxDetector.detect`` now);
- one run alone each (their sum over the CPUs is the floor no order gets under).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent import futures
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from bench.pipeline_cpu import SOURCES, source_jpegs
from bench.report import say
from inference_server.config import Settings
from inference_server.decode_budget import fix_mmap_threshold
from inference_server.detection.onnx_backend import OnnxDetector, RunsAtOnce, usable_cores
from inference_server.pipeline.decode import decode_picture


class Waves:
    """The previous ``RunsAtOnce.map`` (stops 45-48), kept here as the baseline: ``width`` calls
    at once, the next wave when the slowest of them has ended."""

    def __init__(self, width: int) -> None:
        self.width = width
        self._helpers = ThreadPoolExecutor(width - 1, thread_name_prefix="wave")

    def map(self, call: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        results: list[Any] = []
        for start in range(0, len(items), self.width):
            wave = items[start : start + self.width]
            others = [self._helpers.submit(call, item) for item in wave[1:]]
            first = call(wave[0])
            futures.wait(others)
            results += [first, *(f.result() for f in others)]
        return results


def _timed(work: Callable[[], object]) -> tuple[float, float]:
    """Process CPU ms and wall ms of one call."""
    cpu, wall = time.process_time(), time.perf_counter()
    work()
    return (time.process_time() - cpu) * 1000, (time.perf_counter() - wall) * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args(argv)
    from tests.server.detection.test_onnx_backend import pose_onnx

    fix_mmap_threshold(Settings().malloc_mmap_threshold_kb)
    detector = OnnxDetector(pose_onnx(), confidence=0.4)
    width = detector.parallel_runs
    if width < 2:
        say(f"{usable_cores()} usable CPU: one run at a time, nothing to share")
        return 0
    tensors = []
    with tempfile.TemporaryDirectory(prefix="hsi-mixed-") as folder:
        for name, data in source_jpegs():
            path = Path(folder) / f"{Path(name).stem}.jpg"
            path.write_bytes(data)
            tensors.append(detector.prepare(decode_picture(path, 640, fit="letterbox").pixels).tensor[np.newaxis])
    longest_first = sorted(tensors, key=lambda t: t.size, reverse=True)
    ways: dict[str, Callable[[], object]] = {
        "waves, the batch's order (stops 45-48)": lambda: Waves(width).map(detector._run, tensors),
        "as cores free up, the batch's order": lambda: RunsAtOnce(width).map(detector._run, tensors),
        "as cores free up, the longest first (now)": lambda: RunsAtOnce(width).map(detector._run, longest_first),
    }
    alone: list[list[float]] = [[] for _ in tensors]
    figures: dict[str, list[tuple[float, float]]] = {name: [] for name in ways}
    for _ in range(2):  # warm every shape and way
        for work in ways.values():
            work()
    for _ in range(args.rounds):
        for name, work in ways.items():
            figures[name].append(_timed(work))
        for index, tensor in enumerate(tensors):
            alone[index].append(_timed(partial(detector._run, tensor))[1])
    shapes = ", ".join(f"{n} {t.shape[2]}×{t.shape[3]}" for n, t in zip(SOURCES, tensors, strict=True))
    say(f"{Path(pose_onnx()).name}, one batch of four shapes ({shapes}), {width} runs at once")
    say(f"ms a batch, medians of {args.rounds}")
    say(f"  {'way':<44} {'wall':>7} {'CPU':>7}  {'CPUs busy':>9}")
    for name, rows in figures.items():
        cpu, wall = (statistics.median(r[i] for r in rows) for i in (0, 1))
        say(f"  {name:<44} {wall:7.1f} {cpu:7.1f}  {cpu / wall:9.2f}")
    runs = [statistics.median(a) for a in alone]
    say("  each run alone (wall ms): " + ", ".join(f"{n} {r:.1f}" for n, r in zip(SOURCES, runs, strict=True)))
    say(f"  their sum over {width} CPUs (the floor): {sum(runs) / width:.1f}; the longest: {max(runs):.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
