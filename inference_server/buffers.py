"""Model inputs' memory, reused while images flow and given back when they stop.

glibc's mmap threshold is fixed (``decode_budget.fix_mmap_threshold``, so the RSS cannot ratchet
with a backlog): every letterboxed tensor (2-5 MB) and batch is a mapping of its own, unmapped
when freed, and the next one page-faults its pages in afresh. ``ArrayPool`` keeps the detector's
tensors for the next pictures of the same shape instead, bounded by ``detector_tensor_cache_mb``;
``release_idle`` (the detect worker, once it has found no work for ``buffers_idle_s``) empties
every pool, so an idle server keeps none of them. docs/decisions.md, "Model inputs' memory reused".
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

_pools: weakref.WeakSet[ArrayPool] = weakref.WeakSet()


class ArrayPool:
    """Arrays of one dtype, reused by shape: ``take`` one (the most recently given of that shape,
    else a new one), ``give`` it back when nothing reads it any more. The free arrays are bounded
    by ``limit_bytes`` (0: nothing is kept): past it the longest-unused ones are let go, so the
    pool follows the shapes in use now (cameras of several sizes, batches of several lengths).
    Thread-safe: decode threads take, the inference thread gives. ``release_idle`` empties every
    pool."""

    def __init__(self, limit_bytes: int, dtype: npt.DTypeLike = np.float32) -> None:
        self.dtype = np.dtype(dtype)
        self.limit_bytes = limit_bytes
        self._free: list[npt.NDArray[Any]] = []  # the longest unused first
        self._held = 0
        self._lock = threading.Lock()
        #: Arrays handed out of the free list (reused) and made anew, since the pool was made.
        self.reused = 0
        self.made = 0
        _pools.add(self)

    @property
    def held_bytes(self) -> int:
        with self._lock:
            return self._held

    def take(self, shape: tuple[int, ...]) -> npt.NDArray[Any]:
        """An array of ``shape`` with undefined contents (write every element)."""
        with self._lock:
            for index in range(len(self._free) - 1, -1, -1):
                if self._free[index].shape == shape:
                    array = self._free.pop(index)
                    self._held -= array.nbytes
                    self.reused += 1
                    return array
            self.made += 1
        return np.empty(shape, dtype=self.dtype)

    def give(self, array: npt.NDArray[Any]) -> None:
        """Take ``array`` back for reuse; the caller must not read or write it afterwards."""
        if array.dtype != self.dtype or not array.flags.c_contiguous or array.base is not None:
            return  # a view or a foreign array: not ours to hand out again
        with self._lock:
            if array.nbytes > self.limit_bytes or any(a is array for a in self._free):
                return  # larger than the pool, or given twice (kept once, it is handed out once)
            self._free.append(array)
            self._held += array.nbytes
            while self._held > self.limit_bytes:
                self._held -= self._free.pop(0).nbytes

    def clear(self) -> int:
        """Drop every free array; returns the bytes let go."""
        with self._lock:
            held, self._held = self._held, 0
            self._free.clear()
        return held


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
