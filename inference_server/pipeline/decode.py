"""Decoding a stored picture for the pipeline: RGB, upright, at about the size it is needed.

The model needs only its letterbox (the longer side at ``detector_imgsz``); face crops and the
annotated snapshot need more (both sides at that size or more). A JPEG is decoded straight at
the DCT scale that gives that (1/2, 1/4, 1/8: several times cheaper than a full decode), within
the process's decode memory budget (``decode_budget``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from PIL import ExifTags, Image, ImageOps

from inference_server import decode_budget
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
    try:
        # The file is ours to close, not Pillow's: the loaded picture outlives it as it is, where
        # ``with Image.open(path)`` would free its pixels on the way out and so need a copy.
        with open(path, "rb") as fh:
            img = Image.open(fh)
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
    except FileNotFoundError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise DecodeError(f"{type(err).__name__}: {err}") from err


_REDUCIBLE = frozenset({"L", "LA", "RGB", "RGBA", "I", "F", "CMYK"})


def _scale(size: tuple[int, int], target: int, fit: Fit = "cover") -> int:
    """The largest whole factor that keeps both sides (``cover``) or the longer side
    (``letterbox``) ≥ ``target`` (JPEG: a power of two, as draft)."""
    pick = min if fit == "cover" else max
    return max(1, pick(size[0] // target, size[1] // target))


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
        scale = next(s for s in (8, 4, 2, 1) if s <= _scale(img.size, target, fit))
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
