"""Annotated snapshots: the image with its detections boxed and labelled, as JPEG.

A snapshot is drawn only when something uses it: when it is published on the camera's snapshot
topic (at most once per ``snapshot_publish_interval_s``) or when its image becomes an event's
picture (``ensure``), not for every image with a detection; only an event's picture is written
to a file (``snapshots/<camera>/<image id>.jpg``). It is drawn from the stored file,
decoded with both sides at ``detector_imgsz`` or more (the model's own decode may be smaller:
``pipeline/decode.py``), or from the decoded picture in memory when that is as large.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import asyncpg
import numpy as np
from PIL import Image, ImageDraw

from inference_server import decode_budget
from inference_server.buffers import ArrayPool
from inference_server.config import Settings
from inference_server.domain import Detection
from inference_server.pipeline.decode import Picture, decode
from inference_server.telemetry import metrics

log = logging.getLogger(__name__)

_COLOURS = {
    "person": (230, 57, 70),
    "vehicle": (69, 123, 157),
    "animal": (42, 157, 143),
    "object": (244, 162, 97),
}


def snapshot_file(settings: Settings, camera_id: str, image_id: int) -> Path:
    """Where the annotated snapshot of ``image_id`` is written (and the event row points)."""
    return settings.snapshots_path / camera_id / f"{image_id}.jpg"


#: Canvases for snapshots drawn from a picture in memory, reused (a 1080p one is 8 MB): with the
#: fixed mmap threshold a fresh copy of the picture faulted its pages in for every snapshot, half
#: the cost of drawing one (docs/performance.md, "Stop 32"). Emptied once the queue has been dry
#: for ``buffers_idle_s``, as the detect worker's other pools (``buffers.release_idle``).
CANVAS_CACHE_BYTES = 24 * decode_budget.MIB
_CANVASES = ArrayPool(CANVAS_CACHE_BYTES, np.uint8)


def render(image: Image.Image | Picture, detections: Sequence[Detection], quality: int = 80) -> bytes:
    """Return a JPEG of ``image`` with boxes; the input image is not modified."""
    if isinstance(image, Image.Image):
        return _draw(image.convert("RGB") if image.mode != "RGB" else image.copy(), detections, quality)
    rgbx = image.rgbx()
    if rgbx is None:
        return _draw(image.image(), detections, quality)  # an RGB picture's Pillow image is a copy
    # The picture's RGBX pixels copied into a reused array, drawn on there (Pillow's own layout).
    pixels = _CANVASES.take(rgbx.shape)
    try:
        np.copyto(pixels, rgbx)
        canvas = Image.frombuffer("RGBX", (rgbx.shape[1], rgbx.shape[0]), pixels, "raw", "RGBX", 0, 1)
        canvas.readonly = 0  # the array is this canvas's own: drawn on where it is, not copied again
        return _draw(canvas, detections, quality)
    finally:
        _CANVASES.give(pixels)


def _draw(canvas: Image.Image, detections: Sequence[Detection], quality: int) -> bytes:
    draw = ImageDraw.Draw(canvas)
    width, height = canvas.size
    line = max(2, round(min(width, height) / 250))
    for det in detections:
        x1, y1, x2, y2 = det.bbox
        box = (x1 * width, y1 * height, x2 * width, y2 * height)
        colour = _COLOURS[det.category]
        draw.rectangle(box, outline=colour, width=line)
        label = f"{det.label} {det.confidence:.2f}"
        left, top, right, bottom = draw.textbbox((box[0], box[1]), label)
        text_h = bottom - top + 4
        y = box[1] - text_h if box[1] >= text_h else box[1]
        draw.rectangle((box[0], y, box[0] + (right - left) + 6, y + text_h), fill=colour)
        draw.text((box[0] + 3, y + 2), label, fill=(255, 255, 255))
    out = io.BytesIO()
    canvas.save(out, format="JPEG", quality=quality)
    return out.getvalue()


def draw(settings: Settings, source: Path | Image.Image | Picture, detections: Sequence[Detection]) -> bytes:
    """Draw ``detections`` on ``source`` (a stored file, decoded here, or a decoded picture) and
    return the JPEG. Blocking: run it on a thread."""
    picture: Image.Image | Picture
    if isinstance(source, Path):
        budget = decode_budget.shared(settings.decode_memory_mb)
        picture = decode(source, settings.detector_imgsz, budget, fit="cover")
    else:
        picture = source
    return render(picture, detections)


def write_whole(dest: Path, jpeg: bytes) -> None:
    """Write ``jpeg`` to ``dest`` whole (a temporary name, then a rename: a reader never sees
    half a file). Blocking: run it on a thread."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(f".{dest.name}.{os.getpid()}.part")
    partial.write_bytes(jpeg)
    partial.replace(dest)


