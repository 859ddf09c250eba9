"""A migrated database per test, for the store modules' own tests (embedded PostgreSQL)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from inference_server.schemas import CameraCreate
from inference_server.store import cameras
from inference_server.store.db import create_pool
from inference_server.store.migrate import migrate


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(database_url, 2)
    await migrate(pool)
    try:
        yield pool
    finally:
        await pool.close()


@pytest.fixture
async def conn(pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Connection]:
    """A connection to a database with two cameras, ``front`` and ``back``."""
    for camera_id in ("front", "back"):
        await cameras.create(pool, CameraCreate(id=camera_id, name=camera_id.title()))
    async with pool.acquire() as conn:
        yield conn
