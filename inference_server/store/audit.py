"""audit_log table: who changed what, when."""

from __future__ import annotations

from typing import Any

import asyncpg

from inference_server.schemas import AuditEntry


async def record(
    conn: asyncpg.Connection | asyncpg.Pool,
    *,
    who: str,
    action: str,
    target_id: str | None,
    status: int,
    detail: dict[str, Any] | None = None,
) -> None:
    await conn.execute(
        "INSERT INTO audit_log (who, action, target_id, status, detail) VALUES ($1, $2, $3, $4, $5)",
        who,
        action,
        target_id,
        status,
        detail or {},
    )


async def page(
    conn: asyncpg.Connection | asyncpg.Pool, limit: int, before_id: int | None
) -> tuple[list[AuditEntry], int | None]:
    rows = await conn.fetch(
        "SELECT id, at, who, action, target_id, status FROM audit_log"
        " WHERE ($2::bigint IS NULL OR id < $2) ORDER BY id DESC LIMIT $1",
        limit + 1,
        before_id,
    )
    entries = [AuditEntry.model_validate(dict(r)) for r in rows[:limit]]
    return entries, (entries[-1].id if len(rows) > limit else None)
