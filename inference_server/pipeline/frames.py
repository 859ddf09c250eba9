"""Key frames for a model that sees: the best images of an event, bounded in size, as JPEG.

The LLM stage sends them with the prompt (``llm.vision``). ``choose`` picks the images that show
the event's main subject best (the top category, person before vehicle before object before
animal, as the rules rank them: the most such detections, then their summed confidence, the
later image on a tie), at most ``llm.max_images``, best first; ``encode`` scales one to at most
``llm.image_max_px`` on its long side (never up), applies the EXIF orientation and writes a
JPEG. Encoding is blocking work: ``load`` runs it in a worker thread. A stored image that is
gone (retention) or unreadable is left out and logged; the event is then judged on fewer frames
or as text only.
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from inference_server.domain import category_of
from inference_server.store.batches import BatchDetection

log = logging.getLogger(__name__)

JPEG_QUALITY = 85
_RANK = ("person", "vehicle", "object", "animal")


@dataclass(frozen=True, slots=True)
class Frame:
    """One key frame as sent to the model."""

    image_id: int
    jpeg: bytes
    width: int
    height: int
    #: Seconds spent decoding, scaling and encoding it: wall clock, and CPU time of the thread.
    encode_s: float
    encode_cpu_s: float


def choose(rows: Sequence[BatchDetection], max_images: int) -> list[int]:
    """The ids of the images that best show the event's top category, best first, at most ``max_images``."""
    if not rows:
        return []
    top = min((category_of(r.label) for r in rows), key=_RANK.index)
    score: dict[int, tuple[int, float]] = defaultdict(lambda: (0, 0.0))
    for r in rows:
        if category_of(r.label) == top:
            count, total = score[r.image_id]
            score[r.image_id] = (count + 1, total + r.confidence)
    return sorted(score, key=lambda i: (*score[i], i), reverse=True)[:max_images]


def encode(image_id: int, path: Path, max_px: int) -> Frame:
    """``path`` scaled to at most ``max_px`` on its long side, as JPEG. Raises ``OSError`` or
    ``PIL.UnidentifiedImageError`` when the file is gone or not an image."""
    started, cpu = time.perf_counter(), time.thread_time()
    with Image.open(path) as opened:
        # A JPEG decodes straight at a reduced scale (DCT scaling, never below max_px): most of the time saved.
        opened.draft("RGB", (max_px, max_px))
        image = ImageOps.exif_transpose(opened)
        image = image.convert("RGB")
    # Bilinear after thumbnail's integer pre-reduction: half the CPU of Lanczos, no visible loss at 768 px.
    image.thumbnail((max_px, max_px), Image.Resampling.BILINEAR)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=JPEG_QUALITY)
    return Frame(
        image_id, out.getvalue(), image.width, image.height, time.perf_counter() - started, time.thread_time() - cpu
    )


def _encode_all(chosen: Sequence[int], paths: Mapping[int, str], max_px: int) -> list[Frame]:
    frames = []
    for image_id in chosen:
        path = paths.get(image_id)
        if path is None:
            log.warning("key frame skipped: image row gone image_id=%d", image_id)
            continue
        try:
            frames.append(encode(image_id, Path(path), max_px))
        except (OSError, UnidentifiedImageError) as err:
            log.warning("key frame skipped: cannot read image_id=%d path=%s error=%r", image_id, path, err)
    return frames


async def load(chosen: Sequence[int], paths: Mapping[int, str], max_px: int) -> list[Frame]:
    """The frames of ``chosen`` (in that order), encoded in a worker thread; unreadable ones left out."""
    return await asyncio.to_thread(_encode_all, list(chosen), dict(paths), max_px)
