"""The cheap header checks that stand between a camera's upload and the job queue."""

from __future__ import annotations

import io
import struct
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from inference_server import demo_assets
from inference_server.decode_budget import DecodeBudget
from inference_server.detection.ultralytics_backend import UltralyticsDetector
from inference_server.ingest.validate import (
    ImageInfo,
    ImageLimits,
    InvalidImage,
    check_pixels,
    decodes_as_rgbx,
    inspect_image,
)
from inference_server.pipeline.decode import Fit, decode_picture, rgbx_shape

from .conftest import broken_huffman_jpeg, cut_in_half, encoded

# The server's defaults: 20 MiB, 40 Mpx, 32 px.
LIMITS = ImageLimits(max_bytes=20 * 1024 * 1024, max_pixels=40_000_000, min_side=32)


def refusal(data: bytes, limits: ImageLimits = LIMITS) -> str:
    with pytest.raises(InvalidImage) as refused:
        inspect_image(data, limits)
    return refused.value.reason


@pytest.mark.parametrize(
    ("name", "info"),
    [
        ("bus.jpg", ImageInfo("image/jpeg", 810, 1080)),
        ("zidane.jpg", ImageInfo("image/jpeg", 1280, 720)),
        ("rocket.jpg", ImageInfo("image/jpeg", 640, 427)),
        ("astronaut.png", ImageInfo("image/png", 512, 512)),
    ],
)
def test_real_photos_are_accepted_with_their_type_and_size(name: str, info: ImageInfo) -> None:
    assert inspect_image(demo_assets.image(name).read_bytes(), LIMITS) == info


def test_multi_picture_jpeg_is_accepted_as_jpeg() -> None:
    # A JPEG with an MPF segment (stereo and some camera models); Pillow's Image.open calls it "MPO".
    first, second = Image.new("RGB", (64, 48), "red"), Image.new("RGB", (64, 48), "green")
    buf = io.BytesIO()
    first.save(buf, "MPO", save_all=True, append_images=[second])
    assert inspect_image(buf.getvalue(), LIMITS) == ImageInfo("image/jpeg", 64, 48)


def test_jpeg_padded_with_zeros_after_its_end_marker_is_accepted() -> None:
    # Some cameras write into a pre-allocated file and leave the tail zeroed.
    padded = demo_assets.image("bus.jpg").read_bytes() + b"\x00" * 4096
    assert inspect_image(padded, LIMITS) == ImageInfo("image/jpeg", 810, 1080)


def test_empty_file_is_refused_as_empty() -> None:
    assert refusal(b"") == "empty_file"


@pytest.mark.parametrize(
    "data",
    [
        b"motion detected at 12:00\n",
        b"<html><body>404 Not Found</body></html>",
        b"BMW at the gate",
    ],
    ids=["text", "html-error-page", "text-starting-like-bmp"],
)
def test_bytes_that_are_no_image_are_refused_as_not_an_image(data: bytes) -> None:
    assert refusal(data) == "not_an_image"


def test_text_is_refused_as_not_an_image_while_the_detector_library_is_loaded(
    pose_detector: UltralyticsDetector,
) -> None:
    # ultralytics replaces PIL.Image.open with a wrapper that tries to pip-install pi-heif for
    # any unidentified file (ImportError offline); validation must not go through it.
    assert pose_detector is not None
    assert refusal(b"motion detected at 12:00\n") == "not_an_image"


@pytest.mark.parametrize("name", ["bus.jpg", "astronaut.png"])
def test_upload_cut_in_half_is_refused_as_truncated(name: str) -> None:
    assert refusal(cut_in_half(demo_assets.image(name).read_bytes())) == "truncated"


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(demo_assets.image("bus.jpg").read_bytes()[:170], id="cut-inside-the-header"),
        pytest.param(b"\xff\xd8\xff\xd9", id="markers-only"),
    ],
)
def test_jpeg_whose_header_gives_no_size_is_refused_as_corrupt(data: bytes) -> None:
    assert refusal(data) == "corrupt_image"


