"""Decoding at the size the model needs (issue 20): a 16:9 camera frame is letterboxed by the model
to 640 on its longer side, so decoding its JPEG at half scale (the DCT does it) loses nothing the
model sees, and costs a fraction of a full decode. Face crops and snapshots keep both sides ≥ 640.
Real pictures and the real yolo11n-pose model."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import ExifTags, Image

from inference_server import demo_assets
from inference_server.buffers import ArrayPool
from inference_server.config import Settings
from inference_server.detection.ultralytics_backend import UltralyticsDetector
from inference_server.domain import Detection
from inference_server.pipeline import snapshot as snapshot_module
from inference_server.pipeline.decode import DecodeError, Picture, PictureReleased, decode, decode_picture
from inference_server.pipeline.snapshot import Snapshot, render


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


# --- the detect worker's decode: pixels, a JPEG straight into a reused array ---------------------


@pytest.mark.parametrize(
    ("size", "letterbox", "cover"),
    [
        ((1280, 720), (640, 360), (1280, 720)),
        ((1920, 1080), (960, 540), (1920, 1080)),
        ((3840, 2160), (960, 540), (1920, 1080)),
        ((720, 1280), (360, 640), (720, 1280)),
        ((640, 480), (640, 480), (640, 480)),
        ((1001, 563), (1001, 563), (1001, 563)),  # odd sizes: no DCT scale keeps 640
        ((2561, 1441), (641, 361), (1281, 721)),  # 1/4 keeps the longer side at 641 (Pillow's draft: 1/2)
    ],
)
def test_the_pixels_are_libjpeg_turbos_at_the_scale_the_fit_allows(
    tmp_path: Path, size: tuple[int, int], letterbox: tuple[int, int], cover: tuple[int, int]
) -> None:
    """The same DCT scales as ``decode`` (never below the fit) and the same pixels as Pillow's
    decode at that scale: the same libjpeg-turbo arithmetic, without Pillow's image around it."""
    path = _jpeg(tmp_path, size)
    for fit, expected in (("letterbox", letterbox), ("cover", cover)):
        picture = decode_picture(path, 640, fit=fit)  # type: ignore[arg-type]
        assert picture.size == expected and picture.pixels.shape == (expected[1], expected[0], 3)
        assert picture.pixels.dtype == np.uint8
        scale = round(size[0] / expected[0])
        with Image.open(path) as pillow:
            pillow.draft("RGB", (size[0] // scale, size[1] // scale))
            assert pillow.size == expected
            assert np.array_equal(picture.pixels, np.asarray(pillow.convert("RGB")))


@pytest.mark.parametrize("kind", ["grey", "progressive", "padded"])
def test_grey_progressive_and_padded_jpegs_come_back_rgb_as_pillow_decodes_them(tmp_path: Path, kind: str) -> None:
    """A grey JPEG as RGB, a progressive one, and one a camera padded before its end marker (the
    libjpeg warning ingest tolerates too)."""
    source = Image.open(demo_assets.image("zidane.jpg")).convert("RGB")
    path = tmp_path / f"{kind}.jpg"
    buf = io.BytesIO()
    (source.convert("L") if kind == "grey" else source).save(buf, "JPEG", quality=90, progressive=kind == "progressive")
    data = buf.getvalue()
    if kind == "padded":
        data = data[:-2] + b"\x00\x00\x00" + data[-2:]  # extraneous bytes before the EOI marker
    path.write_bytes(data)
    picture = decode_picture(path, 640)
    assert picture.pixels.shape == (720, 1280, 3)
    assert np.array_equal(picture.pixels, np.asarray(decode(path, 640)))


def test_pictures_pillow_decodes_are_the_same_pixels(tmp_path: Path) -> None:
    """A PNG, a CMYK JPEG and one to turn upright go through ``decode``: the same picture."""
    stored = Image.open(demo_assets.image("zidane.jpg")).convert("RGB")
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    paths = [tmp_path / "frame.png", tmp_path / "cmyk.jpg", tmp_path / "turned.jpg"]
    stored.save(paths[0])
    stored.convert("CMYK").save(paths[1], quality=90)
    stored.save(paths[2], quality=90, exif=exif.tobytes())
    for path in paths:
        picture = decode_picture(path, 640)
        assert np.array_equal(picture.pixels, np.asarray(decode(path, 640))), path.name
    assert decode_picture(paths[2], 640).size == (720, 1280)


def test_a_pooled_picture_goes_back_once_and_is_unreadable_after(tmp_path: Path) -> None:
    """Released, the array is the next picture's (no fresh mapping), and the released picture
    refuses to be read rather than show that other picture."""
    pool = ArrayPool(64 << 20, np.uint8)
    path = _jpeg(tmp_path, (1280, 720))
    first = decode_picture(path, 640, pool=pool)
    rgbx = first.rgbx()
    assert rgbx is not None and rgbx.shape == (720, 1280, 4)  # RGBX, Pillow's layout
    array = first.pixels.base  # the pool's block
    assert isinstance(array, np.ndarray) and np.shares_memory(array, rgbx)
    first.release()
    first.release()  # twice: given back once
    assert first.released
    with pytest.raises(PictureReleased):
        _ = first.pixels
    with pytest.raises(PictureReleased):
        first.image()
    second = decode_picture(path, 640, pool=pool)
    assert second.pixels.base is array and pool.reused == 1 and pool.made == 1
    assert np.array_equal(second.pixels, np.asarray(decode(path, 640)))
    third = decode_picture(path, 640, pool=pool)  # the second still holds its array
    assert third.pixels.base is not array and pool.made == 2
    mapped = second.image()  # Pillow's view of the same memory: no copy
    assert mapped.mode == "RGBX" and np.array_equal(np.asarray(mapped.convert("RGB")), second.pixels)


def test_a_picture_of_no_pool_stays_readable() -> None:
    pixels = np.zeros((4, 6, 3), dtype=np.uint8)
    picture = Picture(pixels)
    picture.release()
    assert not picture.released and picture.pixels.base is pixels and picture.size == (6, 4)
    assert np.array_equal(np.asarray(picture.image()), pixels)
    with pytest.raises(ValueError, match="uint8"):
        Picture(np.zeros((4, 6), dtype=np.uint8))


def test_a_stored_file_damaged_since_ingest_is_a_decode_error(tmp_path: Path) -> None:
    """The check at the door read every byte; a file changed on disk since is refused clearly."""
    path = _jpeg(tmp_path, (1280, 720))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] + b"\xff\xd9")  # cut short behind a forged end marker
    with pytest.raises(DecodeError, match="ValueError"):
        decode_picture(path, 640)
    path.write_bytes(b"not a picture")
    with pytest.raises(DecodeError):
        decode_picture(path, 640)
    path.unlink()
    with pytest.raises(FileNotFoundError):
        decode_picture(path, 640)


