"""detections table."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import asyncpg

from inference_server.domain import Detection
from inference_server.schemas import DetectionRecord
from inference_server.store import activity


async def insert_many(
    conn: asyncpg.Connection,
    image_id: int,
    camera_id: str,
    detected_at: datetime,
    detections: Sequence[Detection],
    zones: Sequence[tuple[str, ...]] = (),
) -> None:
    """Insert an image's detections; ``zones`` (parallel) are stored comma-joined."""
    await insert_images(conn, camera_id, [(image_id, detected_at, detections, zones)])


Images = Sequence[tuple[int, datetime, Sequence[Detection], Sequence[tuple[str, ...]]]]


async def insert_images(
    conn: asyncpg.Connection, camera_id: str, images: Images, *, hourly: activity.Hourly | None = None
) -> list[list[int]]:
    """Insert the detections of several images of one camera in one statement; each image is
    ``(image_id, detected_at, detections, zones)`` with ``zones`` parallel to its detections.
    ``hourly`` (``activity.hourly_counts``) is added to the camera's activity counts in the same
    statement. Returns each image's detection ids, parallel to its detections."""
    values = columns(images)
    if not values:
        return [[] for _ in images]
    counted = f"WITH counted AS ({activity.hourly_upsert('$1', '$12', '$13', '$14', '$15')}) " if hourly else ""
    inserted = await conn.fetch(f"{counted}{insert_sql('TRUE')}", camera_id, *values, *(hourly or ()))
    return ids_by_image(images, [r["id"] for r in inserted])


def columns(images: Images) -> list[list[object]]:
    """The detections' columns ($2..$11 of :func:`insert_sql`), empty when there are none."""
    rows = [
        (image_id, d.label, d.category, d.confidence, *d.bbox, ",".join(z) or None, detected_at)
        for image_id, detected_at, dets, zones in images
        for d, z in zip(dets, list(zones) or [()] * len(dets), strict=True)
    ]
    return [list(c) for c in zip(*rows, strict=True)]


def insert_sql(where: str) -> str:
    """The detections' insert ($1 the camera, $2..$11 the columns), only when ``where`` holds."""
    return (
        "INSERT INTO detections (image_id, camera_id, label, category, confidence, x1, y1, x2, y2, zone,"
        " detected_at) SELECT i, $1, l, c, p, a, b, e, f, z, t FROM unnest($2::bigint[], $3::text[],"
        " $4::text[], $5::float8[], $6::float8[], $7::float8[], $8::float8[], $9::float8[], $10::text[],"
        f" $11::timestamptz[]) WITH ORDINALITY AS d (i, l, c, p, a, b, e, f, z, t, n) WHERE {where}"
        " ORDER BY n RETURNING id"
    )


def ids_by_image(images: Images, ids: list[int]) -> list[list[int]]:
    """Each image's detection ids, parallel to its detections, from the ids the insert returned."""
    # The identity column numbers the rows in the order they are inserted: the given order.
    ordered = iter(sorted(ids))
    return [[next(ordered) for _ in dets] for _, _, dets, _ in images]


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
