"""Cheap checks that an upload is a whole, sane JPEG or PNG, before it becomes a job.

Only headers are parsed here (no pixel decode); the detect stage decodes and
dead-letters the rare file whose header is fine but whose data is not.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

_FORMATS = {"JPEG": "image/jpeg", "PNG": "image/png"}
_PNG_IEND = b"IEND\xaeB`\x82"


class InvalidImage(ValueError):
    """Refused input; ``reason`` is a stable machine-readable code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class ImageLimits:
    max_bytes: int
    max_pixels: int
    min_side: int


@dataclass(frozen=True, slots=True)
class ImageInfo:
    media_type: str
    width: int
    height: int


def inspect_image(data: bytes, limits: ImageLimits) -> ImageInfo:
    if not data:
        raise InvalidImage("empty_file", "0 bytes")
    if len(data) > limits.max_bytes:
        raise InvalidImage("too_large", f"{len(data)} bytes > limit {limits.max_bytes}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                fmt, (width, height) = img.format, img.size
    except Image.DecompressionBombError as err:
        raise InvalidImage("too_many_pixels", str(err)) from err
    except UnidentifiedImageError as err:
        raise InvalidImage("not_an_image", "not a recognisable image") from err
    except (OSError, SyntaxError, ValueError) as err:
        raise InvalidImage("corrupt_image", f"unreadable header: {err}") from err
    if fmt not in _FORMATS:
        raise InvalidImage("unsupported_format", f"{fmt} (JPEG and PNG are accepted)")
    if width * height > limits.max_pixels:
        raise InvalidImage(
            "too_many_pixels", f"{width}x{height} = {width * height} pixels > limit {limits.max_pixels}"
        )
    if min(width, height) < limits.min_side:
        raise InvalidImage("too_small", f"{width}x{height} < {limits.min_side} px")
    if fmt == "JPEG" and not data.rstrip(b"\x00").endswith(b"\xff\xd9"):
        raise InvalidImage("truncated", "JPEG has no end-of-image marker")
    if fmt == "PNG" and not data.endswith(_PNG_IEND):
        raise InvalidImage("truncated", "PNG has no IEND chunk")
    return ImageInfo(_FORMATS[fmt], width, height)
