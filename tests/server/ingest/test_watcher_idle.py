"""ingest/watcher.py: an idle folder watcher waits for a file instead of turning every tick."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from inference_server import demo_assets
from inference_server.config import Settings
from inference_server.ingest import watcher
from tests.server.conftest import drop, running
from tests.support.waiting import wait_until


class _CountedSleeps:
    """``asyncio`` as the watcher module sees it, counting its ``sleep`` calls."""

    def __init__(self) -> None:
        self.sleeps = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(asyncio, name)

    async def sleep(self, delay: float) -> None:
        self.sleeps += 1
        await asyncio.sleep(delay)


async def test_an_idle_watcher_sleeps_until_a_file_comes(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With nothing pending the check loop used to wake every ``file_stable_s / 4`` (50 times a
    second at 0.05 s) to find nothing: CPU a home server spends all day. It now waits for the
    notifier to see a file (or the next full rescan), and still takes a file dropped after it."""
    settings = make_settings(file_stable_s=0.05)
    async with running(settings) as server:
        counted = _CountedSleeps()
        monkeypatch.setattr(watcher, "asyncio", counted)
        await asyncio.sleep(1.0)
        assert counted.sleeps == 0
        drop(demo_assets.image("bus.jpg"), settings.cameras_path / "porch" / "MDAlarm_20261124-100000.jpg")
        await wait_until(lambda: server.pool.fetchval("SELECT count(*) = 1 FROM jobs"))
        # While the file waited to be stable the loop ticked; with none left it waits again.
        assert counted.sleeps > 0
        idle_from = counted.sleeps
        await asyncio.sleep(1.0)
        assert counted.sleeps == idle_from
