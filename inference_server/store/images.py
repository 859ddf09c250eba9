"""images table: one row per distinct image (sha256 unique per camera)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg


@dataclass(frozen=True, slots=True)
class NewImage:
    camera_id: str
    sha256: bytes
    path: str
    source: str
    original_name: str | None
    media_type: str
    width: int
    height: int
    size_bytes: int
    captured_at: datetime
    captured_at_source: str
    #: A frame sampled from a video clip: the clip (``store/clips.py``) and its time in it.
    clip_id: int | None = None
    clip_offset_s: float | None = None


_COLUMNS = (
    "INSERT INTO images (camera_id, sha256, path, source, original_name, media_type, width, height,"
    " size_bytes, captured_at, captured_at_source, clip_id, clip_offset_s)"
)
_ON_CONFLICT = " ON CONFLICT (camera_id, sha256) DO NOTHING RETURNING id"
#: Insert one image ($1–$13, ``insert_args``); returns its id, nothing for bytes the camera has.
INSERT = f"{_COLUMNS} VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13){_ON_CONFLICT}"


def insert_if(condition: str) -> str:
    """``INSERT`` that inserts only while ``condition`` (an SQL boolean) holds."""
    return f"{_COLUMNS} SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13 WHERE {condition}{_ON_CONFLICT}"


def insert_args(image: NewImage) -> tuple[object, ...]:
    return (
        image.camera_id,
        image.sha256,
        image.path,
        image.source,
        image.original_name,
        image.media_type,
        image.width,
        image.height,
        image.size_bytes,
        image.captured_at,
        image.captured_at_source,
        image.clip_id,
        image.clip_offset_s,
    )


async def insert(conn: asyncpg.Connection, image: NewImage) -> int | None:
    """Insert the image; return its id, or None when the camera already has these bytes."""
    image_id: int | None = await conn.fetchval(INSERT, *insert_args(image))
    return image_id


async def find(conn: asyncpg.Connection | asyncpg.Pool, camera_id: str, sha256: bytes) -> tuple[int, str] | None:
    row = await conn.fetchrow("SELECT id, path FROM images WHERE camera_id = $1 AND sha256 = $2", camera_id, sha256)
    return (row["id"], row["path"]) if row is not None else None


@dataclass(frozen=True, slots=True)
class ImageOverview:
    """One image with what was found in it and the event it produced, for people to read."""

    id: int
    camera_id: str
    original_name: str | None
    detections: list[tuple[str, float]]
    event: dict[str, Any] | None


async def overview(conn: asyncpg.Connection | asyncpg.Pool) -> list[ImageOverview]:
    rows = await conn.fetch(
        "SELECT i.id, i.camera_id, i.original_name,"
        " coalesce((SELECT jsonb_agg(jsonb_build_array(d.label, d.confidence) ORDER BY d.confidence DESC)"
        "   FROM detections d WHERE d.image_id = i.id), '[]'::jsonb) AS dets,"
        " (SELECT to_jsonb(e) FROM (SELECT ev.id, ev.risk_score, ev.risk_level, ev.summary, ev.reasoning,"
        "   ev.analysis_source, ev.rules_result, ev.llm_state, ev.model"
        "   FROM batch_images bi JOIN events ev ON ev.batch_id = bi.batch_id"
        "   WHERE bi.image_id = i.id LIMIT 1) e) AS event"
        " FROM images i ORDER BY i.id"
    )
    return [
        ImageOverview(
            r["id"], r["camera_id"], r["original_name"], [(label, conf) for label, conf in r["dets"]], r["event"]
        )
        for r in rows
    ]


async def paths(conn: asyncpg.Connection | asyncpg.Pool, image_ids: list[int]) -> dict[int, str]:
    """Stored file of each of ``image_ids`` that still exists in the table (retention may have removed some)."""
    rows = await conn.fetch("SELECT id, path FROM images WHERE id = ANY($1::bigint[])", image_ids)
    return {r["id"]: r["path"] for r in rows}
