"""Writes the hostile-input corpus next to this file, and ``manifest.json`` with each file's
documented outcome per ingest path (docs/guarantees.md, "Hostile input").

Run ``python tests/data/hostile/generate.py`` to regenerate; the files are committed (about
400 kB: the decompression bomb is a real JPEG header declaring 20000x20000, not 400 Mpx).
Every picture is made from the committed demo image ``zidane.jpg`` (two people), scaled down.
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


def bomb(jpeg: bytes) -> bytes:
    """The same small JPEG with its frame header (SOF0) claiming 20000x20000 pixels."""
    data = bytearray(jpeg)
    for marker, pos in _segments_until_sos(jpeg):
        if marker == 0xC0:
            data[pos + 5 : pos + 9] = struct.pack(">HH", 20000, 20000)
            return bytes(data)
    raise ValueError("no SOF0")


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
    }


#: name -> (folder and MQTT outcome: "processed" or the quarantine reason, REST: HTTP status, code or None)
OUTCOMES: dict[str, tuple[str, int, str | None]] = {
    "good.jpg": ("processed", 202, None),
    "corrupt.jpg": ("corrupt_image", 400, "corrupt_image"),  # folder: found when decoded (job dead)
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