async def test_a_snapshot_whose_picture_was_released_is_drawn_from_the_stored_file(
    tmp_path: Path, make_settings: Callable[..., Settings]
) -> None:
    """The array went back to the pool (its batch stored) before the snapshot was asked for: it is
    drawn from the file, not from whatever picture the array holds now, and is the same JPEG."""
    settings = make_settings()
    path = _jpeg(tmp_path, (1280, 720))
    boxes = [Detection("person", 0.9, (0.1, 0.1, 0.5, 0.9))]
    pool = ArrayPool(64 << 20, np.uint8)
    kept = decode_picture(path, 640, pool=pool)
    from_memory = await Snapshot(settings, "porch", 1, path, boxes, kept).jpeg()
    released = decode_picture(path, 640, pool=pool)
    late = Snapshot(settings, "porch", 2, path, boxes, released)
    released.release()
    other = decode_picture(_jpeg(tmp_path, (1280, 720), "other.jpg"), 640, pool=pool)
    other.pixels[:] = 0  # the array is another picture's now
    assert await late.jpeg() == from_memory


def test_a_snapshot_is_drawn_on_a_reused_copy_and_leaves_the_picture_as_it_was(tmp_path: Path) -> None:
    """Drawn from the picture's RGBX pixels, copied into a reused canvas: the same JPEG as drawn
    on a Pillow image of the same picture, the picture untouched, the canvas taken again next."""
    path = _jpeg(tmp_path, (1280, 720))
    picture = decode_picture(path, 640)
    before = picture.pixels.copy()
    boxes = [Detection("person", 0.9, (0.1, 0.1, 0.5, 0.9)), Detection("dog", 0.6, (0.6, 0.5, 0.9, 0.95))]
    reused = snapshot_module._CANVASES.reused
    jpeg = render(picture, boxes)
    assert jpeg == render(decode(path, 640), boxes)
    assert np.array_equal(picture.pixels, before)
    assert render(picture, boxes) == jpeg and snapshot_module._CANVASES.reused > reused
