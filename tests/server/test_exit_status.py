"""A component that dies stops the server with a non-zero exit status (issue 13, item 16): a
supervisor restarts a process that failed, not one that says it finished (systemd's
``Restart=on-failure``). A requested stop is still status 0. The subprocess version of this is in
tests/reliability/test_poison_job.py."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

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


#: The real ``serve`` with its watchdog at 1 s, around a Server whose stop is stuck in a blocking
#: call (as a thread stuck in a library would hold it), or whose stop returns but leaves a thread
#: the interpreter waits for at exit: stand-ins for the hang, nothing else.
_STUCK = """
import asyncio, sys, threading, time
import inference_server.__main__ as main
import inference_server.server as server
from inference_server.config import Settings

class Stuck(server.Server):
    async def start(self): pass
    async def wait_stopped(self): pass
    async def stop(self):
        if sys.argv[2] == "stop":
            time.sleep(120)
        else:
            threading.Thread(target=time.sleep, args=(120,)).start()  # joined by threading._shutdown

main.STOP_WATCHDOG_S = 1.0
server.Server = Stuck
sys.exit(asyncio.run(main._serve(Settings(data_dir=sys.argv[1]), watchdog=True)))
"""


@pytest.mark.parametrize(("where", "stack"), [("stop", "in stop"), ("exit", "in _shutdown")])
def test_a_stop_that_hangs_dumps_every_thread_and_exits_1(tmp_path: Path, where: str, stack: str) -> None:
    """A server that cannot finish its stop, or whose process cannot end after it, is not left
    half-stopped (and never restarted by its supervisor): past the watchdog it writes where each
    thread is to stderr and exits 1."""
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", _STUCK, str(tmp_path), where], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 1, done.stderr[-2000:]
    assert time.monotonic() - started < 30, "the watchdog did not end it"
    assert "Timeout (0:00:01)!" in done.stderr and stack in done.stderr, done.stderr[-2000:]
