"""quarantine table: inputs refused, with the reason, kept for a person to look at."""

from __future__ import annotations

from typing import Any

import asyncpg


async def add(
    conn: asyncpg.Connection | asyncpg.Pool,
    *,
    camera_id: str | None,
    original_path: str,
    stored_path: str | None,
    reason: str,
    detail: str,
    size_bytes: int | None,
) -> int:
    qid: int = await conn.fetchval(
        "INSERT INTO quarantine (camera_id, original_path, stored_path, reason, detail, size_bytes)"
        " VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
        camera_id,
        original_path,
        stored_path,
        reason,
        detail,
        size_bytes,
    )
    return qid


async def recent(conn: asyncpg.Connection | asyncpg.Pool, limit: int = 100) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        "SELECT id, camera_id, original_path, stored_path, reason, detail, created_at FROM quarantine"
        " ORDER BY id DESC LIMIT $1",
        limit,
    )
    return [dict(r) for r in rows]
