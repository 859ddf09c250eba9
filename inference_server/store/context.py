"""household_context table: the latest context Home Assistant sent (history kept)."""

from __future__ import annotations

import asyncpg

from inference_server.schemas import ContextState, HouseholdContext


async def put(conn: asyncpg.Connection | asyncpg.Pool, context: HouseholdContext, set_by: str) -> ContextState:
    row = await conn.fetchrow(
        "INSERT INTO household_context (context, set_by) VALUES ($1, $2) RETURNING set_at",
        context.model_dump(mode="json"),
        set_by,
    )
    assert row is not None
    return ContextState(context=context, set_at=row["set_at"], set_by=set_by)


async def current(conn: asyncpg.Connection | asyncpg.Pool) -> ContextState:
    row = await conn.fetchrow(
        "SELECT context, set_at, set_by FROM household_context ORDER BY set_at DESC, id DESC LIMIT 1"
    )
    if row is None:
        return ContextState(context=HouseholdContext(), set_at=None, set_by=None)
    return ContextState(
        context=HouseholdContext.model_validate(row["context"]), set_at=row["set_at"], set_by=row["set_by"]
    )
