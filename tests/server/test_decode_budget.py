"""The process-wide decode budget: decoded bytes held at once never exceed it, and a decode that
does not fit waits (in the ingest check and in the detect stage) instead of allocating."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

from inference_server.decode_budget import MIB, DecodeBudget, shared
from inference_server.ingest.validate import ImageLimits, check_pixels, inspect_image
from inference_server.pipeline.decode import decode

CORPUS = Path(__file__).resolve().parents[1] / "data" / "hostile"
BIG_PNG = CORPUS / "rgba_6300x6300.png"  # 170 kB, 159 MB decoded


def _eventually(check: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def test_concurrent_holders_never_exceed_the_budget() -> None:
    budget = DecodeBudget(100)
    peak = 0
    lock = threading.Lock()
    gate = threading.Barrier(8, timeout=30)

    def decode_like(size: int) -> None:
        nonlocal peak
        gate.wait()  # all eight ask at once
        for _ in range(50):
            with budget.hold(size):
                with lock:
                    peak = max(peak, budget.used)
                time.sleep(0.0005)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(decode_like, [30, 30, 40, 40, 60, 60, 10, 10]))
    assert 60 <= peak <= 100
    assert (budget.used, budget.waiting) == (0, 0)


def test_a_request_larger_than_the_budget_runs_alone() -> None:
    budget = DecodeBudget(100)
    with budget.hold(10_000) as taken:
        assert (taken, budget.used) == (100, 100)
    assert budget.used == 0


def test_a_large_waiter_is_not_overtaken_by_small_ones() -> None:
    budget = DecodeBudget(100)
    first = budget.acquire(60)
    with ThreadPoolExecutor(2) as pool:
        large = pool.submit(budget.acquire, 80)
        _eventually(lambda: budget.waiting == 1)
        small = pool.submit(lambda: budget.acquire(10))  # would fit now, but the large one came first
        _eventually(lambda: budget.waiting == 2)
        assert not large.done() and not small.done()
        budget.release(first)
        assert large.result(30) == 80
        _eventually(lambda: small.done())
        assert small.result() == 10
    assert budget.used == 90


def test_detect_decode_of_a_large_png_waits_for_the_budget_and_frees_it() -> None:
    budget = DecodeBudget(200 * MIB)
    held = budget.acquire(150 * MIB)
    with ThreadPoolExecutor(1) as pool:
        decoding: Future[object] = pool.submit(decode, BIG_PNG, 640, budget)
        _eventually(lambda: budget.waiting == 1)
        assert not decoding.done()
        budget.release(held)
        picture = decoding.result(60)
    # Reduced right after decoding, as a JPEG is by its DCT: 6300 // 640 = 9, so 700x700.
    assert (picture.mode, picture.size) == ("RGB", (700, 700))  # type: ignore[attr-defined]
    assert (budget.used, budget.waiting) == (0, 0)


def test_ingest_check_of_a_progressive_jpeg_waits_for_the_budget() -> None:
    # A progressive JPEG's decoder holds every coefficient at any scale: 6000x6000x3x2 = 206 MiB.
    data = (CORPUS / "progressive_declares_6000x6000.jpg").read_bytes()
    info = inspect_image(data, ImageLimits(20 * MIB, 40_000_000, 32))
    assert info.progressive
    budget = DecodeBudget(512 * MIB)
    held = budget.acquire(400 * MIB)
    with ThreadPoolExecutor(1) as pool:
        checking = pool.submit(check_pixels, data, info, budget)
        _eventually(lambda: budget.waiting == 1)
        assert not checking.done()
        budget.release(held)
        refused = checking.exception(60)
    assert getattr(refused, "reason", None) == "truncated"
    assert budget.used == 0


def test_the_shared_budget_follows_the_setting() -> None:
    assert shared(256) is shared(512)
    assert shared(512).total == 512 * MIB


_ARENAS_SCRIPT = """
import sys, threading
import numpy as np
from inference_server import decode_budget
from inference_server.decode_budget import _libc
print(decode_budget.limit_malloc_arenas(int(sys.argv[1])), flush=True)
kept = []
def work():
    kept.append([np.ones(4096) for _ in range(50)])  # malloc'd on this thread's arena
