"""A picture's CPU when it comes alone, a second after the last: what the stages cost cold.

    YOLO_OFFLINE=1 .venv/bin/python -m bench.warmth [--rounds 12] [--idle-s 1.0]

At a picture a second the pipeline's threads sleep between pictures, and each stage then runs on
a core whose caches, TLB and clock the sleep (and whatever else the machine ran) took back. This
prints, for bus.jpg as the server handles it (the door's decode into an RGBX array on one thread,
the onnx backend's letterbox into a reused tensor on a decode thread, the tamper check's features
on a third ~50 ms later, once the picture would be inferred, and an INFO log line on the main
thread ~50 ms after that), each stage's thread CPU time back to
back ("hot") and after ``--idle-s`` of sleep ("after idle"), medians of ``--rounds``; and the
tamper features measured on the decode thread right after the letterbox, the placement stop 43
tried (docs/decisions.md), and the letterbox on the door's thread right after its decode; and an
upload's API key digest as ``api/auth.VerifiedKeys`` takes it, first on the main thread after
the sleep, SHA-256 (OpenSSL) and BLAKE2s in turn. The process has the server's fixed mmap
threshold.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import statistics
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import numpy as np
import simplejpeg
from PIL import Image

from bench.report import say
from inference_server import demo_assets, logging_setup
from inference_server.config import Settings
from inference_server.decode_budget import fix_mmap_threshold
from inference_server.detection.onnx_backend import letterbox
from inference_server.jpeg import decode_into
from inference_server.pipeline.tamper import features


def _cpu_ms(work: Callable[[], object]) -> float:
    start = time.thread_time()
    work()
    return (time.thread_time() - start) * 1000


def _log_line() -> Callable[[], None]:
    """One "image queued" line as the server logs it at INFO (``logging_setup``'s text format)
    to a pipe that a thread drains, as the add-on's stderr is read."""
    read, write = os.pipe()

    def drain() -> None:
        while os.read(read, 65536):
            pass

    threading.Thread(target=drain, name="drain", daemon=True).start()
    handler = logging.StreamHandler(os.fdopen(write, "w", buffering=1))
    handler.setFormatter(logging_setup.TextFormatter())
    log = logging.getLogger("bench.warmth.ingestor")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    at = datetime.now(UTC).isoformat()

    def line() -> None:
        log.info("image queued camera_id=%s image_id=%s job_id=%s file=%s captured_at=%s (%s)", "a", 1, 2, "u", at, "x")

    return line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--idle-s", type=float, default=1.0, help="the sleep before each cold round")
    args = parser.parse_args(argv)
    say(f"glibc's mmap threshold: {fix_mmap_threshold(Settings().malloc_mmap_threshold_kb)} (the server's)")
    data = demo_assets.image("bus.jpg").read_bytes()
    picture = simplejpeg.decode_jpeg(data, colorspace="RGBX")
    height, width = picture.shape[:2]
    shape = (640, 480) if height > width else (480, 640)
    tensor = np.empty((3, *shape), dtype=np.float32)

    def decode() -> None:
        decode_into(data, picture)  # the door's decode, into a reused array

    def box() -> None:
        letterbox(picture[:, :, :3], shape, out=tensor)

    def scene() -> None:
        features(Image.frombuffer("RGBX", (width, height), picture, "raw", "RGBX", 0, 1))

    line = _log_line()
    key = f"hsi_{'k' * 8}_{'s' * 32}".encode()

    def sha256() -> None:
        hashlib.sha256(key).digest()  # an upload's API key as VerifiedKeys took it before stop 48

    def blake2s() -> None:
        hashlib.blake2s(key).digest()  # ... and since

    stages = {
        "door decode": decode,
        "letterbox": box,
        "tamper features": scene,
        "a log line (text, to a pipe)": line,
        "API key digest, SHA-256 (OpenSSL)": sha256,
        "API key digest, BLAKE2s (CPython's own)": blake2s,
    }
    door, decoder, other = (ThreadPoolExecutor(1, name) for name in ("door", "decode", "other"))
    hot: dict[str, list[float]] = {name: [] for name in stages}
    cold: dict[str, list[float]] = {name: [] for name in stages}
    after: list[float] = []
    at_door: list[float] = []
    for _ in range(3):
        for work in stages.values():
            work()

    def again(work: Callable[[], None]) -> list[float]:
        return [_cpu_ms(work) for _ in range(args.rounds)]

    for name, work in stages.items():  # each stage again and again, nothing else between
        hot[name] += decoder.submit(again, work).result()
    for n in range(args.rounds * 3):
        time.sleep(args.idle_s)
        if n % 3 == 2:  # the letterbox on the door's thread, right after its decode
            at_door.append(door.submit(lambda: (_cpu_ms(decode), _cpu_ms(box))[1]).result())
            continue
        # The request's key first, on the event loop's thread: each digest every other round.
        digest = "API key digest, SHA-256 (OpenSSL)" if n % 3 == 0 else "API key digest, BLAKE2s (CPython's own)"
        cold[digest].append(_cpu_ms(stages[digest]))
        decoded = door.submit(_cpu_ms, decode).result()
        if n % 3 == 0:  # as the server runs them
            boxed = decoder.submit(_cpu_ms, box).result()
            time.sleep(0.05)
            cold["door decode"].append(decoded)
            cold["letterbox"].append(boxed)
            cold["tamper features"].append(other.submit(_cpu_ms, scene).result())
            time.sleep(0.05)  # the picture's store, then its log line on the event loop's thread
            cold["a log line (text, to a pipe)"].append(_cpu_ms(line))
        else:  # the features right after the letterbox, on its thread
            after.append(decoder.submit(lambda: (_cpu_ms(box), _cpu_ms(scene))[1]).result())
    for pool in (door, decoder, other):
        pool.shutdown()
    say(f"bus.jpg {width}x{height}, model input {shape[1]}x{shape[0]}; thread CPU ms, medians of {args.rounds}")
    say(f"  {'stage':<48} {'hot':>7} {'after idle':>11} {'ratio':>6}")
    for name in stages:
        h, c = statistics.median(hot[name]), statistics.median(cold[name])
        say(f"  {name:<48} {h:7.2f} {c:11.2f} {c / h:6.2f}")
    say(f"  {'tamper features, right after the letterbox':<48} {'':>7} {statistics.median(after):11.2f}")
    say(f"  {'letterbox on the door thread, after its decode':<48} {'':>7} {statistics.median(at_door):11.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
