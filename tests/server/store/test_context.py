"""store/context.py: the latest household context Home Assistant sent, with who set it and when."""

from __future__ import annotations

import asyncpg

from inference_server.schemas import HouseholdContext
from inference_server.store import context


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
