"""inference_server/buffers.py: the model inputs' memory reused while images flow (issue 20).

With glibc's mmap threshold fixed (the server's default, so the RSS cannot ratchet), every
letterboxed tensor was a fresh mapping whose pages were faulted in one by one: 700-1,200 minor
page faults an image for the tensor alone.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from inference_server import buffers
from inference_server.buffers import ArrayPool

ROOT = Path(__file__).resolve().parents[2]


def block(array: np.ndarray) -> np.ndarray:
    """The pool's block an array handed out is a view of (the memory that is reused)."""
    assert isinstance(array.base, np.ndarray) and array.base.ndim == 1
    return array.base


def test_a_given_array_s_memory_is_taken_again_within_the_bound() -> None:
    pool = ArrayPool(limit_bytes=2 * 3 * 8 * 8 * 4)
    first, second, third = (pool.take((3, 8, 8)) for _ in range(3))
    assert pool.made == 3 and pool.reused == 0
    assert all(a.shape == (3, 8, 8) and a.dtype == np.float32 and a.flags.c_contiguous for a in (first, second, third))
    blocks = [block(a) for a in (first, second, third)]
    for array in (first, second, third):
        pool.give(array)
    assert pool.held_bytes == 2 * first.nbytes  # over the bound: the longest unused (first) let go
    assert block(pool.take((3, 8, 8))) is blocks[2] and block(pool.take((3, 8, 8))) is blocks[1]
    assert block(pool.take((3, 8, 8))) is not blocks[0] and pool.reused == 2


def test_memory_is_reused_by_size_across_shapes() -> None:
    """A block serves any later shape that fits in it, at most twice the size asked for: a camera
    of another size, a batch of another length. The smallest free block that fits is taken."""
    pool = ArrayPool(limit_bytes=1 << 24, dtype=np.uint8)
    portrait, landscape, small = pool.take((1080, 810, 4)), pool.take((720, 1280, 4)), pool.take((360, 640, 4))
    blocks = [block(a) for a in (portrait, landscape, small)]
    for array in (portrait, landscape, small):
        pool.give(array)
    # 810×1080 fits in 1280×720's block and its own; the smaller block (its own) is taken first.
    assert block(pool.take((1080, 810, 4))) is blocks[0]
    assert block(pool.take((1080, 810, 4))) is blocks[1]
    # A quarter of the size is too small a use for a block (at most twice what is asked for).
    tiny = pool.take((180, 320, 4))
    assert block(tiny) is not blocks[2] and pool.made == 4
    pool.give(tiny)
    assert block(pool.take((360, 640, 4))) is blocks[2]
    # Near sizes round up to one block size: a block made for one serves the other.
    near = pool.take((1080, 1920, 3))
    pool.give(near)
    assert block(pool.take((1088, 1920, 3))) is block(near)


def test_the_pool_follows_the_sizes_in_use() -> None:
    """Blocks of a size no longer asked for (a batch length, a camera gone) give way to the
    sizes in use, rather than filling the pool so that the new ones are dropped."""
    pool = ArrayPool(limit_bytes=4 * 3 * 8 * 16 * 4)
    for array in [pool.take((3, 8, 8)) for _ in range(4)]:
        pool.give(array)
    now = [pool.take((3, 8, 16)) for _ in range(4)]  # twice the size: no old block fits
    for array in now:
        pool.give(array)
    assert pool.held_bytes == 4 * now[0].nbytes
    taken = [pool.take((3, 8, 16)) for _ in range(4)]
    assert {id(block(t)) for t in taken} == {id(block(a)) for a in now} and pool.made == 8


def test_views_foreign_arrays_and_an_array_given_twice_are_not_kept() -> None:
    pool = ArrayPool(limit_bytes=1 << 20)
    array = pool.take((2, 16))
    pool.give(array[np.newaxis])  # a view of what was handed out (a batch of one): not the caller's to give
    pool.give(array.reshape(32))
    pool.give(np.zeros((2, 16), dtype=np.float64))
    pool.give(np.zeros((16, 2), dtype=np.float32).T)
    assert pool.held_bytes == 0
    pool.give(array)
    pool.give(array)  # twice: kept once, so it can only be handed out once
    assert pool.held_bytes == block(array).nbytes
    assert block(pool.take((2, 16))) is block(array) and block(pool.take((2, 16))) is not block(array)
    off = ArrayPool(limit_bytes=0)
    off.give(off.take((2, 16)))
    assert off.held_bytes == 0


