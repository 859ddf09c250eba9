"""The process's event loop: uvloop by default, asyncio's own on request, and asyncio's own as a
labelled fallback (log and status) where uvloop cannot be imported."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import uvloop

from inference_server import demo_assets, event_loop
from inference_server.config import Settings
from inference_server.schemas import CameraCreate
from inference_server.store import cameras
from tests.reliability.conftest import server_env
from tests.server.conftest import coco_settings, running
from tests.support.mqtt import Subscriber
from tests.support.waiting import wait_until


def _start_server(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "inference_server", "serve"], env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT
    )


async def _pool_thread_name() -> str:
    return await asyncio.to_thread(lambda: threading.current_thread().name)


@pytest.mark.parametrize("choice", ["uvloop", "asyncio"])
def test_the_loop_asked_for_runs_with_asyncios_thread_names(choice: event_loop.EventLoopChoice) -> None:
    async def main() -> tuple[str, str, bool]:
        loop = asyncio.get_running_loop()
        return event_loop.describe(), await _pool_thread_name(), isinstance(loop, uvloop.Loop)

    described, thread, on_uvloop = event_loop.run(main(), choice)
    assert on_uvloop == (choice == "uvloop")
    assert described == (f"uvloop {uvloop.__version__}" if choice == "uvloop" else "asyncio")
    # uvloop's own default executor names its threads ThreadPoolExecutor-N_M: the pool keeps asyncio's names.
    assert thread.startswith("asyncio_")


def test_without_uvloop_the_loop_is_asyncios_labelled_a_fallback(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop raises ImportError

    async def main() -> tuple[str, bool]:
        return event_loop.describe(), isinstance(asyncio.get_running_loop(), uvloop.Loop)

    with caplog.at_level(logging.WARNING, logger="inference_server.event_loop"):
        described, on_uvloop = event_loop.run(main(), "uvloop")
    assert not on_uvloop
    assert described.startswith("asyncio (fallback: uvloop not importable: ")
    assert any("fallback" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    # Asking for asyncio's loop is no fallback.
    assert event_loop.run(main(), "asyncio")[0] == "asyncio"


@pytest.mark.parametrize("uvloop_importable", [True, False], ids=["uvloop", "no-uvloop"])
async def test_serve_names_its_event_loop_in_the_log_and_the_status(
    tmp_path: Path, database_url: str, mosquitto_url: str, uvloop_importable: bool
) -> None:
    data = tmp_path / "data"
    # A prefix of its own: the broker keeps another test's retained status.
    prefix = f"loop-{uuid.uuid4().hex[:8]}"
    env = server_env(
        data, database_url, mosquitto_url, HSI_STATUS_INTERVAL_S="0.5", HSI_ROLE="api", HSI_MQTT_PREFIX=prefix
    )
    if not uvloop_importable:
        # A package named uvloop ahead of site-packages whose import fails, as on a platform
        # without its wheel.
        blocker = tmp_path / "blocker" / "uvloop"
        blocker.mkdir(parents=True)
        (blocker / "__init__.py").write_text("raise ImportError('no uvloop on this platform (test)')\n")
        env["PYTHONPATH"] = f"{blocker.parent}:{env.get('PYTHONPATH', '')}"
    log = tmp_path / "server.log"
    subscriber = await Subscriber(mosquitto_url, f"{prefix}/status").ready()
    server = _start_server(env, log)
    try:
        message = await subscriber.wait_for(lambda m: b"event_loop" in m.payload, timeout=60)
    finally:
        server.terminate()
        assert server.wait(30) == 0, log.read_text()[-3000:]
        subscriber.close()
    status = json.loads(message.payload)
    text = log.read_text()
    if uvloop_importable:
        assert status["event_loop"] == f"uvloop {uvloop.__version__}"
        assert f"event_loop='uvloop {uvloop.__version__}'" in text
        assert "fallback" not in text
    else:
        assert status["event_loop"] == "asyncio (fallback: uvloop not importable: no uvloop on this platform (test))"
        assert "event loop: asyncio (fallback: uvloop not importable: no uvloop on this platform (test))" in text


async def test_the_servers_periodic_looks_wake_it_together(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The status and the job poll each waited their whole interval from their own last run, so
    their phases drifted apart (a picture restarts the poll's wait): two wake-ups where one
    would do, each paying for a cold cache (docs/performance.md, stop 47). Now each waits for the
    loop clock's next multiple of its period (``event_loop.until_next``): after a picture stored
    half-way through a second, both still look at whole seconds, in the same wake-up."""
    settings = make_settings(**coco_settings(), detector_backend="onnx", status_interval_s=1.0, job_poll_interval_s=1.0)
    looks: dict[str, list[float]] = {"status": [], "poll": []}
    async with running(settings) as server:
        ingestor, worker = server.ingestor, server.detect_worker
        assert ingestor is not None and worker is not None
        loop = asyncio.get_running_loop()
        status, claim = server.status.current, worker.queue.claim

        async def timed_status() -> Any:
            looks["status"].append(loop.time())
            return await status()

        async def timed_claim(limit: int) -> Any:
            looks["poll"].append(loop.time())
            return await claim(limit)

        monkeypatch.setattr(server.status, "current", timed_status)
        monkeypatch.setattr(worker.queue, "claim", timed_claim)
        await cameras.create(server.pool, CameraCreate(id="front", name="front"))
        await wait_until(worker.wants_job, 30, what="the worker waiting")
        await asyncio.sleep(1.5 - loop.time() % 1.0)  # half-way through a second
        stored = loop.time()
        picture = demo_assets.image("bus.jpg").read_bytes()
        await ingestor.ingest_bytes("front", picture, captured_at=None, original_name=None)
        done = "SELECT count(*) FROM jobs WHERE state = 'done'"
        await wait_until(lambda: server.pool.fetchval(done), 30, what="the picture stored")
        await asyncio.sleep(3.2)
    for name, times in looks.items():
        later = [t for t in times if t > stored + 1.0]
        assert len(later) >= 2, (name, times)
        # Each on a whole second of the loop's clock (timers fire a little late, never much).
        assert all(min(t % 1.0, 1.0 - t % 1.0) < 0.15 for t in later), (name, [round(t % 1.0, 3) for t in later])


class _StoppedClock(asyncio.SelectorEventLoop):
    """asyncio's loop with its clock held at ``now`` (uvloop's counts whole milliseconds)."""

    def __init__(self, now: float) -> None:
        super().__init__()
        self.now = now

    def time(self) -> float:
        return self.now


async def _until_next(period_s: float, at_least_s: float = 0.0) -> float:
    return event_loop.until_next(period_s, at_least_s)


@pytest.mark.parametrize(("now", "expected"), [(1000.0, 1.0), (999.999, 1.001), (1000.25, 0.75), (1000.997, 0.003)])
def test_a_beat_the_clock_is_at_or_a_millisecond_short_of_counts_as_reached(now: float, expected: float) -> None:
    """At a whole second (or a millisecond short of it, a uvloop timer fired early) the next beat
    is the following one: "0 s" had the batch closer look again at once, over and over, until the
    clock's next millisecond (stop 49's CI: 295 looks in 2.5 s)."""
    loop = _StoppedClock(now)
    try:
        assert loop.run_until_complete(_until_next(1.0)) == pytest.approx(expected, abs=1e-6)
        assert loop.run_until_complete(_until_next(10.0, at_least_s=5.0)) >= 5.0
    finally:
        loop.close()