def test_file_over_the_byte_limit_is_refused_before_it_is_parsed() -> None:
    data = demo_assets.image("bus.jpg").read_bytes()
    limits = ImageLimits(max_bytes=len(data) - 1, max_pixels=LIMITS.max_pixels, min_side=32)
    assert refusal(data, limits) == "too_large"
    assert refusal(b"x" * len(data), limits) == "too_large"
    assert inspect_image(data, ImageLimits(len(data), LIMITS.max_pixels, 32)).width == 810


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(demo_assets.image("no_time_for_that_tiny.gif").read_bytes(), id="gif"),
        pytest.param(demo_assets.image("multipage.tif").read_bytes(), id="tiff"),
        pytest.param(encoded((64, 64), "WEBP"), id="webp"),
        pytest.param(encoded((64, 64), "BMP"), id="bmp"),
        pytest.param(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic", id="heic-header"),
    ],
)
def test_images_other_than_jpeg_and_png_are_refused_as_unsupported(data: bytes) -> None:
    assert refusal(data) == "unsupported_format"


@pytest.mark.parametrize("size", [(8, 8), (4000, 20)], ids=["8x8", "thin-strip"])
def test_images_too_small_to_show_anything_are_refused(size: tuple[int, int]) -> None:
    assert refusal(encoded(size, "JPEG")) == "too_small"


def test_decompression_bomb_is_refused_without_decoding_it(jpeg_bomb: Path) -> None:
    assert refusal(jpeg_bomb.read_bytes()) == "too_many_pixels"


def test_image_over_the_configured_pixel_limit_is_refused() -> None:
    # bus.jpg (810x1080 = 874,800 px) is far below Pillow's own bomb limit: the setting decides.
    limits = ImageLimits(max_bytes=LIMITS.max_bytes, max_pixels=810 * 1080 - 1, min_side=32)
    assert refusal(demo_assets.image("bus.jpg").read_bytes(), limits) == "too_many_pixels"


def test_broken_pixel_data_passes_the_header_check_and_fails_the_pixel_check() -> None:
    corrupt = broken_huffman_jpeg(demo_assets.image("bus.jpg").read_bytes())
    assert inspect_image(corrupt, LIMITS) == ImageInfo("image/jpeg", 810, 1080)
    assert pixel_refusal(corrupt) == "corrupt_image"


# --- aspect ratio ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "fmt"),
    [((32, 65000), "JPEG"), ((65000, 32), "JPEG"), ((32, 200000), "PNG"), ((661, 32), "PNG")],
    ids=["32x65000-jpeg", "65000x32-jpeg", "32x200000-png", "just-over-20-to-1"],
)
def test_strips_longer_than_the_aspect_ratio_limit_are_refused(size: tuple[int, int], fmt: str) -> None:
    # The detector's letterbox would scale the short side to 0 px (OpenCV: inv_scale_x > 0), five times.
    assert refusal(encoded(size, fmt)) == "bad_aspect_ratio"


def test_a_strip_at_the_aspect_ratio_limit_is_accepted_and_the_limit_is_a_setting() -> None:
    assert inspect_image(encoded((640, 32), "PNG"), LIMITS) == ImageInfo("image/png", 640, 32)
    wide = encoded((1920, 480), "JPEG")  # 4:1, e.g. a panorama camera
    narrow = ImageLimits(LIMITS.max_bytes, LIMITS.max_pixels, LIMITS.min_side, max_aspect_ratio=3)
    assert refusal(wide, narrow) == "bad_aspect_ratio"
    assert inspect_image(wide, LIMITS).width == 1920


# --- the pixel check: all of the data, read in bounded memory ----------------------------------

BUDGET = DecodeBudget(512 * 1024 * 1024)


def checked(data: bytes) -> ImageInfo:
    info = inspect_image(data, LIMITS)
    check_pixels(data, info, BUDGET)
    return info


def pixel_refusal(data: bytes) -> str:
    info = inspect_image(data, LIMITS)
    with pytest.raises(InvalidImage) as refused:
        check_pixels(data, info, BUDGET)
    return refused.value.reason


def _picture(mode: str = "RGB", size: tuple[int, int] = (320, 180)) -> Image.Image:
    with Image.open(demo_assets.image("zidane.jpg")) as img:
        return img.convert("RGB").resize(size).convert(mode)