def test_an_array_dropped_without_being_given_back_is_forgotten() -> None:
    """A caller that loses an array (an error path) frees its block with it: the pool keeps no
    record of it, and an array made later at the same address is not taken for it."""
    pool = ArrayPool(limit_bytes=1 << 20)
    array = pool.take((4, 64))
    del array
    assert pool._lent == {}
    pool.give(np.zeros((4, 64), dtype=np.float32))
    assert pool.held_bytes == 0


def test_release_idle_empties_every_pool() -> None:
    pools = [ArrayPool(limit_bytes=1 << 20) for _ in range(2)]
    for pool in pools:
        pool.give(pool.take((4, 64)))
    assert buffers.release_idle() >= 2 * 4 * 64 * 4
    assert [pool.held_bytes for pool in pools] == [0, 0]


_FAULTS = """
import json, resource, sys
from pathlib import Path

from inference_server import decode_budget, demo_assets
from inference_server.detection.onnx_backend import OnnxDetector
from inference_server.pipeline.decode import decode

decode_budget.fix_mmap_threshold(1024)  # the server's default
detector = OnnxDetector(Path(sys.argv[1]), tensor_cache_mb=int(sys.argv[2]))
paths = [demo_assets.image(n) for n in ("bus.jpg", "zidane.jpg")] * 6

def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt

def work():
    # What a decode thread and the inference thread do for a batch of 4, the pictures let go
    # once stored; only decode and prepare are counted (inference has its own arena).
    counted = 0
    for start in range(0, len(paths), 4):
        before = faults()
        prepared = [(picture := decode(p, 640), detector.prepare(picture)) for p in paths[start : start + 4]]
        counted += faults() - before
        detector.detect([input for _, input in prepared])
        del prepared
    return counted / len(paths)

work()  # warm: first pictures, the runtime's arena
print(json.dumps({"faults_per_image": work()}))
"""


def _faults_per_image(model: Path, cache_mb: int) -> float:
    result = subprocess.run(
        [sys.executable, "-c", _FAULTS, str(model), str(cache_mb)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        check=True,
    )
    value: float = json.loads(result.stdout.splitlines()[-1])["faults_per_image"]
    return value


def test_steady_letterboxing_reuses_the_tensors_instead_of_faulting_them_in() -> None:
    """Decode and letterbox of bus.jpg and zidane.jpg, as the pipeline does them, in steady state:
    without the pool (what the server did) each image also faults in its tensor afresh, 3.7 MB
    for bus.jpg's 640×480 and 2.9 MB for zidane.jpg's 384×640; with the default pool it is reused
    (measured: ~1,980 → ~1,380 faults a picture)."""
    from tests.server.detection.test_onnx_backend import pose_onnx

    model = pose_onnx()
    without = _faults_per_image(model, 0)
    pooled = _faults_per_image(model, 32)
    assert without - pooled > 400, (without, pooled)


def test_a_lent_array_goes_back_once_unless_it_was_taken() -> None:
    """``Lent``: the ingest door's holder of the array it decodes into for the worker. Given back
    (the job did not take it), the pool has it again; taken, giving back does nothing (the new
    owner gives it back when done); neither can happen twice."""
    pool = ArrayPool(1 << 20, np.uint8)
    kept = buffers.Lent(pool, (4, 4, 4))
    array = kept.array
    kept.give_back()
    kept.give_back()
    assert block(pool.take((4, 4, 4))) is block(array) and block(pool.take((4, 4, 4))) is not block(array)
    moved = buffers.Lent(pool, (2, 2, 4))
    owned = moved.take()
    moved.give_back()
    assert block(pool.take((2, 2, 4))) is not block(owned)
    with pytest.raises(RuntimeError, match="taken or given back"):
        moved.take()


def test_a_lent_array_counts_back_once_when_given_back_or_dropped_not_when_taken() -> None:
    """The worker counts the pictures decoded ahead for it through ``returned``: once for an
    array given back, once for a holder dropped with its array (an upload cancelled while the
    door decoded), never for one taken (the worker counts that one off when it uses it)."""
    pool = ArrayPool(1 << 20, np.uint8)
    back: list[int] = []
    given = buffers.Lent(pool, (4, 4, 4), returned=lambda: back.append(1))
    given.give_back()
    given.give_back()
    taken = buffers.Lent(pool, (4, 4, 4), returned=lambda: back.append(2))
    taken.take()
    del taken
    dropped = buffers.Lent(pool, (4, 4, 4), returned=lambda: back.append(3))
    array = dropped.array
    del dropped
    assert back == [1, 3]
    assert block(pool.take((4, 4, 4))) is block(array)
