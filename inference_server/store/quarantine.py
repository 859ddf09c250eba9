"""quarantine table: inputs refused, with the reason, kept for a person to look at."""

from __future__ import annotations

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
