"""Writes the hostile-input corpus next to this file, and ``manifest.json`` with each file's
documented outcome per ingest path (docs/guarantees.md, "Hostile input").

Run ``python tests/data/hostile/generate.py`` to regenerate; the files are committed (about
700 kB: the decompression bomb is a real JPEG header declaring 20000x20000, not 400 Mpx; the
6300x6300 RGBA PNG, one flat colour, is 170 kB and 159 MB decoded).
Every picture is made from the committed demo image ``zidane.jpg`` (two people), scaled down
(or stretched, for the strips).
"""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path

from PIL import Image

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]


def _base() -> Image.Image:
    from inference_server import demo_assets

    with Image.open(demo_assets.image("zidane.jpg")) as img:
        return img.convert("RGB").resize((640, 360))


def _save(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _segments_until_sos(data: bytes) -> list[tuple[int, int]]:
    out, pos = [], 2
    while data[pos + 1] != 0xDA:
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        out.append((data[pos + 1], pos))
        pos += 2 + length
    return out


def bomb(jpeg: bytes, width: int = 20000, height: int = 20000) -> bytes:
    """The same small JPEG with its frame header (SOF0, or SOF2 if progressive) claiming
    ``width``x``height`` pixels: a few hundred bytes that decode to as many pixels as they say."""
    data = bytearray(jpeg)
    for marker, pos in _segments_until_sos(jpeg):
        if marker in (0xC0, 0xC2):
            data[pos + 5 : pos + 9] = struct.pack(">HH", height, width)
            return bytes(data)
    raise ValueError("no SOF0/SOF2")


def cut_with_end_marker(jpeg: bytes) -> bytes:
    """Half a JPEG with an end-of-image marker appended: passes a check of the file's last bytes."""
    return jpeg[: len(jpeg) // 2] + b"\xff\xd9"


def big_flat_png(tag: str = "") -> bytes:
    """6300x6300 RGBA (39.7 Mpx, under the default 40 Mpx limit), one colour: 170 kB that decode
    to 159 MB. ``tag`` (a text chunk) makes distinct files of the same picture."""
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    if tag:
        info.add_text("Comment", tag)
    return _save(Image.new("RGBA", (6300, 6300), (90, 120, 150, 255)), "PNG", optimize=True, pnginfo=info)


def strip(img: Image.Image, size: tuple[int, int], fmt: str) -> bytes:
    """A strip far longer than any camera's frame, in the picture's mean colour (flat: small files)."""
    return _save(Image.new("RGB", size, img.resize((1, 1)).getpixel((0, 0))), fmt)


def broken_huffman(jpeg: bytes) -> bytes:
    data = bytearray(jpeg)
    for marker, pos in _segments_until_sos(jpeg):
        if marker == 0xC4:
            data[pos + 5 : pos + 21] = b"\xff" * 16
            return bytes(data)
    raise ValueError("no DHT")


def build() -> dict[str, bytes]:
    img = _base()
    jpeg = _save(img, "JPEG", quality=80)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90° clockwise to view
    rotated = _save(img.transpose(Image.Transpose.ROTATE_90), "JPEG", quality=80, exif=exif.tobytes())
    big_exif = Image.Exif()
    big_exif[0x010E] = "A" * 60000  # ImageDescription: one APP1 segment near its 64 kB maximum
    small = img.resize((320, 180))  # lossless formats: kept small for the repository
    grey16 = small.convert("L").convert("I").point(lambda v: v * 257).convert("I;16")
    return {
        "good.jpg": jpeg,
        "corrupt.jpg": broken_huffman(jpeg),
        "truncated.jpg": jpeg[: len(jpeg) // 2],
        "empty.jpg": b"",
        "wrong_magic.jpg": b"MOTION ALARM channel=1\n",
        "png_named.jpg": _save(small, "PNG"),
        "webp_named.jpg": _save(img, "WEBP", quality=60),
        "gif_named.jpg": _save(small.convert("P"), "GIF"),
        "bomb_20000x20000.jpg": bomb(jpeg),
        "exif_rotated.jpg": rotated,
        "cmyk.jpg": _save(img.convert("CMYK"), "JPEG", quality=80),
        "grey16.png": _save(grey16, "PNG"),
        "huge_exif.jpg": _save(img, "JPEG", quality=80, exif=big_exif.tobytes()),
        "cut_with_end_marker.jpg": cut_with_end_marker(jpeg),
        "declares_6000x6000.jpg": bomb(_save(img.resize((32, 32)), "JPEG", quality=50), 6000, 6000),
        "progressive_declares_6000x6000.jpg": bomb(
            _save(img.resize((32, 32)), "JPEG", quality=50, progressive=True), 6000, 6000
        ),
        "rgba_6300x6300.png": big_flat_png(),
        "strip_32x65000.jpg": strip(img, (32, 65000), "JPEG"),
        "strip_65000x32.jpg": strip(img, (65000, 32), "JPEG"),
        "strip_32x200000.png": strip(small, (32, 200000), "PNG"),
    }


#: name -> (folder and MQTT outcome: "processed" or the quarantine reason, REST: HTTP status, code or None)
OUTCOMES: dict[str, tuple[str, int, str | None]] = {
    "good.jpg": ("processed", 202, None),
    "corrupt.jpg": ("corrupt_image", 400, "corrupt_image"),  # refused at the door on every path
    "truncated.jpg": ("truncated", 400, "truncated"),
    "empty.jpg": ("empty_file", 400, "empty_file"),
    "wrong_magic.jpg": ("not_an_image", 415, "not_an_image"),
    "png_named.jpg": ("processed", 202, None),  # the content decides, not the name
    "webp_named.jpg": ("unsupported_format", 415, "unsupported_format"),
    "gif_named.jpg": ("unsupported_format", 415, "unsupported_format"),
    "bomb_20000x20000.jpg": ("too_many_pixels", 413, "too_many_pixels"),  # header only, never decoded
    "exif_rotated.jpg": ("processed", 202, None),  # decoded upright (EXIF orientation applied)
    "cmyk.jpg": ("processed", 202, None),  # converted to RGB
    "grey16.png": ("processed", 202, None),  # scaled to 8 bits, not clipped to white
    "huge_exif.jpg": ("processed", 202, None),
    "cut_with_end_marker.jpg": ("truncated", 400, "truncated"),  # the end marker is forged
    "declares_6000x6000.jpg": ("truncated", 400, "truncated"),  # 700 bytes: the data ends long before
    "progressive_declares_6000x6000.jpg": ("truncated", 400, "truncated"),
    "rgba_6300x6300.png": ("processed", 202, None),  # decoded within the decode budget, then reduced
    "strip_32x65000.jpg": ("bad_aspect_ratio", 400, "bad_aspect_ratio"),
    "strip_65000x32.jpg": ("bad_aspect_ratio", 400, "bad_aspect_ratio"),
    "strip_32x200000.png": ("bad_aspect_ratio", 400, "bad_aspect_ratio"),
}


def main() -> None:
    files = build()
    assert files.keys() == OUTCOMES.keys()
    for name, data in files.items():
        (HERE / name).write_bytes(data)
    manifest = {
        name: {"folder": outcome, "mqtt": outcome, "rest": {"status": status, "error": code}}
        for name, (outcome, status, code) in OUTCOMES.items()
    }
    (HERE / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(ROOT))
    main()