def _saved(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(demo_assets.image("bus.jpg").read_bytes(), id="bus-jpeg"),
        pytest.param(demo_assets.image("astronaut.png").read_bytes(), id="astronaut-png"),
        pytest.param(_saved(_picture("CMYK"), "JPEG"), id="cmyk-jpeg"),
        pytest.param(_saved(_picture("L"), "JPEG"), id="grey-jpeg"),
        pytest.param(_saved(_picture(), "JPEG", progressive=True), id="progressive-jpeg"),
        pytest.param(_saved(_picture(), "PNG", interlace=1), id="interlaced-png"),
        pytest.param(_saved(_picture("P"), "PNG"), id="palette-png"),
        pytest.param(
            _saved(_picture("L").convert("I").point(lambda v: v * 257).convert("I;16"), "PNG"), id="16bit-png"
        ),
        pytest.param(_saved(_picture("1"), "PNG"), id="1bit-png"),
        pytest.param(_saved(_picture("LA"), "PNG"), id="grey-alpha-png"),
    ],
)
def test_whole_pictures_pass_the_pixel_check(data: bytes) -> None:
    assert checked(data).width > 0


def _padded_at_a_restart() -> bytes:
    """A 1280x720 JPEG with 64 zero bytes before its first restart marker (some cameras pad so)."""
    with_restarts = _saved(_picture(size=(1280, 720)), "JPEG", restart_marker_rows=1)
    at = with_restarts.index(b"\xff\xd1", with_restarts.index(b"\xff\xda"))
    return with_restarts[:at] + bytes(64) + with_restarts[at:]


def test_jpeg_with_extraneous_bytes_before_a_restart_marker_is_accepted() -> None:
    # Some cameras pad the scan at restart markers; libjpeg warns, but the picture is whole.
    assert checked(_padded_at_a_restart()) == ImageInfo("image/jpeg", 1280, 720)


@pytest.mark.parametrize("name", ["bus.jpg", "zidane.jpg"])
def test_jpeg_cut_in_half_with_an_end_marker_appended_is_refused_as_truncated(name: str) -> None:
    # The header check sees the end marker; Pillow and OpenCV decode it silently, grey at the bottom.
    forged = cut_in_half(demo_assets.image(name).read_bytes()) + b"\xff\xd9"
    assert inspect_image(forged, LIMITS).width > 0
    assert pixel_refusal(forged) == "truncated"


def test_progressive_jpeg_cut_with_an_end_marker_appended_is_refused_as_truncated() -> None:
    progressive = _saved(_picture(size=(1280, 720)), "JPEG", progressive=True)
    assert pixel_refusal(cut_in_half(progressive) + b"\xff\xd9") == "truncated"


def test_tiny_jpeg_declaring_6000x6000_is_refused_without_decoding_it_at_full_size() -> None:
    corpus = Path(__file__).resolve().parents[2] / "data" / "hostile"
    for name in ("declares_6000x6000.jpg", "progressive_declares_6000x6000.jpg"):
        data = (corpus / name).read_bytes()
        assert len(data) < 1000
        assert (inspect_image(data, LIMITS).width, pixel_refusal(data)) == (6000, "truncated"), name


def _png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    out, pos = [], 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        out.append((data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]))
        pos += 12 + length
    return out


def _png(chunks: list[tuple[bytes, bytes]]) -> bytes:
    body = b"".join(struct.pack(">I", len(d)) + k + d + struct.pack(">I", zlib.crc32(k + d)) for k, d in chunks)
    return b"\x89PNG\r\n\x1a\n" + body


def _with_idat(png: bytes, idat: bytes) -> bytes:
    chunks = [(k, d) for k, d in _png_chunks(png) if k != b"IDAT"]
    return _png([*chunks[:-1], (b"IDAT", idat), chunks[-1]])


def _idat(png: bytes) -> bytes:
    return b"".join(d for k, d in _png_chunks(png) if k == b"IDAT")


