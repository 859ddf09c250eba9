"""Cheap checks that an upload is a whole, sane JPEG or PNG, before it becomes a job.

``inspect_image`` parses headers only (size, pixel count, aspect ratio); ``check_pixels`` then
reads all of the picture's data in bounded memory: a JPEG decoded at 1/8 scale by libjpeg-turbo
(simplejpeg, strict: a JPEG cut short with an end marker appended is refused, which Pillow and
OpenCV both decode silently as grey), a PNG's compressed stream inflated piece by piece and
counted, never held whole. Either refusal is raised as ``InvalidImage``.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import simplejpeg
from PIL import ImageFile, JpegImagePlugin, PngImagePlugin

from inference_server import jpeg
from inference_server.decode_budget import DecodeBudget, jpeg_coefficient_bytes

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
    #: Longest side over shortest side: a 32x65000 strip is no camera picture, and the detector's
    #: letterbox would scale its short side to 0 pixels.
    max_aspect_ratio: float = 20.0


_EXIF_ORIENTATION = 0x0112


@dataclass(frozen=True, slots=True)
class ImageInfo:
    media_type: str
    width: int
    height: int
    #: A progressive (multi-scan) JPEG: decoding it holds every DCT coefficient, at any scale.
    progressive: bool = field(default=False, compare=False)
    #: Pillow's mode for the picture as stored ("RGB" for a YCbCr JPEG, "L", "CMYK", ...).
    mode: str = field(default="", compare=False)
    #: Stored upright: no EXIF orientation other than 1 (nothing to turn before detection).
    upright: bool = field(default=True, compare=False)


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
            orientation = img.getexif().get(_EXIF_ORIENTATION, 1) if media_type == "image/jpeg" else 1
            if orientation in (5, 6, 7, 8):
                width, height = height, width
            progressive = bool(img.info.get("progressive"))
            mode = img.mode
    except (OSError, SyntaxError, ValueError) as err:
        raise InvalidImage("corrupt_image", f"unreadable header: {err}") from err
    if width * height > limits.max_pixels:
        raise InvalidImage("too_many_pixels", f"{width}x{height} = {width * height} pixels > limit {limits.max_pixels}")
    if min(width, height) < limits.min_side:
        raise InvalidImage("too_small", f"{width}x{height} < {limits.min_side} px")
    if max(width, height) > limits.max_aspect_ratio * min(width, height):
        raise InvalidImage(
            "bad_aspect_ratio", f"{width}x{height} is longer than {limits.max_aspect_ratio:g}:1 (no camera picture)"
        )
    if media_type == "image/jpeg" and not data.rstrip(b"\x00").endswith(b"\xff\xd9"):
        raise InvalidImage("truncated", "JPEG has no end-of-image marker")
    if media_type == "image/png" and not data.endswith(_PNG_IEND):
        raise InvalidImage("truncated", "PNG has no IEND chunk")
    return ImageInfo(media_type, width, height, progressive, mode, orientation == 1)


def decodes_as_rgbx(info: ImageInfo) -> bool:
    """Whether libjpeg-turbo decodes the picture straight to what detection sees: a YCbCr or grey
    JPEG stored upright (``check_pixels`` can then decode it ``into`` the detect worker's array;
    the worker's own decode takes the same path: ``pipeline/decode.py`` ``decode_picture``)."""
    return info.media_type == "image/jpeg" and info.mode in ("RGB", "L") and info.upright


def check_pixels(data: bytes, info: ImageInfo, budget: DecodeBudget, into: npt.NDArray[np.uint8] | None = None) -> None:
    """Read all of an inspected image's data, in bounded memory: refuses (``InvalidImage``) one
    whose data ends early (``truncated``, also behind a forged end marker) or cannot be decoded
    (``corrupt_image``). A JPEG's decode takes its memory from ``budget`` first.

    ``into`` (a JPEG that ``decodes_as_rgbx``): an RGBX array of the size of a DCT scale of the
    picture (1, 1/2, 1/4, 1/8), which the check decodes the picture into, as strictly as at 1/8:
    the same entropy decode, so the same refusals; the detect worker then does not decode it again."""
    if into is not None and (into.ndim != 3 or into.shape[2] != 4 or not decodes_as_rgbx(info)):
        raise ValueError(f"a {info.mode} {info.media_type} is not decoded into a {into.shape} RGBX array")
    if info.media_type == "image/jpeg":
        _check_jpeg(data, info, budget, into)
    else:
        _check_png(data)


# libjpeg's warnings for data that stops before the picture is complete (JWRN_HIT_MARKER, JWRN_JPEG_EOF).
_JPEG_CUT_SHORT = ("premature end of data segment", "premature end of jpeg file")


def _check_jpeg(data: bytes, info: ImageInfo, budget: DecodeBudget, into: npt.NDArray[np.uint8] | None) -> None:
    # min_height/min_width 1: libjpeg-turbo's smallest scale, 1/8 (inverse DCT of the DC term only).
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data, min_height=1, min_width=1)
    except ValueError as err:
        raise InvalidImage("corrupt_image", f"cannot be decoded: {err}") from err
    target = {"CMYK": "CMYK", "YCCK": "CMYK", "Gray": "GRAY"}.get(colorspace, "RGB")
    bands = {"CMYK": 4, "GRAY": 1}.get(target, 3)
    need = int(width) * int(height) * bands
    if into is not None:
        need, bands = into.nbytes, 3
    if info.progressive:
        need += jpeg_coefficient_bytes(info.width, info.height, bands)
    with budget.hold(need):
        try:
            if into is None:
                jpeg.decode_strict(data, colorspace=target, min_height=1, min_width=1)
            else:
                jpeg.decode_into(data, into)
        except ValueError as err:
            message = str(err)
            if any(cut in message.lower() for cut in _JPEG_CUT_SHORT):
                raise InvalidImage("truncated", f"JPEG data ends early: {message}") from err
            raise InvalidImage("corrupt_image", f"cannot be decoded: {message}") from err


