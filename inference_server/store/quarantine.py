"""quarantine table: inputs refused, with the reason, kept for a person to look at."""

from __future__ import annotations

import logging
from typing import Any

import asyncpg

from inference_server.telemetry import metrics

log = logging.getLogger(__name__)


async def record(
    conn: asyncpg.Connection | asyncpg.Pool,
    *,
    source: str,
    camera_id: str | None,
    original_path: str,
    stored_path: str | None,
    reason: str,
    detail: str,
    size_bytes: int | None,
) -> int:
    """Quarantine one refused input: its row, one ``hsi_quarantined_total{reason}`` and a warning.

    ``source`` says in the log line where the input came from (``file``, ``mqtt``, ``decode``).
    Nothing is counted or logged when the row cannot be written: the error propagates.
    """
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
    metrics.QUARANTINED.labels(reason).inc()
    log.warning(
        "input quarantined source=%s camera_id=%s reason=%s detail=%s original=%s",
        source,
        camera_id or "-",
        reason,
        detail,
        original_path,
    )
    return qid


async def recent(conn: asyncpg.Connection | asyncpg.Pool, limit: int = 100) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        "SELECT id, camera_id, original_path, stored_path, reason, detail, created_at FROM quarantine"
        " ORDER BY id DESC LIMIT $1",
        limit,
    )
    return [dict(r) for r in rows]
