"""detections table."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import asyncpg

from inference_server.models.detector import Detection


async def insert_many(
    conn: asyncpg.Connection,
    image_id: int,
    camera_id: str,
    detected_at: datetime,
    detections: Sequence[Detection],
) -> None:
    if not detections:
        return
    await conn.executemany(
        "INSERT INTO detections (image_id, camera_id, label, category, confidence, x1, y1, x2, y2,"
        " detected_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        [(image_id, camera_id, d.label, d.category, d.confidence, *d.bbox, detected_at) for d in detections],
    )


async def for_image(conn: asyncpg.Connection | asyncpg.Pool, image_id: int) -> list[Detection]:
    rows = await conn.fetch(
        "SELECT label, confidence, x1, y1, x2, y2 FROM detections WHERE image_id = $1 ORDER BY confidence DESC, id",
        image_id,
    )
    return [Detection(r["label"], r["confidence"], (r["x1"], r["y1"], r["x2"], r["y2"])) for r in rows]
