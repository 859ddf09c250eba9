"""A migrated database per test, for the store modules' own tests (embedded PostgreSQL)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import pytest

from inference_server.domain import Assessment
from inference_server.schemas import CameraCreate
from inference_server.store import cameras, events


@pytest.fixture
async def conn(pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Connection]:
    """A connection to a database with two cameras, ``front`` and ``back``."""
    for camera_id in ("front", "back"):
        await cameras.create(pool, CameraCreate(id=camera_id, name=camera_id.title()))
    async with pool.acquire() as conn:
        yield conn


async def add_event(
    conn: asyncpg.Connection,
    image_id: int,
    score: int,
    level: str,
    *,
    batch_id: uuid.UUID | None = None,
    is_fast_path: bool = False,
    snapshot_path: str | None = None,
) -> uuid.UUID:
    """An event on camera ``front``, judged by the rules at 2025-06-01 12:00 UTC; its id."""
    event_id = uuid.uuid4()
    await events.insert(
        conn,
        event_id=event_id,
        camera_id="front",
        image_id=image_id,
        batch_id=batch_id,
        started_at=datetime(2025, 6, 1, 12, 0, tzinfo=UTC),
        assessment=Assessment(score, level, "someone", "why", [], "rules", "rules-v2"),
        is_fast_path=is_fast_path,
        snapshot_path=snapshot_path,
        context=None,
        llm_pending=False,
    )
    return event_id