def draw_file(
    settings: Settings, source: Path | Image.Image | Picture, detections: Sequence[Detection], dest: Path
) -> bytes:
    """:func:`draw`, the JPEG written to ``dest`` whole (:func:`write_whole`); return it."""
    jpeg = draw(settings, source, detections)
    write_whole(dest, jpeg)
    return jpeg


class Snapshot:
    """One image's annotated snapshot, drawn on first use (``jpeg``), then kept in memory; written
    to its file (``save``) only when it becomes an event's picture. A snapshot that is only
    published on MQTT leaves no file: one a second per active camera, never named by any row,
    would fill the disk (retention removes only what rows name).

    ``picture`` is the decoded image in memory when it is as large as a snapshot is drawn
    (``fit="cover"``); otherwise None, and the stored file ``source`` is decoded again, as it
    is when the picture was released (its array reused) before the snapshot was drawn.
    """

    def __init__(
        self,
        settings: Settings,
        camera_id: str,
        image_id: int,
        source: Path,
        detections: Sequence[Detection],
        picture: Picture | None = None,
    ) -> None:
        self.settings = settings
        self.image_id = image_id
        self.path = snapshot_file(settings, camera_id, image_id)
        self._source = source
        self._picture = picture
        self._detections = list(detections)
        self._jpeg: bytes | None = None
        self._saved = False

    @property
    def objects(self) -> frozenset[tuple[str, int]]:
        """What the snapshot shows: each label with its count."""
        return frozenset(Counter(d.label for d in self._detections).items())

    async def jpeg(self) -> bytes:
        if self._jpeg is None:
            started = metrics.now()
            picture = self._picture
            source: Path | Picture = picture if picture is not None and not picture.released else self._source
            self._jpeg = await asyncio.to_thread(draw, self.settings, source, self._detections)
            metrics.STAGE.labels("snapshot").observe(metrics.now() - started)
        return self._jpeg

    async def save(self) -> Path:
        """The snapshot written to ``path`` (drawn first if it is not yet); its path."""
        if not self._saved:
            await asyncio.to_thread(write_whole, self.path, await self.jpeg())
            self._saved = True
        return self.path


async def ensure(
    conn: asyncpg.Connection, settings: Settings, camera_id: str, image_id: int, current: Snapshot | None = None
) -> str | None:
    """The path of ``image_id``'s snapshot for an event row, drawn now if it does not exist yet
    (``current`` when it is that image's, else from the stored image and its stored detections).
    None, logged, when it cannot be drawn (the image's file is gone): the event keeps no picture."""
    if current is not None and current.image_id == image_id:
        return str(await current.save())
    path = snapshot_file(settings, camera_id, image_id)
    if path.exists():
        return str(path)
    stored = await conn.fetchval("SELECT path FROM images WHERE id = $1", image_id)
    rows = await conn.fetch(
        "SELECT label, confidence, x1, y1, x2, y2 FROM detections WHERE image_id = $1 ORDER BY id", image_id
    )
    if stored is None:
        log.warning("snapshot not drawn, image row gone camera_id=%s image_id=%s", camera_id, image_id)
        return None
    dets = [Detection(r["label"], r["confidence"], (r["x1"], r["y1"], r["x2"], r["y2"])) for r in rows]
    try:
        await asyncio.to_thread(draw_file, settings, Path(stored), dets, path)
    except (OSError, ValueError) as err:
        log.warning("snapshot not drawn camera_id=%s image_id=%s error=%r", camera_id, image_id, err)
        return None
    return str(path)
