"""store/context.py: the latest household context Home Assistant sent, with who set it and when."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from inference_server.config import Settings
from inference_server.schemas import HouseholdContext
from inference_server.store import context
from inference_server.store.retention import run_retention


async def test_without_a_context_the_default_comes_back_unset(pool: asyncpg.Pool) -> None:
    state = await context.current(pool)

    assert state.context == HouseholdContext()
    assert state.set_at is None and state.set_by is None


async def test_the_latest_context_is_current_and_earlier_ones_are_kept(pool: asyncpg.Pool) -> None:
    away = HouseholdContext(alarm_state="armed_away", people_home=[], sun="below_horizon")
    home = HouseholdContext(alarm_state="disarmed", people_home=["Alex"], open_entries=["back door"], notes="party")

    first = await context.put(pool, away, "homeassistant")
    second = await context.put(pool, home, "tests")

    current = await context.current(pool)
    assert current.context == home and current.set_by == "tests"
    assert current.set_at == second.set_at and second.set_at is not None and first.set_at is not None
    assert await pool.fetchval("SELECT count(*) FROM household_context") == 2


T0 = datetime(2026, 11, 23, 22, 0, tzinfo=UTC)


async def test_the_context_in_force_at_a_moment_is_the_last_one_set_by_then(pool: asyncpg.Pool) -> None:
    night = HouseholdContext(alarm_state="armed_night", people_home=["Alex"], sun="below_horizon")
    morning = HouseholdContext(alarm_state="disarmed", people_home=["Alex"], sun="above_horizon")
    await context.put(pool, night, "homeassistant", set_at=T0)
    await context.put(pool, morning, "homeassistant", set_at=T0 + timedelta(hours=9))

    assert (await context.at(pool, T0 + timedelta(hours=4, minutes=10))).context == night  # 02:10
    assert (await context.at(pool, T0)).context == night  # set at that very moment
    assert (await context.at(pool, T0 + timedelta(hours=10))).context == morning
    before = await context.at(pool, T0 - timedelta(seconds=1))
    assert before.set_at is None and before.context == HouseholdContext()
    # An image captured before the history begins is judged with the current context (a logged fallback).
    assert (await context.for_capture(pool, T0 - timedelta(days=3))).context == morning
    with pytest.raises(ValueError, match="timezone-aware"):
        await context.at(pool, datetime(2026, 11, 24, 2, 10))


async def test_prune_keeps_the_context_in_force_at_the_cutoff_and_everything_after(pool: asyncpg.Pool) -> None:
    for hours in range(5):
        await context.put(
            pool, HouseholdContext(notes=f"n{hours}"), "homeassistant", set_at=T0 + timedelta(hours=hours)
        )
    cutoff = T0 + timedelta(hours=2, minutes=30)

    assert await context.prune(pool, cutoff, 1) == 1  # bounded batches
    assert await context.prune(pool, cutoff, 100) == 1
    assert await context.prune(pool, cutoff, 100) == 0
    kept = [r["context"]["notes"] for r in await pool.fetch("SELECT context FROM household_context ORDER BY set_at")]
    assert kept == ["n2", "n3", "n4"]
    assert (await context.at(pool, cutoff)).context.notes == "n2"
    # The latest is never pruned, however old.
    assert await context.prune(pool, T0 + timedelta(days=400), 100) == 2
    assert (await context.current(pool)).context.notes == "n4"


async def test_retention_prunes_replaced_contexts(pool: asyncpg.Pool, tmp_path: Path, database_url: str) -> None:
    now = datetime(2026, 12, 31, tzinfo=UTC)
    settings = Settings(database_url=database_url, data_dir=tmp_path, retention_days=14, event_retention_days=90)
    for days in (200, 100, 80, 1):
        await context.put(pool, HouseholdContext(notes=f"{days}d"), "homeassistant", set_at=now - timedelta(days=days))

    report = await run_retention(pool, settings, now=now)

    # 90-day cutoff (the older one): the 200-day-old context went; the 100-day one was in force then.
    assert report.contexts == 1
    kept = [r["context"]["notes"] for r in await pool.fetch("SELECT context FROM household_context ORDER BY set_at")]
    assert kept == ["100d", "80d", "1d"]
