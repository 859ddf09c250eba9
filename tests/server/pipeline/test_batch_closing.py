"""The batch stage's closing loop: a tick with nothing due is one statement, without a
transaction (it was BEGIN, a locking read and COMMIT every second, busy or idle: stop 29); a due
batch is still closed."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import asyncpg

from bench.roundtrips import RoundTrips
from inference_server import demo_assets
from inference_server.clock import SystemClock
from inference_server.comms.topics import Topics
from inference_server.config import Settings
from inference_server.detection.ultralytics_backend import UltralyticsDetector
from inference_server.pipeline.batch import _LOOK_AT_LEAST_EVERY, BatchStage
from inference_server.reasoning.reasoner import LevelThresholds
from inference_server.reasoning.rules import RulesReasoner
from inference_server.schemas import CameraCreate
from inference_server.store import batches, cameras
from tests.support.waiting import wait_until

from ..conftest import FakeClock, drop, running

NOON = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


async def _stage(make_settings: Callable[..., Settings], pool: asyncpg.Pool) -> tuple[BatchStage, FakeClock]:
    """A batch stage on a fake clock at noon (a 90 s window, 60 s idle) and the camera "porch"."""
    settings = make_settings(batch_window_s=90, batch_idle_s=60)
    clock = FakeClock(NOON)
    rules = RulesReasoner(LevelThresholds(settings.risk_medium, settings.risk_high, settings.risk_critical))
    await cameras.create(pool, CameraCreate(id="porch", name="Porch"))
    return BatchStage(settings, pool, rules, Topics("hsi"), clock, llm_enabled=False), clock


def _closed(pool: asyncpg.Pool) -> Awaitable[asyncpg.Record | None]:
    """The closed batch, with how long after its last activity it closed (``late``, s)."""
    return pool.fetchrow(  # type: ignore[no-any-return]
        "SELECT extract(epoch FROM closed_at - last_activity_at) AS late FROM batches WHERE closed_at IS NOT NULL"
    )


async def test_a_tick_with_nothing_due_is_one_statement_and_a_due_batch_still_closes(
    make_settings: Callable[..., Settings], pool: asyncpg.Pool
) -> None:
    stage, clock = await _stage(make_settings, pool)
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


async def test_the_loop_looks_only_when_a_batch_can_be_due_and_still_closes_on_time(
    make_settings: Callable[..., Settings], pool: asyncpg.Pool
) -> None:
    """The look says when the first open batch falls due; until then the ticks send nothing (a
    camera sending a picture a second paid a look a second: stop 33), but at least every
    ``_LOOK_AT_LEAST_EVERY`` (a batch of another process the stage does not know of)."""
    stage, clock = await _stage(make_settings, pool)
    async with pool.acquire() as conn:
        await batches.open_new(conn, "porch", NOON)  # as another process would
    with RoundTrips() as trips:
        assert await stage.close_due() == 0  # the look: due at 12:01:00
        clock.advance(5)
        assert await stage.close_due() == 0
        assert trips.count == 1, trips.by_statement
        clock.advance(_LOOK_AT_LEAST_EVERY.total_seconds())
        assert await stage.close_due() == 0
        assert trips.count == 2, trips.by_statement
    clock.advance(46)  # 12:01:01: idle
    assert await stage.close_due() == 1
    # Set back (a wall clock stepped back): the next look would be far off, so it looks now.
    clock.advance(-3600)
    with RoundTrips() as trips:
        assert await stage.close_due() == 0
    assert trips.count == 1


async def test_a_batch_the_stage_opens_brings_the_next_look_forward(
    make_settings: Callable[..., Settings], pose_detector: UltralyticsDetector
) -> None:
    """The real server, a picture of people, 1 s of idle time: the batch closes about a second
    after its picture, not at the loop's next look 10 s on; then, no batch open, the loop sends
    nothing (it looked every 0.25 s here)."""
    settings = make_settings(batch_idle_s=1.0, batch_window_s=300, fast_path={})
    async with running(settings, pose_detector) as server:
        drop(demo_assets.image("zidane.jpg"), settings.cameras_path / "porch" / "MDAlarm_20261124-120000.jpg")
        await wait_until(lambda: server.pool.fetchval("SELECT count(*) = 1 FROM batches"), timeout=60)
        row = await wait_until(lambda: _closed(server.pool), timeout=20)
        assert 1.0 <= row["late"] < 3.0
        await asyncio.sleep(0.5)
        with RoundTrips() as trips:
            await asyncio.sleep(2.0)
        looks = sum(
            n for text, n in trips.by_statement.items() if text.startswith("SELECT EXISTS (SELECT 1 FROM batch")
        )
        assert looks == 0, trips.by_statement


async def test_on_the_system_clock_the_loop_sleeps_until_the_batch_falls_due_and_closes_it_then(
    make_settings: Callable[..., Settings], pose_detector: UltralyticsDetector
) -> None:
    """The real server, 8 s of idle time: while the batch stays open the closing loop does not
    wake each second to find nothing due (it did: a wake-up a second, busy or idle, stop 48),
    and it closes the batch when it falls due, not up to a tick later."""
    settings = make_settings(batch_idle_s=8.0, batch_window_s=300, fast_path={})
    async with running(settings, pose_detector) as server:
        stage = server.batches
        calls: list[float] = []
        close_due = stage.close_due

        async def counted() -> int:
            calls.append(asyncio.get_running_loop().time())
            return await close_due()

        stage.close_due = counted  # type: ignore[method-assign]
        drop(demo_assets.image("zidane.jpg"), settings.cameras_path / "porch" / "MDAlarm_20261124-120000.jpg")
        await wait_until(lambda: server.pool.fetchval("SELECT count(*) = 1 FROM batches"), timeout=60)
        await asyncio.sleep(0.5)
        looked = len(calls)
        await asyncio.sleep(3.0)
        assert len(calls) - looked <= 1, "the loop woke while nothing could be due"
        row = await wait_until(lambda: _closed(server.pool), timeout=20)
        assert 8.0 <= row["late"] < 8.5


async def test_a_batch_due_by_its_times_but_left_open_is_looked_at_each_tick_not_in_a_spin(
    make_settings: Callable[..., Settings], pool: asyncpg.Pool
) -> None:
    """A batch idle long enough but waiting for its clip's frames stays open after the look,
    which still says it fell due (in the past): the loop on the system's clock looks again at
    its next tick (a second here), not at once over and over."""
    stage, _ = await _stage(make_settings, pool)
    stage.clock = SystemClock()
    looks = 0

    async def held_open() -> int:
        nonlocal looks
        looks += 1
        stage._next_look = datetime.now(UTC) - timedelta(seconds=5)  # as the look leaves it then
        return 0

    stage.close_due = held_open  # type: ignore[method-assign]
    stop = asyncio.Event()
    running_loop = asyncio.create_task(stage.run(stop))
    await asyncio.sleep(2.5)
    stop.set()
    await running_loop
    assert 1 <= looks <= 4, looks
