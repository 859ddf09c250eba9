"""A migrated database with two cameras (``cam``, ``odd``) for the job queue's tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from inference_server.store.db import create_pool
from inference_server.store.migrate import migrate


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(database_url, 4)
    await migrate(pool)
    await pool.execute("INSERT INTO cameras (id, name) VALUES ('cam', 'Cam'), ('odd', 'Odd')")
    yield pool
    await pool.close()
