"""cameras table."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from inference_server import schemas


@dataclass(frozen=True, slots=True)
class Camera:
    id: str
    name: str
    folder: str | None
    enabled: bool


def _row(row: asyncpg.Record) -> Camera:
    return Camera(row["id"], row["name"], row["folder"], row["enabled"])


async def ensure_for_folder(conn: asyncpg.Connection, camera_id: str, folder: str) -> tuple[Camera, bool]:
    """Return the camera of ``folder``, registering it on first sight. The bool says it is new."""
    row = await conn.fetchrow("SELECT id, name, folder, enabled FROM cameras WHERE folder = $1", folder)
    if row is not None:
        return _row(row), False
    name = folder.replace("_", " ").replace("-", " ").strip().title() or camera_id
    row = await conn.fetchrow(
        "INSERT INTO cameras (id, name, folder) VALUES ($1, $2, $3)"
        " ON CONFLICT (id) DO UPDATE SET folder = COALESCE(cameras.folder, EXCLUDED.folder)"
        " RETURNING id, name, folder, enabled, (xmax = 0) AS inserted",
        camera_id,
        name,
        folder,
    )
    assert row is not None
    return _row(row), bool(row["inserted"])


async def get(conn: asyncpg.Connection | asyncpg.Pool, camera_id: str) -> Camera | None:
    row = await conn.fetchrow("SELECT id, name, folder, enabled FROM cameras WHERE id = $1", camera_id)
    return _row(row) if row is not None else None


async def list_all(conn: asyncpg.Connection | asyncpg.Pool) -> list[Camera]:
    rows = await conn.fetch("SELECT id, name, folder, enabled FROM cameras ORDER BY id")
    return [_row(r) for r in rows]


_RECORD = "SELECT id, name, folder, enabled, zones, created_at FROM cameras"


def _record(row: asyncpg.Record) -> schemas.Camera:
    return schemas.Camera.model_validate(dict(row))


async def get_record(conn: asyncpg.Connection | asyncpg.Pool, camera_id: str) -> schemas.Camera | None:
    row = await conn.fetchrow(_RECORD + " WHERE id = $1", camera_id)
    return _record(row) if row is not None else None


async def list_records(conn: asyncpg.Connection | asyncpg.Pool) -> list[schemas.Camera]:
    return [_record(r) for r in await conn.fetch(_RECORD + " ORDER BY id")]


async def create(conn: asyncpg.Connection | asyncpg.Pool, new: schemas.CameraCreate) -> schemas.Camera | None:
    """Create a camera; None when the id is taken."""
    row = await conn.fetchrow(
        "INSERT INTO cameras (id, name, enabled) VALUES ($1, $2, $3) ON CONFLICT (id) DO NOTHING"
        " RETURNING id, name, folder, enabled, zones, created_at",
        new.id,
        new.name,
        new.enabled,
    )
    return _record(row) if row is not None else None


async def patch(
    conn: asyncpg.Connection | asyncpg.Pool, camera_id: str, change: schemas.CameraPatch
) -> schemas.Camera | None:
    row = await conn.fetchrow(
        "UPDATE cameras SET name = COALESCE($2, name), enabled = COALESCE($3, enabled), updated_at = now()"
        " WHERE id = $1 RETURNING id, name, folder, enabled, zones, created_at",
        camera_id,
        change.name,
        change.enabled,
    )
    return _record(row) if row is not None else None


async def delete(conn: asyncpg.Connection, camera_id: str) -> list[str] | None:
    """Delete the camera with its images, detections and events (cascade). Returns the object
    labels it ever had (their retained MQTT topics need clearing), or None if there was no such camera."""
    labels = await conn.fetch("SELECT DISTINCT label FROM detections WHERE camera_id = $1 ORDER BY label", camera_id)
    status: str = await conn.execute("DELETE FROM cameras WHERE id = $1", camera_id)
    if status == "DELETE 0":
        return None
    return [r["label"] for r in labels]


async def set_zones(
    conn: asyncpg.Connection | asyncpg.Pool, camera_id: str, zones: schemas.ZoneList
) -> schemas.ZoneList | None:
    row = await conn.fetchrow(
        "UPDATE cameras SET zones = $2, updated_at = now() WHERE id = $1 RETURNING zones",
        camera_id,
        [z.model_dump(mode="json") for z in zones.zones],
    )
    return schemas.ZoneList(zones=row["zones"]) if row is not None else None
