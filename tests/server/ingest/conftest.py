"""Bad inputs made from real images: the files cameras, disks and attackers really produce."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import pytest
from PIL import Image

_SOI = b"\xff\xd8"
_DHT = 0xC4
_SOS = 0xDA


def with_comment(jpeg: bytes, text: str) -> bytes:
    """The same picture with different bytes (a COM segment after SOI), as two shots of one scene."""
    body = text.encode()
    return _SOI + b"\xff\xfe" + struct.pack(">H", len(body) + 2) + body + jpeg[2:]


def broken_huffman_jpeg(jpeg: bytes) -> bytes:
    """``jpeg`` with its first Huffman table made impossible; header and end marker stay intact.

    The 16 code-length counts become 255 each (4080 codes, more than 8 bits can hold):
    Pillow still reads the size from the header, but libjpeg refuses the table with a fatal
    "Bogus Huffman table" error when the pixels are decoded. Garbling the entropy-coded data
    instead does not work: libjpeg only warns about bad codes and returns a (grey) picture.
    """
    data = bytearray(jpeg)
    pos = 2
    while data[pos + 1] != _SOS:
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if data[pos + 1] == _DHT:
            data[pos + 5 : pos + 21] = b"\xff" * 16  # after marker, length and table class/id
            return bytes(data)
        pos += 2 + length
    raise ValueError("no Huffman table before the scan")


def cut_in_half(data: bytes) -> bytes:
    """An upload that stopped half way (camera lost power or network)."""
    return data[: len(data) // 2]


def encoded(size: tuple[int, int], fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (90, 120, 150)).save(buf, fmt)
    return buf.getvalue()


@pytest.fixture(scope="session")
def jpeg_bomb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real, valid 20000x20000 JPEG (400 Mpx, 4.7 MB): a decompression bomb.

    Encoded with Pillow (about 1 s and 400 MB of memory once per session), so its SOF, tables
    and entropy-coded data are all genuine rather than a small JPEG with a patched header.
    """
    path = tmp_path_factory.mktemp("bomb") / "bomb.jpg"
    with Image.new("L", (20_000, 20_000)) as img:
        img.save(path, "JPEG")
    return path
