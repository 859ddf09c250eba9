"""household_context table: every context Home Assistant sent, with when it was set.

``current`` is the latest; ``at`` the one in force at a moment (an image's capture time), so an
image is judged with the household as it was when it was taken, however late it arrives. The
history is bounded by retention (``prune``)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime

import asyncpg

from inference_server.schemas import ContextState, HouseholdContext

log = logging.getLogger(__name__)


async def put(
    conn: asyncpg.Connection | asyncpg.Pool, context: HouseholdContext, set_by: str, *, set_at: datetime | None = None
) -> ContextState:
    """Store ``context`` as set now (or at ``set_at``: an import, a test's past)."""
    row = await conn.fetchrow(
        "INSERT INTO household_context (context, set_by, set_at) VALUES ($1, $2, coalesce($3, now())) RETURNING set_at",
        context.model_dump(mode="json"),
        set_by,
        set_at,
    )
    assert row is not None
    return ContextState(context=context, set_at=row["set_at"], set_by=set_by)


def _state(row: asyncpg.Record | None) -> ContextState:
    if row is None:
        return ContextState(context=HouseholdContext(), set_at=None, set_by=None)
    return ContextState(
        context=HouseholdContext.model_validate(row["context"]), set_at=row["set_at"], set_by=row["set_by"]
    )


async def current(conn: asyncpg.Connection | asyncpg.Pool) -> ContextState:
    """The latest context; unset (``set_at`` None) when none was ever sent."""
    return _state(
        await conn.fetchrow(
            "SELECT context, set_at, set_by FROM household_context ORDER BY set_at DESC, id DESC LIMIT 1"
        )
    )


async def at(conn: asyncpg.Connection | asyncpg.Pool, when: datetime) -> ContextState:
    """The context in force at ``when`` (timezone-aware): the latest set at or before it; unset
    when none was set by then (the household was not known yet). Uses the index
    ``household_context_latest``."""
    if when.tzinfo is None:
        raise ValueError("when must be timezone-aware")
    return _state(
        await conn.fetchrow(
            "SELECT context, set_at, set_by FROM household_context WHERE set_at <= $1"
            " ORDER BY set_at DESC, id DESC LIMIT 1",
            when,
        )
    )


def for_capture_sql(captured_at: str) -> str:
    """The rows ``capture_state`` judges, for an SQL parameter named by the argument: the context in
    force at the capture time (``in_force``), and the latest, each by the index
    ``household_context_latest`` (also a part of ``batches.lock_open_in_context``)."""
    return (
        "(SELECT context, set_at, set_by, true AS in_force FROM household_context WHERE set_at <= "
        f"{captured_at} ORDER BY set_at DESC, id DESC LIMIT 1)"
        " UNION ALL (SELECT context, set_at, set_by, false FROM household_context"
        " ORDER BY set_at DESC, id DESC LIMIT 1)"
    )


def capture_state(rows: Sequence[asyncpg.Record], captured_at: datetime) -> ContextState:
    """``for_capture`` of the rows ``for_capture_sql`` read (rows without ``set_at``: none)."""
    found = [r for r in rows if r["set_at"] is not None]
    in_force = [r for r in found if r["in_force"]]
    if in_force:
        return _state(in_force[0])
    state = _state(found[0] if found else None)
    if state.set_at is not None:
        log.info(
            "context fallback: none known at capture time, judged with the current one captured_at=%s set_at=%s",
            captured_at.isoformat(),
            state.set_at.isoformat(),
        )
    return state


async def for_capture(conn: asyncpg.Connection | asyncpg.Pool, captured_at: datetime) -> ContextState:
    """The context to judge an image captured at ``captured_at`` with: the one in force then
    (``at``). An image captured before the first context that is still kept (older than the
    history, or a camera clock far behind) is judged with the current one, logged as that
    fallback; unset when no context was ever sent."""
    if captured_at.tzinfo is None:
        raise ValueError("captured_at must be timezone-aware")
    # One round trip (this runs for every stored group of images).
    return capture_state(await conn.fetch(for_capture_sql("$1"), captured_at), captured_at)


async def prune(conn: asyncpg.Connection | asyncpg.Pool, before: datetime, limit: int) -> int:
    """Delete up to ``limit`` contexts replaced before ``before``; return how many. The one in
    force at ``before`` stays (it judges what was captured after it), and so does the latest."""
    status = await conn.execute(
        "DELETE FROM household_context WHERE id IN ("
        " SELECT id FROM household_context WHERE set_at < $1"
        " AND id <> (SELECT id FROM household_context WHERE set_at <= $1 ORDER BY set_at DESC, id DESC LIMIT 1)"
        " ORDER BY set_at LIMIT $2 FOR UPDATE SKIP LOCKED)",
        before,
        limit,
    )
    return int(status.rsplit(" ", 1)[-1])
