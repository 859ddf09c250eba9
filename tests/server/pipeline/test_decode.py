"""Decoding at the size the model needs (issue 20): a 16:9 camera frame is letterboxed by the model
to 640 on its longer side, so decoding its JPEG at half scale (the DCT does it) loses nothing the
model sees, and costs a fraction of a full decode. Face crops and snapshots keep both sides ≥ 640.
Real pictures and the real yolo11n-pose model."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import ExifTags, Image

from inference_server import demo_assets
from inference_server.detection.ultralytics_backend import UltralyticsDetector
from inference_server.pipeline.decode import decode


def _jpeg(tmp_path: Path, size: tuple[int, int], name: str = "frame.jpg") -> Path:
    picture = Image.open(demo_assets.image("zidane.jpg")).convert("RGB").resize(size)
    path = tmp_path / name
    buf = io.BytesIO()
    picture.save(buf, "JPEG", quality=90)
    path.write_bytes(buf.getvalue())
    return path


@pytest.mark.parametrize(
    ("size", "letterbox", "cover"),
    [
        ((1280, 720), (640, 360), (1280, 720)),
        ((1920, 1080), (960, 540), (1920, 1080)),
        ((3840, 2160), (960, 540), (1920, 1080)),
        ((720, 1280), (360, 640), (720, 1280)),  # a camera mounted upright
        ((640, 480), (640, 480), (640, 480)),  # never upscaled, never below the model size
    ],
)
def test_jpeg_is_decoded_at_the_dct_scale_the_fit_allows(
    tmp_path: Path, size: tuple[int, int], letterbox: tuple[int, int], cover: tuple[int, int]
) -> None:
    path = _jpeg(tmp_path, size)
    assert decode(path, 640, fit="letterbox").size == letterbox
    assert decode(path, 640, fit="cover").size == cover
    assert decode(path, 640).size == cover  # the default keeps both sides


def test_png_is_reduced_by_the_largest_whole_factor_of_the_fit(tmp_path: Path) -> None:
    path = tmp_path / "frame.png"
    Image.open(demo_assets.image("zidane.jpg")).convert("RGB").resize((1920, 1080)).save(path)
    assert decode(path, 640, fit="letterbox").size == (640, 360)
    assert decode(path, 640, fit="cover").size == (1920, 1080)


def test_the_model_finds_the_same_people_in_the_letterbox_decode(
    tmp_path: Path, pose_detector: UltralyticsDetector
) -> None:
    path = _jpeg(tmp_path, (1920, 1080))
    small, full = decode(path, 640, fit="letterbox"), decode(path, 640, fit="cover")
    found_small, found_full = pose_detector.detect([pose_detector.prepare(small), pose_detector.prepare(full)])
    assert len(found_full) >= 2
    assert [d.label for d in found_small] == [d.label for d in found_full]
    for a, b in zip(sorted(found_small, key=lambda d: d.bbox), sorted(found_full, key=lambda d: d.bbox), strict=True):
        assert max(abs(x - y) for x, y in zip(a.bbox, b.bbox, strict=True)) < 0.02
        assert abs(a.confidence - b.confidence) < 0.05


RED, BLUE = (255, 0, 0), (0, 0, 255)


def _colour(picture: Image.Image, xy: tuple[int, int]) -> tuple[int, int, int]:
    """RED or BLUE, whichever the pixel is (JPEG moves a colour by a few levels)."""
    pixel = picture.getpixel(xy)
    assert isinstance(pixel, tuple)
    return min((RED, BLUE), key=lambda c: sum(abs(a - b) for a, b in zip(pixel, c, strict=True)))


@pytest.mark.parametrize("suffix", ["jpg", "png"])
@pytest.mark.parametrize(
    ("orientation", "size", "first", "last"),
    [
        (1, (1280, 720), RED, BLUE),  # upright: as stored, left to right
        (3, (1280, 720), BLUE, RED),  # a half turn
        (6, (720, 1280), RED, BLUE),  # a quarter turn clockwise: the stored left comes to the top
        (8, (720, 1280), BLUE, RED),  # a quarter turn anticlockwise
    ],
)
def test_a_camera_mounted_sideways_is_turned_upright_and_others_decoded_as_stored(
    tmp_path: Path,
    suffix: str,
    orientation: int,
    size: tuple[int, int],
    first: tuple[int, int, int],
    last: tuple[int, int, int],
) -> None:
    """EXIF orientation (cameras tag, not rotate). The picture comes back RGB and loaded, usable
    after its file is gone."""
    stored = Image.new("RGB", (1280, 720), RED)
    stored.paste(BLUE, (640, 0, 1280, 720))
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    path = tmp_path / f"frame.{suffix}"
    stored.save(path, exif=exif.tobytes())
    picture = decode(path, 640)
    path.unlink()
    assert picture.mode == "RGB" and picture.size == size
    # Along the longer side: the first and the last tenth.
    ends = ((100, 360), (1180, 360)) if size[0] > size[1] else ((360, 100), (360, 1180))
    assert (_colour(picture, ends[0]), _colour(picture, ends[1])) == (first, last)
