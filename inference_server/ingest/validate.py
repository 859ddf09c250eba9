"""Cheap checks that an upload is a whole, sane JPEG or PNG, before it becomes a job.

Only headers are parsed here (no pixel decode); the detect stage decodes and
dead-letters the rare file whose header is fine but whose data is not.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import ImageFile, JpegImagePlugin, PngImagePlugin

# The only two parsers that ever see uploaded bytes, picked by signature and called directly.
# Not Image.open: it tries every format Pillow knows (a wider attack surface), names a JPEG
# with a multi-picture segment "MPO", and other libraries replace it (ultralytics' wrapper,
# active once the detector is imported, tries to pip-install pi-heif for any unidentified
# file and raises ImportError when offline).
_PARSERS: tuple[tuple[bytes, type[ImageFile.ImageFile], str], ...] = (
    (b"\xff\xd8\xff", JpegImagePlugin.JpegImageFile, "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", PngImagePlugin.PngImageFile, "image/png"),
)
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


_EXIF_ORIENTATION = 0x0112


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
    found = next(((parser, media) for magic, parser, media in _PARSERS if data.startswith(magic)), None)
    if found is None:
        other = _other_format(data)
        if other is not None:
            raise InvalidImage("unsupported_format", f"{other} (JPEG and PNG are accepted)")
        raise InvalidImage("not_an_image", "not a recognisable image")
    parser, media_type = found
    try:
        with parser(io.BytesIO(data)) as img:
            width, height = img.size
            # Stored as it will be seen: a camera mounted sideways tags (EXIF 5–8) instead of rotating,
            # and the detect stage turns the picture upright before detection. JPEG only: its EXIF
            # sits in the header already read (a PNG's eXIf chunk may lie past a truncation).
            if media_type == "image/jpeg" and img.getexif().get(_EXIF_ORIENTATION, 1) in (5, 6, 7, 8):
                width, height = height, width
    except (OSError, SyntaxError, ValueError) as err:
        raise InvalidImage("corrupt_image", f"unreadable header: {err}") from err
    if width * height > limits.max_pixels:
        raise InvalidImage("too_many_pixels", f"{width}x{height} = {width * height} pixels > limit {limits.max_pixels}")
    if min(width, height) < limits.min_side:
        raise InvalidImage("too_small", f"{width}x{height} < {limits.min_side} px")
    if media_type == "image/jpeg" and not data.rstrip(b"\x00").endswith(b"\xff\xd9"):
        raise InvalidImage("truncated", "JPEG has no end-of-image marker")
    if media_type == "image/png" and not data.endswith(_PNG_IEND):
        raise InvalidImage("truncated", "PNG has no IEND chunk")
    return ImageInfo(media_type, width, height)


def _other_format(data: bytes) -> str | None:
    """Image formats that are not accepted, recognised only to say so in the refusal."""
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data[4:8] == b"ftyp":
        return "HEIF/AVIF/MP4"
    if data[:2] == b"BM" and data[6:10] == b"\x00\x00\x00\x00":
        return "BMP"
    return None
