"""A component that dies stops the server with a non-zero exit status (issue 13, item 16): a
supervisor restarts a process that failed, not one that says it finished (systemd's
``Restart=on-failure``). A requested stop is still status 0. The subprocess version of this is in
tests/reliability/test_poison_job.py."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from inference_server.__main__ import _serve
from inference_server.config import Settings
from inference_server.store.retention import RetentionWorker

from .conftest import running


async def _crash() -> None:
    await asyncio.sleep(0.05)
    raise RuntimeError("made to crash by the test")


async def _quit() -> None:
    await asyncio.sleep(0.05)


async def test_a_crashed_component_stops_the_server_with_status_1(make_settings: Callable[..., Settings]) -> None:
    async with running(make_settings(role="api")) as server:
        assert server.failure is None and server.exit_status == 0
        server._spawn(_crash(), "boom")
        await asyncio.wait_for(server.wait_stopped(), 10)
        assert server.failure == "component boom crashed: RuntimeError('made to crash by the test')"
        assert server.exit_status == 1


async def test_a_component_that_returns_while_running_is_a_failure(make_settings: Callable[..., Settings]) -> None:
    async with running(make_settings(role="api")) as server:
        server._spawn(_quit(), "quitter")
        await asyncio.wait_for(server.wait_stopped(), 10)
        assert server.failure == "component quitter ended unexpectedly" and server.exit_status == 1


async def test_a_requested_stop_is_status_0(make_settings: Callable[..., Settings]) -> None:
    async with running(make_settings(role="api")) as server:
        await asyncio.sleep(0.2)
    assert server.failure is None and server.exit_status == 0


async def test_serve_returns_1_when_a_component_crashes(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    async def crash(self: RetentionWorker, stop: asyncio.Event) -> None:
        raise RuntimeError("retention made to crash by the test")

    monkeypatch.setattr(RetentionWorker, "run", crash)
    assert await asyncio.wait_for(_serve(make_settings(role="api")), 60) == 1
