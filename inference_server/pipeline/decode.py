"""Decoding a stored picture for the pipeline: RGB, upright, at about the size it is needed.

The model needs only its letterbox (the longer side at ``detector_imgsz``); face crops and the
annotated snapshot need more (both sides at that size or more). A JPEG is decoded straight at
the DCT scale that gives that (1/2, 1/4, 1/8: several times cheaper than a full decode), within
the process's decode memory budget (``decode_budget``).

``decode`` gives a Pillow image (snapshots drawn from the stored file, tests, benches);
``decode_picture`` the detect worker's ``Picture``: the pixels as an array, a JPEG's decoded by
libjpeg-turbo straight into an array of the worker's pool (no Pillow image and no copy of it,
no fresh mapping to page-fault in: docs/decisions.md, "Decoded pictures: into reused arrays").
"""

from __future__ import annotations

import io
import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
from PIL import ExifTags, Image, ImageOps

from inference_server import decode_budget, jpeg
from inference_server.buffers import ArrayPool
from inference_server.decode_budget import DecodeBudget

#: ``cover``: both sides ≥ the target; ``letterbox``: the longer side ≥ the target.
Fit = Literal["cover", "letterbox"]


class DecodeError(ValueError):
    """The stored bytes cannot be decoded: retrying will not help."""


_SIXTEEN_BIT = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})


def decode(path: Path, target: int, budget: DecodeBudget | None = None, *, fit: Fit = "cover") -> Image.Image:
    """Decode to RGB at about ``target``: with ``fit="cover"`` both sides kept ≥ ``target`` (what
    face crops and snapshots need), with ``fit="letterbox"`` the longer side ≥ ``target`` (all
    the model sees: its letterbox scales the longer side to ``target``). A JPEG is decoded
    straight at the smallest DCT scale that allows (draft), a PNG (which Pillow decodes only
    whole) reduced right after by the largest whole factor. The decode first waits for its
    estimated memory in ``budget`` (default: the process's shared one) and gives it back when done."""
    budget = budget or decode_budget.shared()
    # The file is ours to close, not Pillow's: the loaded picture outlives it as it is, where
    # ``with Image.open(path)`` would free its pixels on the way out and so need a copy.
    with _decode_errors(), open(path, "rb") as fh:
        return _decode_opened(Image.open(fh), target, budget, fit)


@contextmanager
def _decode_errors() -> Iterator[None]:
    """What a decode raises for bytes that cannot be decoded, as ``DecodeError`` (a file that is
    gone stays ``FileNotFoundError``)."""
    try:
        yield
    except FileNotFoundError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise DecodeError(f"{type(err).__name__}: {err}") from err


def _decode_opened(img: Image.Image, target: int, budget: DecodeBudget, fit: Fit) -> Image.Image:
    """``decode`` of a picture opened (its header read) and not loaded yet."""
    with budget.hold(_decoded_bytes(img, target, fit)):
        scale = _scale(img.size, target, fit)
        if img.format == "JPEG":
            img.draft("RGB", _draft_size(img.size, target, fit))
            scale = 1  # the DCT did it
        img.load()  # also reads a PNG's eXIf chunk that follows the pixels
        picture: Image.Image = img
        if picture.mode in _SIXTEEN_BIT:
            # 16-bit grey (PNG): scale to 8 bits; convert("RGB") would clip everything to white.
            picture = picture.convert("I").point(lambda v: v * (1 / 256)).convert("L")
        elif picture.mode not in _REDUCIBLE and scale > 1:
            picture = picture.convert("RGB")  # palette or 1-bit: average colours, not indices
        if scale > 1:
            picture = picture.reduce(scale)  # keeps info (EXIF) for the transpose below
        if picture.getexif().get(ExifTags.Base.Orientation, 1) != 1:
            # Cameras mounted sideways tag, not rotate. (Without a turn to make,
            # ``exif_transpose`` returns a copy: 4 ms of a 1 MP picture, not made.)
            picture = ImageOps.exif_transpose(picture)
        if picture.mode != "RGB":
            picture = picture.convert("RGB")
        picture.load()
        return picture


_REDUCIBLE = frozenset({"L", "LA", "RGB", "RGBA", "I", "F", "CMYK"})

Pixels = npt.NDArray[np.uint8]


class PictureReleased(RuntimeError):
    """A released picture's pixels were asked for: they belong to another picture now."""


class Picture:
    """A decoded picture. ``pixels``: RGB, (height, width, 3) ``uint8``; a view of the 4-byte RGBX
    pixels libjpeg-turbo decoded into (Pillow's own layout: ``image`` maps them, no copy), or
    a contiguous RGB array (a picture Pillow decoded).

    When its array came from a pool, ``release`` gives it back once nothing reads it any more
    (the detect worker, when the picture's batch is stored); ``pixels`` and ``image`` then raise
    ``PictureReleased`` rather than hand out another picture's pixels. Releasing twice does
    nothing, nor does releasing a picture of no pool (its array is never another's: it stays)."""

    __slots__ = ("_array", "_lock", "_pool", "size")

    def __init__(self, array: npt.NDArray[np.uint8], pool: ArrayPool | None = None) -> None:
        """``array``: (height, width, 3) RGB or (height, width, 4) RGBX ``uint8``, C-contiguous."""
        if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] not in (3, 4) or not array.flags.c_contiguous:
            raise ValueError(f"a picture is contiguous (height, width, 3 or 4) uint8, not {array.shape} {array.dtype}")
        self._array: npt.NDArray[np.uint8] | None = array
        self._pool = pool
        self._lock = threading.Lock()
        #: (width, height), as Pillow's ``size``.
        self.size: tuple[int, int] = (int(array.shape[1]), int(array.shape[0]))

    def _held(self) -> npt.NDArray[np.uint8]:
        array = self._array
        if array is None:
            raise PictureReleased("the picture was released")
        return array

    @property
    def pixels(self) -> Pixels:
        """RGB, (height, width, 3): a view (of RGBX pixels, not contiguous) or the array itself."""
        return self._held()[:, :, :3]

    @property
    def released(self) -> bool:
        return self._array is None

    def image(self) -> Image.Image:
        """A Pillow image of the picture: RGBX pixels mapped as they are (mode "RGBX", read-only,
        valid until the picture is released: convert it to keep it), RGB ones copied in."""
        array = self._held()
        if array.shape[2] == 4:
            return Image.frombuffer("RGBX", self.size, array, "raw", "RGBX", 0, 1)
        return Image.fromarray(array, "RGB")

    def rgbx(self) -> npt.NDArray[np.uint8] | None:
        """The RGBX array itself (height, width, 4) when the picture is one (a JPEG the worker
        decoded), else None: to copy from, never to write to."""
        array = self._held()
        return array if array.shape[2] == 4 else None

    def release(self) -> None:
        if self._pool is None:
            return
        with self._lock:
            array, self._array = self._array, None
        if array is not None:
            self._pool.give(array)


