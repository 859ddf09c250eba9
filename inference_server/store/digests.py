"""digests table: every digest made, and the guard that sends one scheduled period only once."""

from __future__ import annotations

from datetime import datetime

import asyncpg

from inference_server.schemas import Digest


async def record(conn: asyncpg.Connection, digest: Digest) -> int | None:
    """Store ``digest``; its id, or None when a scheduled digest of the same period is already
    stored (another server process, or this one before a restart, sent it)."""
    body = digest.model_dump(mode="json", exclude={"id"})
    digest_id: int | None = await conn.fetchval(
        "INSERT INTO digests (kind, period_start, period_end, body) VALUES ($1, $2, $3, $4)"
        " ON CONFLICT (period_start, period_end) WHERE kind = 'scheduled' DO NOTHING RETURNING id",
        digest.kind,
        digest.period_start,
        digest.period_end,
        body,
    )
    return digest_id


async def scheduled_sent(conn: asyncpg.Connection | asyncpg.Pool, period_start: datetime, period_end: datetime) -> bool:
    found: bool = await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM digests WHERE kind = 'scheduled' AND period_start = $1 AND period_end = $2)",
        period_start,
        period_end,
    )
    return found


async def latest(conn: asyncpg.Connection | asyncpg.Pool, kind: str | None = None) -> Digest | None:
    row = await conn.fetchrow(
        "SELECT id, body FROM digests WHERE $1::text IS NULL OR kind = $1 ORDER BY created_at DESC, id DESC LIMIT 1",
        kind,
    )
    if row is None:
        return None
    return Digest.model_validate({**row["body"], "id": row["id"]})
