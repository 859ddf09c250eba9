"""Annotated snapshots: the image with its detections boxed and labelled, as JPEG."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw

from inference_server.config import Settings
from inference_server.domain import Detection

_COLOURS = {
    "person": (230, 57, 70),
    "vehicle": (69, 123, 157),
    "animal": (42, 157, 143),
    "object": (244, 162, 97),
}


def snapshot_file(settings: Settings, camera_id: str, image_id: int) -> Path:
    """Where the annotated snapshot of ``image_id`` is written (and the event row points)."""
    return settings.snapshots_path / camera_id / f"{image_id}.jpg"


def render(image: Image.Image, detections: Sequence[Detection], quality: int = 80) -> bytes:
    """Return a JPEG of ``image`` with boxes; the input image is not modified."""
    canvas = image.convert("RGB") if image.mode != "RGB" else image.copy()
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
