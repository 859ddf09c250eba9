"""clips table: one row per distinct video clip a camera sent (sha256 unique per camera); its
sampled frames are images (``images.clip_id``), and an event whose images came from a clip links
it as its evidence."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

import asyncpg


@dataclass(frozen=True, slots=True)
class NewClip:
    camera_id: str
    sha256: bytes
    path: str
    media_type: str
    original_name: str | None
    codec: str
    width: int
    height: int
    duration_s: float
    frames_decoded: int
    frames_sampled: int
    size_bytes: int
    started_at: datetime


async def insert(conn: asyncpg.Connection, clip: NewClip) -> int | None:
    """Insert the clip; return its id, or None when the camera already sent these bytes."""
    clip_id: int | None = await conn.fetchval(
        "INSERT INTO clips (camera_id, sha256, path, media_type, original_name, codec, width, height, duration_s,"
        " frames_decoded, frames_sampled, size_bytes, started_at)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
        " ON CONFLICT (camera_id, sha256) DO NOTHING RETURNING id",
        clip.camera_id,
        clip.sha256,
        clip.path,
        clip.media_type,
        clip.original_name,
        clip.codec,
        clip.width,
        clip.height,
        clip.duration_s,
        clip.frames_decoded,
        clip.frames_sampled,
        clip.size_bytes,
        clip.started_at,
    )
    return clip_id


async def find(conn: asyncpg.Connection | asyncpg.Pool, camera_id: str, sha256: bytes) -> tuple[int, str] | None:
    """(id, path) of the camera's clip with these bytes."""
    row = await conn.fetchrow("SELECT id, path FROM clips WHERE camera_id = $1 AND sha256 = $2", camera_id, sha256)
    return (row["id"], row["path"]) if row is not None else None


async def frame_images(conn: asyncpg.Connection | asyncpg.Pool, clip_id: int) -> list[int]:
    """The clip's sampled frames (image ids), in time order."""
    rows = await conn.fetch("SELECT id FROM images WHERE clip_id = $1 ORDER BY clip_offset_s, id", clip_id)
    return [r["id"] for r in rows]


@dataclass(frozen=True, slots=True)
class ClipFile:
    path: str
    media_type: str


async def for_event(conn: asyncpg.Connection | asyncpg.Pool, event_id: UUID) -> tuple[bool, ClipFile | None]:
    """(event exists, the latest clip among the images of its batches, if any)."""
    row = await conn.fetchrow(
        "SELECT e.id, c.path, c.media_type FROM events e LEFT JOIN LATERAL ("
        "  SELECT cl.path, cl.media_type FROM batches b JOIN batch_images bi ON bi.batch_id = b.id"
        "  JOIN images i ON i.id = bi.image_id JOIN clips cl ON cl.id = i.clip_id"
        "  WHERE b.event_id = e.id ORDER BY cl.id DESC LIMIT 1) c ON true"
        " WHERE e.id = $1",
        event_id,
    )
    if row is None:
        return False, None
    return True, (ClipFile(row["path"], row["media_type"]) if row["path"] is not None else None)
