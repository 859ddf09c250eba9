"""cameras table."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg


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
