"""The batch stage's closing loop: a tick with nothing due is one statement, without a
transaction (it was BEGIN, a locking read and COMMIT every second, busy or idle: stop 29); a due
batch is still closed."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import asyncpg

from bench.roundtrips import RoundTrips
from inference_server.comms.topics import Topics
from inference_server.config import Settings
from inference_server.pipeline.batch import BatchStage
from inference_server.reasoning.reasoner import LevelThresholds
from inference_server.reasoning.rules import RulesReasoner
from inference_server.schemas import CameraCreate
from inference_server.store import batches, cameras

from ..conftest import FakeClock

NOON = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


async def test_a_tick_with_nothing_due_is_one_statement_and_a_due_batch_still_closes(
    make_settings: Callable[..., Settings], pool: asyncpg.Pool
) -> None:
    settings = make_settings(batch_window_s=90, batch_idle_s=60)
    clock = FakeClock(NOON)
    rules = RulesReasoner(LevelThresholds(settings.risk_medium, settings.risk_high, settings.risk_critical))
    stage = BatchStage(settings, pool, rules, Topics("hsi"), clock, llm_enabled=False)
    await cameras.create(pool, CameraCreate(id="porch", name="Porch"))
    async with pool.acquire() as conn:
        batch = await batches.open_new(conn, "porch", NOON)
    with RoundTrips() as trips:
        assert await stage.close_due() == 0
    assert trips.count == 1, trips.by_statement
    clock.advance(61)  # idle: due
    assert await stage.close_due() == 1
    async with pool.acquire() as conn:
        assert await batches.lock_open(conn, "porch") is None
        closed = await batches.get(conn, batch.id)
    assert closed is not None
    clock.advance(timedelta(minutes=5).total_seconds())
    with RoundTrips() as trips:
        assert await stage.close_due() == 0
    assert trips.count == 1
