"""A process-wide budget of decoded image bytes, shared by every decode (ingest checks, detect).

A compressed picture is small and its decoded pixels are not: 12 PNGs of 6300x6300 RGBA are
2 MB on the wire and 1.9 GB decoded; a 700-byte JPEG can declare 6000x6000. Each decode first
takes its estimated decoded size from this budget (waiting, first come first served, while
others hold it) and gives it back when done, so the pixels decoded at once never exceed
``decode_memory_mb`` — one image larger than the whole budget decodes alone. After a large
decode the freed heap is handed back to the operating system (``malloc_trim``): glibc keeps
freed memory in its arenas otherwise, and the server's RSS stays at its peak.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import threading
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)

MIB = 1024 * 1024

DEFAULT_MB = 512
#: Decodes at least this large hand freed memory back to the OS when they finish.
TRIM_AFTER_BYTES = 32 * MIB

# Bytes per pixel of Pillow's in-memory modes ("RGB" is stored as 4 bytes, like "RGBA").
_PIL_BYTES = {"1": 1, "L": 1, "P": 1, "LA": 4, "PA": 4, "RGB": 4, "RGBA": 4, "RGBX": 4, "CMYK": 4, "YCbCr": 4}
_PIL_WIDE = {"I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2, "I": 4, "F": 4}


class DecodeBudget:
    """A counting semaphore of bytes, fair (FIFO) so a large decode is not starved by small ones."""

    def __init__(self, total_bytes: int) -> None:
        if total_bytes <= 0:
            raise ValueError(f"decode budget must be positive, got {total_bytes}")
        self._total = total_bytes
        self._used = 0
        self._cond = threading.Condition()
        self._queue: deque[object] = deque()

    @property
    def total(self) -> int:
        return self._total

    @property
    def used(self) -> int:
        """Bytes held by decodes running now."""
        with self._cond:
            return self._used

    @property
    def waiting(self) -> int:
        """Decodes waiting for their share."""
        with self._cond:
            return len(self._queue)

    def resize(self, total_bytes: int) -> None:
        if total_bytes <= 0:
            raise ValueError(f"decode budget must be positive, got {total_bytes}")
        with self._cond:
            self._total = total_bytes
            self._cond.notify_all()

    def acquire(self, nbytes: int) -> int:
        """Block until ``nbytes`` (at most the whole budget) are free; returns what was taken."""
        ticket = object()
        with self._cond:
            self._queue.append(ticket)
            try:
                while True:
                    take = max(0, min(nbytes, self._total))
                    if self._queue[0] is ticket and self._used + take <= self._total:
                        self._used += take
                        return take
                    self._cond.wait()
            finally:
                self._queue.remove(ticket)
                self._cond.notify_all()

    def release(self, taken: int) -> None:
        with self._cond:
            self._used -= taken
            self._cond.notify_all()

    @contextmanager
    def hold(self, nbytes: int) -> Iterator[int]:
        """Hold ``nbytes`` of the budget for the duration of a decode; trims the heap after a large one."""
        taken = self.acquire(nbytes)
        try:
            yield taken
        finally:
            self.release(taken)
            if nbytes >= TRIM_AFTER_BYTES:
                trim_heap()


_shared: DecodeBudget | None = None
_shared_lock = threading.Lock()


def shared(total_mb: int = DEFAULT_MB) -> DecodeBudget:
    """The process's one budget, sized ``total_mb`` (the ``decode_memory_mb`` setting)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = DecodeBudget(total_mb * MIB)
        elif _shared.total != total_mb * MIB:
            _shared.resize(total_mb * MIB)
        return _shared


def pillow_bytes(mode: str, width: int, height: int) -> int:
    """Memory of a decoded Pillow image of this mode and size."""
    per_pixel = _PIL_BYTES.get(mode) or _PIL_WIDE.get(mode, 4)
    return width * height * per_pixel


def jpeg_coefficient_bytes(width: int, height: int, components: int) -> int:
    """What libjpeg holds for a progressive (multi-scan) JPEG whatever the output scale: every
    DCT coefficient of the whole image, 2 bytes each (an upper bound: chroma may be subsampled)."""
    return width * height * components * 2


def _libc(name: str, argtypes: list[type[ctypes.c_int] | type[ctypes.c_size_t]]) -> Callable[..., int] | None:
    """A glibc function, or None where the C library is another (musl, macOS)."""
    library = ctypes.util.find_library("c")
    if library is None:
        return None
    try:
        func = getattr(ctypes.CDLL(library), name)
    except (OSError, AttributeError):
        return None
    func.argtypes = argtypes
    func.restype = ctypes.c_int
    found: Callable[..., int] = func
    return found


_malloc_trim = _libc("malloc_trim", [ctypes.c_size_t])

#: mallopt's parameter numbers (glibc's malloc.h).
_M_ARENA_MAX = -8
_M_MMAP_THRESHOLD = -3
_M_TRIM_THRESHOLD = -1


def _mallopt(variable: str, parameter: int, value: int, applied: str) -> str:
    """Set one of glibc's malloc parameters unless its environment ``variable`` is set (which
    wins) or ``value`` is 0 (glibc's default). Returns what applies, for the log."""
    if variable in os.environ:
        return f"{variable}={os.environ[variable]} (environment)"
    if value == 0:
        return "glibc default"
    mallopt = _libc("mallopt", [ctypes.c_int, ctypes.c_int])
    if mallopt is None:
        return "not glibc: unchanged"
    if mallopt(parameter, value) != 1:
        return "mallopt refused: unchanged"
    return applied


def limit_malloc_arenas(count: int) -> str:
    """Cap glibc's malloc arenas (``malloc_arena_max``) before the server starts its threads:
    by default every thread that allocates while another holds the lock gets an arena of its
    own (up to 8 per core) that keeps its peak."""
    return _mallopt("MALLOC_ARENA_MAX", _M_ARENA_MAX, count, str(count))


def fix_mmap_threshold(kib: int) -> str:
    """Serve every allocation of ``kib`` KiB or more with its own mmap, returned to the OS when
    freed (``malloc_mmap_threshold_kb``). glibc's default threshold starts at 128 KiB and rises to
    the largest block freed so far: after one decoded picture (2-5 MB) is freed, later pictures,
    tensors and batches come from the heap, whose top cannot shrink below a small block still
    held, and the RSS ratchets with the work done (performance.md, "Memory"). Setting it also
    fixes the trim threshold."""
    return _mallopt("MALLOC_MMAP_THRESHOLD_", _M_MMAP_THRESHOLD, kib * 1024, f"{kib} KiB")


def fix_trim_threshold(kib: int) -> str:
    """Keep up to ``kib`` KiB free at the top of each malloc heap rather than give it back to the
    system at once (``malloc_trim_threshold_kb``). Once the mmap threshold is fixed, glibc's trim
    threshold stays at its 128 KiB: every block between that and the mmap threshold (a grey copy,
    a resize's pass, NumPy's temporaries) freed at the top of the heap was given back and faulted
    in again for the next picture (performance.md, "Stop 32"). Bounded: at most this much per arena
    (``malloc_arena_max``) is kept beyond what is in use."""
    return _mallopt("MALLOC_TRIM_THRESHOLD_", _M_TRIM_THRESHOLD, kib * 1024, f"{kib} KiB")


def trim_heap() -> None:
    """Give memory freed by a large decode back to the OS (glibc keeps it in its arenas)."""
    if _malloc_trim is not None:
        _malloc_trim(0)