def test_png_cut_short_with_its_end_chunk_appended_is_refused_as_truncated() -> None:
    png = demo_assets.image("astronaut.png").read_bytes()
    idat = _idat(png)
    assert pixel_refusal(_with_idat(png, idat[: len(idat) // 2])) == "truncated"


def test_png_whose_image_data_is_garbled_is_refused_as_corrupt() -> None:
    png = _saved(_picture(), "PNG")
    raw = zlib.decompress(_idat(png))
    garbled = bytearray(_idat(png))
    garbled[len(garbled) // 2 : len(garbled) // 2 + 64] = bytes(64)
    assert pixel_refusal(_with_idat(png, bytes(garbled))) == "corrupt_image"  # CRC fixed, deflate broken
    bad_filter = bytearray(raw)
    bad_filter[0] = 9  # filter types are 0-4
    assert pixel_refusal(_with_idat(png, zlib.compress(bytes(bad_filter)))) == "corrupt_image"
    wrong_crc = bytearray(png)
    at = png.index(b"IDAT") + 10
    wrong_crc[at] ^= 0xFF
    assert pixel_refusal(bytes(wrong_crc)) == "corrupt_image"


# --- the check that decodes for the detect worker (one decode at the door) -----------------------


def _outcome(data: bytes, into: np.ndarray | None) -> str:
    info = inspect_image(data, LIMITS)
    try:
        check_pixels(data, info, BUDGET, into)
    except InvalidImage as refused:
        return refused.reason
    return "accepted"


_HOSTILE = Path(__file__).resolve().parents[2] / "data" / "hostile"


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(demo_assets.image("bus.jpg").read_bytes(), id="bus"),
        pytest.param(demo_assets.image("zidane.jpg").read_bytes(), id="zidane"),
        pytest.param(_saved(_picture("L"), "JPEG"), id="grey"),
        pytest.param(_saved(_picture(size=(1920, 1080)), "JPEG", progressive=True), id="progressive-1080p"),
        pytest.param(_padded_at_a_restart(), id="padded-at-a-restart"),
        pytest.param(cut_in_half(demo_assets.image("bus.jpg").read_bytes()) + b"\xff\xd9", id="cut-end-marker"),
        pytest.param(
            cut_in_half(_saved(_picture(size=(1280, 720)), "JPEG", progressive=True)) + b"\xff\xd9",
            id="progressive-cut-end-marker",
        ),
        pytest.param(broken_huffman_jpeg(demo_assets.image("bus.jpg").read_bytes()), id="broken-huffman"),
        pytest.param((_HOSTILE / "declares_6000x6000.jpg").read_bytes(), id="declares-6000x6000"),
        pytest.param((_HOSTILE / "cut_with_end_marker.jpg").read_bytes(), id="hostile-cut"),
        pytest.param((_HOSTILE / "corrupt.jpg").read_bytes(), id="hostile-corrupt"),
    ],
)
@pytest.mark.parametrize("fit", ["cover", "letterbox"])
def test_the_check_decoding_for_the_worker_accepts_and_refuses_as_the_eighth_scale_check(data: bytes, fit: Fit) -> None:
    """With the detect worker idle, the door decodes a JPEG into the worker's array at the
    model's scale instead of at 1/8: the same entropy decode, so every picture is accepted or
    refused for the same reason; an accepted one's pixels are exactly the worker's own decode."""
    info = inspect_image(data, LIMITS)
    assert decodes_as_rgbx(info)
    into = np.zeros(rgbx_shape((info.width, info.height), 640, fit), np.uint8)
    expected = _outcome(data, None)
    assert _outcome(data, into) == expected
    if expected == "accepted":
        with tempfile.NamedTemporaryFile(suffix=".jpg") as stored:
            stored.write(data)
            stored.flush()
            assert np.array_equal(into, decode_picture(Path(stored.name), 640, BUDGET, fit=fit).rgbx())


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(_saved(_picture("CMYK"), "JPEG"), id="cmyk"),
        pytest.param((_HOSTILE / "exif_rotated.jpg").read_bytes(), id="exif-rotated"),
        pytest.param(demo_assets.image("astronaut.png").read_bytes(), id="png"),
    ],
)
def test_pictures_the_worker_decodes_otherwise_are_not_decoded_for_it(data: bytes) -> None:
    """A CMYK JPEG, one to turn upright, a PNG: the worker's decode goes through Pillow for them
    (``decode_picture``), so the door only checks them, as before."""
    info = inspect_image(data, LIMITS)
    assert not decodes_as_rgbx(info)
    with pytest.raises(ValueError, match="is not decoded into"):
        check_pixels(data, info, BUDGET, np.zeros((8, 8, 4), np.uint8))
