"""Model inputs' memory, reused while images flow and given back when they stop.

glibc's mmap threshold is fixed (``decode_budget.fix_mmap_threshold``, so the RSS cannot ratchet
with a backlog): every letterboxed tensor (2-5 MB) and batch is a mapping of its own, unmapped
when freed, and the next one page-faults its pages in afresh. ``ArrayPool`` keeps their memory for
the next pictures instead (any shape that fits), bounded by ``detector_tensor_cache_mb``;
``release_idle`` (the detect worker, once it has found no work for ``buffers_idle_s``) empties
every pool, so an idle server keeps none of them. docs/decisions.md, "Model inputs' memory reused".
"""

from __future__ import annotations

import math
import threading
import weakref
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

_pools: weakref.WeakSet[ArrayPool] = weakref.WeakSet()


class ArrayPool:
    """Arrays of one dtype, reused while images flow: ``take`` one of a shape, ``give`` it back
    when nothing reads it any more. The memory is reused by size, not by shape: every array
    handed out is a view of a flat block of the pool, and a block given back serves any later
    shape that fits in it (the smallest free one that fits, at most twice the size asked for, else a
    new block, its size rounded up to a sixteenth of its power of two so that near sizes share
    one). Cameras of several sizes and batches of several lengths then reuse each other's
    memory instead of each waiting for its own shape (stop 41: half the pictures and tensors of
    a four-camera burst were fresh mappings). The free blocks are bounded by ``limit_bytes`` (0:
    nothing is kept): past it the longest-unused ones are let go. Thread-safe: decode threads
    take, the inference thread gives. ``release_idle`` empties every pool."""

    def __init__(self, limit_bytes: int, dtype: npt.DTypeLike = np.float32) -> None:
        self.dtype = np.dtype(dtype)
        self.limit_bytes = limit_bytes
        self._free: list[npt.NDArray[Any]] = []  # flat blocks, the longest unused first
        self._held = 0
        # Re-entrant: a weak reference's callback (a view dropped without being given back) may
        # run in a thread that holds the lock already.
        self._lock = threading.RLock()
        #: The arrays handed out and not given back, by ``id``: only those are taken back (a view
        #: of one, such as a batch of one picture, shares its block but is not the caller's to give).
        self._lent: dict[int, weakref.ref[npt.NDArray[Any]]] = {}
        #: Arrays handed out of a free block (reused) and made on a new block, since the pool was made.
        self.reused = 0
        self.made = 0
        _pools.add(self)

    @property
    def held_bytes(self) -> int:
        with self._lock:
            return self._held

    def take(self, shape: tuple[int, ...]) -> npt.NDArray[Any]:
        """A C-contiguous array of ``shape`` with undefined contents (write every element)."""
        count = math.prod(shape)
        with self._lock:
            best: int | None = None
            for index in range(len(self._free) - 1, -1, -1):  # the most recently given first
                size = self._free[index].size
                if count <= size <= 2 * count and (best is None or size < self._free[best].size):
                    best = index
            if best is not None:
                block = self._free.pop(best)
                self._held -= block.nbytes
                self.reused += 1
            else:
                self.made += 1
        if best is None:
            block = np.empty(_block_size(count), dtype=self.dtype)
        array = block[:count].reshape(shape)
        with self._lock:
            key = id(array)
            self._lent[key] = weakref.ref(array, lambda ref: self._forget(key, ref))
        return array

    def _forget(self, key: int, ref: weakref.ref[npt.NDArray[Any]]) -> None:
        """An array handed out was dropped without being given back: its block is freed with it."""
        with self._lock:
            if self._lent.get(key) is ref:
                del self._lent[key]

    def give(self, array: npt.NDArray[Any]) -> None:
        """Take ``array`` back for reuse; the caller must not read or write it afterwards. Only an
        array this pool handed out, once: a view of one, a foreign array or one given back
        already is ignored (its block may be in use elsewhere, or free already)."""
        with self._lock:
            ref = self._lent.get(id(array))
            if ref is None or ref() is not array:
                return
            del self._lent[id(array)]
            block = array.base
            if not isinstance(block, np.ndarray) or block.nbytes > self.limit_bytes:
                return  # larger than the pool: let go
            self._free.append(block)
            self._held += block.nbytes
            while self._held > self.limit_bytes:
                self._held -= self._free.pop(0).nbytes

    def clear(self) -> int:
        """Drop every free block; returns the bytes let go."""
        with self._lock:
            held, self._held = self._held, 0
            self._free.clear()
        return held


def _block_size(count: int) -> int:
    """``count`` elements rounded up to a sixteenth of its power of two (at most 12.5 % more):
    a 1080×810 and a 1080×820 picture, or batches of close lengths, share a block size."""
    step = 1 << max(0, count.bit_length() - 4)
    return -(-count // step) * step


class Lent:
    """An array taken from a pool with one owner at a time: ``take`` moves it on to a new owner
    (who gives it back to the pool in the end), ``give_back`` returns it unless it was taken. The
    ingest door decodes a picture into one for this process's detect worker and keeps it until
    the worker takes it with the job, else gives it back (``ingest/ingestor.py``)."""

    __slots__ = ("_array", "_lock", "_returned", "pool")

    def __init__(self, pool: ArrayPool, shape: tuple[int, ...], returned: Callable[[], None] | None = None) -> None:
        """``returned``: called once when ``give_back`` returns the array to the pool (not when
        it was taken: its new owner accounts for it then)."""
        self.pool = pool
        self._array: npt.NDArray[Any] | None = pool.take(shape)
        self._lock = threading.Lock()
        self._returned = returned

    @property
    def array(self) -> npt.NDArray[Any]:
        """The array, while it is still this holder's (to write into)."""
        if (array := self._array) is None:
            raise RuntimeError("the array was taken or given back")
        return array

    def take(self) -> npt.NDArray[Any]:
        """The array, now the caller's: this holder lets go of it."""
        with self._lock:
            array, self._array = self._array, None
        if array is None:
            raise RuntimeError("the array was taken or given back")
        return array

    def __del__(self) -> None:
        # A holder dropped with its array (an upload cancelled while the door decoded for the
        # worker: the thread's result is dropped) still gives it back and is counted off.
        self.give_back()

    def give_back(self) -> None:
        """Back to the pool, unless it was taken (then nothing: its new owner gives it back)."""
        with self._lock:
            array, self._array = self._array, None
        if array is not None:
            self.pool.give(array)
            if self._returned is not None:
                self._returned()


def release_idle() -> int:
    """Let every pool's free arrays go (the work has stopped); returns the bytes let go."""
    return sum(pool.clear() for pool in list(_pools))