_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # by colour type: grey, RGB, palette, grey+alpha, RGBA
# Adam7 passes: first column, first row, column step, row step.
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
_INFLATE_STEP = 1024 * 1024  # at most this much inflated data exists at once


def _check_png(data: bytes) -> None:
    """Inflate every IDAT chunk's data (CRC checked) 1 MiB at a time, discarding it, and count:
    the stream must hold every row of the picture, each starting with a valid filter type.
    Pillow cannot decode a PNG at a reduced size; this reads it all without holding it."""
    width, height, depth, colour, interlace = struct.unpack(">IIBBxxB", data[16:29])
    bits = depth * _PNG_CHANNELS.get(colour, 4)
    if interlace:
        passes = [((width - x0 + dx - 1) // dx, (height - y0 + dy - 1) // dy) for x0, y0, dx, dy in _ADAM7]
        expected = sum(rows * (1 + (cols * bits + 7) // 8) for cols, rows in passes if cols and rows)
        stride = 0  # rows differ in length between passes: only the total is checked
    else:
        stride = 1 + (width * bits + 7) // 8
        expected = height * stride
    inflater = zlib.decompressobj()
    produced = 0
    pos = 8
    while pos + 12 <= len(data) and produced < expected:
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        end = pos + 8 + length
        if end + 4 > len(data):
            raise InvalidImage("truncated", f"PNG chunk {kind!r} runs past the end of the file")
        if kind == b"IDAT":
            chunk = data[pos + 8 : end]
            if zlib.crc32(data[pos + 4 : end]) != struct.unpack(">I", data[end : end + 4])[0]:
                raise InvalidImage("corrupt_image", "PNG image data fails its checksum")
            while chunk and produced < expected:
                try:
                    rows = inflater.decompress(chunk, _INFLATE_STEP)
                except zlib.error as err:
                    raise InvalidImage("corrupt_image", f"PNG image data cannot be inflated: {err}") from err
                if stride and rows and max(rows[(-produced) % stride :: stride], default=0) > 4:
                    raise InvalidImage("corrupt_image", "PNG row with an unknown filter type")
                produced += len(rows)
                chunk = inflater.unconsumed_tail
        elif kind == b"IEND":
            break
        pos = end + 4
    if produced < expected:
        raise InvalidImage("truncated", f"PNG image data ends early ({produced} of {expected} bytes)")


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