threads = [threading.Thread(target=work) for _ in range(8)]
for t in threads: t.start()
for t in threads: t.join()
_libc("malloc_stats", [])()  # glibc writes one "Arena N:" block per arena to stderr
"""


@pytest.mark.parametrize(("limit", "most"), [(2, 2), (1, 1)])
def test_the_arena_limit_keeps_new_threads_on_the_capped_arenas(limit: int, most: int) -> None:
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    capped = subprocess.run(
        [sys.executable, "-c", _ARENAS_SCRIPT, str(limit)], capture_output=True, text=True, env=env, check=True
    )
    free = subprocess.run(
        [sys.executable, "-c", _ARENAS_SCRIPT, "0"], capture_output=True, text=True, env=env, check=True
    )
    assert capped.stdout.strip() == str(limit) and free.stdout.strip() == "glibc default"
    assert capped.stderr.count("Arena ") <= most < free.stderr.count("Arena ")


def test_the_environment_wins_over_the_setting() -> None:
    env = {**os.environ, "MALLOC_ARENA_MAX": "3"}
    run = subprocess.run(
        [sys.executable, "-c", _ARENAS_SCRIPT, "2"], capture_output=True, text=True, env=env, check=True
    )
    assert run.stdout.strip() == "MALLOC_ARENA_MAX=3 (environment)"


_MMAP_SCRIPT = """
import ctypes, sys
import numpy as np
from inference_server import decode_budget

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
                 "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
print(decode_budget.fix_mmap_threshold(int(sys.argv[1])), flush=True)
picture = np.ones(4 << 20, dtype=np.uint8)  # a decoded picture, mmapped: 4 MB > any threshold
del picture  # freed: glibc's own threshold now rises to 4 MB
before = libc.mallinfo2().hblkhd
tensor = np.ones(1 << 20, dtype=np.uint8)  # the next picture's tensor, 1 MB
print(libc.mallinfo2().hblkhd - before >= 1 << 20)
"""


@pytest.mark.parametrize(("kib", "mapped"), [(256, "True"), (0, "False")])
def test_a_fixed_mmap_threshold_keeps_large_blocks_off_the_heap(kib: int, mapped: str) -> None:
    """After one large block is freed, glibc's own threshold rises and later large blocks come from
    the heap (which ratchets); with the threshold fixed they still get a mapping of their own."""
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"}
    run = subprocess.run(
        [sys.executable, "-c", _MMAP_SCRIPT, str(kib)], capture_output=True, text=True, env=env, check=True
    )
    applied, on_its_own_mapping = run.stdout.splitlines()
    assert applied == ("256 KiB" if kib else "glibc default")
    assert on_its_own_mapping == mapped


def test_the_environment_wins_over_the_mmap_setting() -> None:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    run = subprocess.run(
        [sys.executable, "-c", _MMAP_SCRIPT, "256"], capture_output=True, text=True, env=env, check=True
    )
    assert run.stdout.splitlines()[0] == "MALLOC_MMAP_THRESHOLD_=131072 (environment)"


_TRIM_SCRIPT = """
import ctypes, resource, sys
import numpy as np
from inference_server import decode_budget

print(decode_budget.fix_mmap_threshold(1024), decode_budget.fix_trim_threshold(int(sys.argv[1])), sep="|", flush=True)
faults = []
for _ in range(20):  # a picture's work: a 768 KiB temporary (under the mmap threshold), freed each time
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    grey = np.ones(768 << 10, dtype=np.uint8)
    del grey
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(sum(faults[10:]))
"""


@pytest.mark.parametrize(("kib", "applied"), [(8192, "8192 KiB"), (0, "glibc default")])
def test_a_fixed_trim_threshold_keeps_a_freed_temporary_for_the_next_picture(kib: int, applied: str) -> None:
    """With the mmap threshold fixed, glibc gives back every block over 128 KiB freed at the top of
    the heap, and the next picture's temporary faults its pages in again (~190 for 768 KiB); with
    the trim threshold fixed above it, the heap keeps it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    run = subprocess.run(
        [sys.executable, "-c", _TRIM_SCRIPT, str(kib)], capture_output=True, text=True, env=env, check=True
    )
    settings, faults = run.stdout.splitlines()
    assert settings == f"1024 KiB|{applied}"
    if kib:
        assert int(faults) < 10  # ten temporaries, their pages kept
    else:
        assert int(faults) > 1000  # ten temporaries, each faulted in afresh


def test_the_environment_wins_over_the_trim_setting() -> None:
    env = {**os.environ, "MALLOC_TRIM_THRESHOLD_": "131072"}
    run = subprocess.run(
        [sys.executable, "-c", _TRIM_SCRIPT, "8192"], capture_output=True, text=True, env=env, check=True
    )
    assert run.stdout.splitlines()[0] == "1024 KiB|MALLOC_TRIM_THRESHOLD_=131072 (environment)"
