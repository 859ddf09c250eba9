"""The onnx backend's inference by how it uses the CPUs: one thread a run with a batch split into
runs at once (``detector_onnx_threads`` 0, the default since stop 45) against one run a batch
over the runtime's own pool of threads (``detector_onnx_threads`` N, the runtime's default before).

    YOLO_OFFLINE=1 .venv/bin/python -m bench.onnx_threads [--rounds 10] [--batches 1 2 4] [--pool-threads 0]

The real detector (yolo11n-pose exported to ONNX, as the add-on runs it) on zidane.jpg decoded
as the server decodes it (640 "cover"), each batch ``prepare``d first as the decode threads do;
``detect`` timed: process CPU (every thread's, the runtime's included) and wall time a picture,
medians of ``--rounds``. Each batch size is measured back to back ("hot") and a lone picture also
after ``--idle-s`` of sleep (a camera sending a picture a second), the two detectors taking
turns so that the machine's drift hits both. ``--pool-threads`` 0 gives the old detector as many
threads as the process may use CPUs.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from bench.report import say
from inference_server import demo_assets
from inference_server.config import Settings
from inference_server.decode_budget import fix_mmap_threshold
from inference_server.detection.onnx_backend import OnnxDetector, usable_cores
from inference_server.pipeline.decode import decode_picture


def _timed(work: Callable[[], object], pictures: int) -> tuple[float, float]:
    """Process CPU ms and wall ms a picture of one call."""
    cpu, wall = time.process_time(), time.perf_counter()
    work()
    return (time.process_time() - cpu) * 1000 / pictures, (time.perf_counter() - wall) * 1000 / pictures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--idle-s", type=float, default=1.0, help="the sleep before each lone picture's cold round")
    parser.add_argument("--pool-threads", type=int, default=0, help="the runtime's pool (0: one per usable CPU)")
    args = parser.parse_args(argv)
    from tests.server.detection.test_onnx_backend import pose_onnx

    fix_mmap_threshold(Settings().malloc_mmap_threshold_kb)
    model: Path = pose_onnx()
    pool = args.pool_threads or usable_cores()
    detectors = {
        "one thread a run, batch split (0)": OnnxDetector(model, confidence=0.4),
        f"one run, the runtime's {pool} threads ({pool})": OnnxDetector(model, confidence=0.4, threads=pool),
    }
    picture = decode_picture(demo_assets.image("zidane.jpg"), 640).pixels
    found = {name: d.detect([picture])[0] for name, d in detectors.items()}
    assert len({repr(f) for f in found.values()}) == 1, found  # the same people either way
    say(f"{model.name}, zidane.jpg, {usable_cores()} usable CPUs; ms a picture, medians of {args.rounds}")
    say(f"  {'batch':<22} {'detector (detector_onnx_threads)':<40} {'CPU':>7} {'wall':>7}")
    for batch in args.batches:
        rows: dict[str, list[tuple[float, float]]] = {name: [] for name in detectors}
        for _ in range(2):  # warm each batch size
            for d in detectors.values():
                d.detect([d.prepare(picture) for _ in range(batch)])
        for _ in range(args.rounds):
            for name, d in detectors.items():
                inputs = [d.prepare(picture) for _ in range(batch)]
                rows[name].append(_timed(partial(d.detect, inputs), batch))
        for name, figures in rows.items():
            cpu, wall = (statistics.median(f[i] for f in figures) for i in (0, 1))
            say(f"  {f'{batch}, back to back':<22} {name:<40} {cpu:7.1f} {wall:7.1f}")
    cold: dict[str, list[tuple[float, float]]] = {name: [] for name in detectors}
    for _ in range(args.rounds):
        for name, d in detectors.items():
            time.sleep(args.idle_s)
            inputs = [d.prepare(picture)]
            cold[name].append(_timed(partial(d.detect, inputs), 1))
    for name, figures in cold.items():
        cpu, wall = (statistics.median(f[i] for f in figures) for i in (0, 1))
        say(f"  {f'1, after {args.idle_s:g} s idle':<22} {name:<40} {cpu:7.1f} {wall:7.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
