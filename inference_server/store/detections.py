"""detections table."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import asyncpg

from inference_server.domain import Detection
from inference_server.schemas import DetectionRecord


async def insert_many(
    conn: asyncpg.Connection,
    image_id: int,
    camera_id: str,
    detected_at: datetime,
    detections: Sequence[Detection],
    zones: Sequence[tuple[str, ...]] = (),
) -> None:
    """Insert an image's detections; ``zones`` (parallel) are stored comma-joined."""
    if not detections:
        return
    names = list(zones) or [()] * len(detections)
    await conn.executemany(
        "INSERT INTO detections (image_id, camera_id, label, category, confidence, x1, y1, x2, y2, zone,"
        " detected_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        [
            (image_id, camera_id, d.label, d.category, d.confidence, *d.bbox, ",".join(z) or None, detected_at)
            for d, z in zip(detections, names, strict=True)
        ],
    )


async def page(
    conn: asyncpg.Connection | asyncpg.Pool,
    *,
    camera_id: str | None,
    label: str | None,
    since: datetime | None,
    until: datetime | None,
    min_confidence: float | None,
    limit: int,
    before_id: int | None,
) -> tuple[list[DetectionRecord], int | None]:
    """Newest first (by id, which follows insertion)."""
    rows = await conn.fetch(
        "SELECT id, image_id, camera_id, label, category, confidence, x1, y1, x2, y2, zone, detected_at"
        " FROM detections WHERE ($2::bigint IS NULL OR id < $2) AND ($3::text IS NULL OR camera_id = $3)"
        " AND ($4::text IS NULL OR label = $4) AND ($5::timestamptz IS NULL OR detected_at >= $5)"
        " AND ($6::timestamptz IS NULL OR detected_at < $6) AND ($7::float8 IS NULL OR confidence >= $7)"
        " ORDER BY id DESC LIMIT $1",
        limit + 1,
        before_id,
        camera_id,
        label,
        since,
        until,
        min_confidence,
    )
    records = [
        DetectionRecord(
            id=r["id"],
            image_id=r["image_id"],
            camera_id=r["camera_id"],
            label=r["label"],
            category=r["category"],
            confidence=r["confidence"],
            bbox=(r["x1"], r["y1"], r["x2"], r["y2"]),
            zone=r["zone"],
            detected_at=r["detected_at"],
        )
        for r in rows[:limit]
    ]
    return records, (records[-1].id if len(rows) > limit else None)