def decode_picture(
    path: Path, target: int, budget: DecodeBudget | None = None, *, fit: Fit = "cover", pool: ArrayPool | None = None
) -> Picture:
    """``decode``'s picture as an array (``Picture``). A JPEG in YCbCr or grey whose EXIF asks
    for no turn is decoded by libjpeg-turbo (simplejpeg) at the same DCT scale as ``decode``, as
    RGBX (Pillow's layout, so tamper features and snapshots map it without a copy) into an array
    of ``pool`` when given; anything else (PNG, CMYK, a picture to turn upright) goes through
    ``decode`` and is copied out of Pillow's image as RGB. Raises ``DecodeError`` as ``decode``."""
    budget = budget or decode_budget.shared()
    with _decode_errors():
        with open(path, "rb") as fh:
            data = fh.read()
        header = Image.open(io.BytesIO(data))
        if (
            header.format != "JPEG"
            or header.mode not in ("RGB", "L")
            or header.getexif().get(ExifTags.Base.Orientation, 1) != 1
        ):
            return Picture(np.asarray(_decode_opened(header, target, budget, fit)))
    width, height = header.size
    shape = rgbx_shape(header.size, target, fit)
    need = shape[0] * shape[1] * 4
    if header.info.get("progressive"):
        need += decode_budget.jpeg_coefficient_bytes(width, height, len(header.getbands()))
    with budget.hold(need):
        pixels: Pixels = pool.take(shape) if pool is not None else np.empty(shape, dtype=np.uint8)
        _decode_jpeg_into(data, pixels)
    return Picture(pixels, pool)


def rgbx_shape(size: tuple[int, int], target: int, fit: Fit) -> tuple[int, int, int]:
    """The array a JPEG of ``size`` (width, height) is decoded into as RGBX by ``decode_picture``:
    (height, width, 4) at the DCT scale ``fit`` allows."""
    scale = _dct_scale(size, target, fit)
    return (math.ceil(size[1] / scale), math.ceil(size[0] / scale), 4)


def _decode_jpeg_into(data: bytes, pixels: npt.NDArray[np.uint8]) -> None:
    """libjpeg-turbo's strict RGBX decode at the scale that gives ``pixels``' shape
    (``jpeg.decode_into``); bytes that cannot be decoded raise ``DecodeError``."""
    try:
        jpeg.decode_into(data, pixels)
    except ValueError as err:
        raise DecodeError(f"ValueError: {err}") from err


def _scale(size: tuple[int, int], target: int, fit: Fit = "cover") -> int:
    """The largest whole factor that keeps both sides (``cover``) or the longer side
    (``letterbox``) ≥ ``target`` (JPEG: a power of two, as draft)."""
    pick = min if fit == "cover" else max
    return max(1, pick(size[0] // target, size[1] // target))


def _dct_scale(size: tuple[int, int], target: int, fit: Fit) -> int:
    """The JPEG DCT scale (8, 4, 2 or 1) within ``_scale``'s whole factor."""
    return next(s for s in (8, 4, 2, 1) if s <= _scale(size, target, fit))


def _draft_size(size: tuple[int, int], target: int, fit: Fit) -> tuple[int, int]:
    """The size to ask ``Image.draft`` for: it keeps both sides ≥ the request."""
    if fit == "cover":
        return (target, target)
    longer = max(size)
    return (max(1, -(-target * size[0] // longer)), max(1, -(-target * size[1] // longer)))


def _decoded_bytes(img: Image.Image, target: int, fit: Fit = "cover") -> int:
    """An upper estimate of the memory ``decode`` needs for ``img`` (header read, not decoded)."""
    width, height = img.size
    if img.format == "JPEG":
        scale = _dct_scale(img.size, target, fit)
        decoded = 0  # counted in the output copies below
        if img.info.get("progressive"):
            decoded = decode_budget.jpeg_coefficient_bytes(width, height, len(img.getbands()))
    else:
        scale = _scale(img.size, target, fit)
        decoded = decode_budget.pillow_bytes(img.mode, width, height)
        if img.mode in _SIXTEEN_BIT or (img.mode not in _REDUCIBLE and scale > 1):
            decoded += 2 * decode_budget.pillow_bytes("I", width, height)  # converted before reducing
    # The output and up to three copies of it (reduce, transpose, convert), Pillow's 4 bytes a pixel.
    return decoded + 4 * decode_budget.pillow_bytes("RGBA", -(-width // scale), -(-height // scale))
