"""The cheap header checks that stand between a camera's upload and the job queue."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from inference_server import demo_assets
from inference_server.ingest.validate import ImageInfo, ImageLimits, InvalidImage, inspect_image
from inference_server.models.ultralytics_backend import UltralyticsDetector

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


def test_broken_pixel_data_passes_the_header_check_for_the_decoder_to_catch() -> None:
    # Only headers are read here; detect's full decode quarantines this one (test_bad_input).
    corrupt = broken_huffman_jpeg(demo_assets.image("bus.jpg").read_bytes())
    assert inspect_image(corrupt, LIMITS) == ImageInfo("image/jpeg", 810, 1080)
