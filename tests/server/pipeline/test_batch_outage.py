"""The batch stage's closing loop rides out a database going away (issue 13's guarantee)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import asyncpg

from inference_server.clock import SystemClock
from inference_server.config import Settings
from inference_server.pipeline.batch import BatchStage


async def test_a_connection_dropped_mid_operation_is_an_outage_not_a_crash(
    make_settings: Callable[..., Settings],
) -> None:
    """Seen in CI: PostgreSQL shutting down as the stage began a transaction left asyncpg's
    protocol mid-operation (``InternalClientError``); the stage crashed and took the server down.
    It backs off and tries again, as for any outage."""
    stage = object.__new__(BatchStage)  # only the loop: its settings, clock, next look and close_due
    stage.settings = make_settings(batch_idle_s=0.2)
    stage.clock = SystemClock()
    stage._next_look = None
    stage._look_sooner = asyncio.Event()
    stop = asyncio.Event()
    calls = 0

    async def close_due() -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise asyncpg.exceptions.InternalClientError("cannot switch to state 15; another operation is in progress")
        stop.set()
        return 0

    stage.close_due = close_due  # type: ignore[method-assign]
    await asyncio.wait_for(stage.run(stop), 30)
    assert calls == 2
