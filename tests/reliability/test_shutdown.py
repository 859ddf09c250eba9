"""SIGTERM at any moment of start-up stops the server cleanly (exit 0), as s6 or Docker expect,
and with a backlog it stops at once, leaving nothing leased.

A service manager stops the add-on whenever the user restarts it, which can be while the model is
still loading. The signal handlers are installed before start-up; a stop asked for during it lets
the start finish (nothing half-opened is leaked) and then stops at once.
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import asyncpg
import pytest

from inference_server import demo_assets
from inference_server.__main__ import STOP_WATCHDOG_S
from tests.support.waiting import wait_until

from .conftest import ServerProcess, put_file, server_env, unique_jpeg

pytestmark = pytest.mark.slow


async def test_sigterm_during_start_up_exits_cleanly(tmp_path: Path, database_url: str, mosquitto_url: str) -> None:
    log = tmp_path / "server.log"
    server = ServerProcess(server_env(tmp_path / "data", database_url, mosquitto_url), log)
    server.start()
    assert server.proc is not None
    try:
        # After the database is ready the model still has to load: well inside start-up.
        await wait_until(lambda: "database ready" in log.read_text(errors="replace"), 60, interval=0.01)
        assert "server started" not in log.read_text()
        server.proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(server.proc.wait, 60)
    finally:
        if server.alive():
            server.proc.kill()
    text = log.read_text(errors="replace")
    assert code == 0, text[-3000:]
    assert "stop requested during start-up" in text
    assert "server stopped" in text


async def test_sigterm_with_a_backlog_exits_at_once_and_leaves_no_job_leased(
    tmp_path: Path, database_url: str, mosquitto_url: str, server_process: list[ServerProcess]
) -> None:
    """SIGTERM while images are queued, as a restart of the add-on does: exit 0 within the
    supervisor's patience, no job left leased (leases of 600 s here: a restarted server would wait
    them out), and the next start processes every image, none of them having lost an attempt to
    the stop (what was claimed but not run went back with its attempt)."""
    data = tmp_path / "data"
    cameras = data / "cameras"
    log = tmp_path / "server.log"
    env = server_env(
        data, database_url, mosquitto_url, HSI_JOB_LEASE_S="600", HSI_DETECTOR_IMGSZ="320", HSI_DETECTOR_BATCH_SIZE="4"
    )
    server = ServerProcess(env, log)
    server_process.append(server)
    sources = [demo_assets.image("bus.jpg"), demo_assets.image("zidane.jpg")]
    db = await asyncpg.connect(database_url)
    try:
        server.start()
        await wait_until(lambda: db.fetchval("SELECT to_regclass('outbox') IS NOT NULL"), 90)
        for n in range(40):
            put_file(cameras / "front" / f"MDAlarm_20261124-1200{n:02d}.jpg", unique_jpeg(sources[n % 2], n))
        await wait_until(lambda: db.fetchval("SELECT count(*) >= 4 FROM jobs WHERE state = 'done'"), 120)
        started = time.monotonic()
        code = await asyncio.to_thread(server.stop)
        took = time.monotonic() - started
        text = log.read_text(errors="replace")
        assert code == 0, text[-3000:]
        assert took < STOP_WATCHDOG_S, f"the stop took {took:.1f} s"
        assert await db.fetchval("SELECT count(*) FROM jobs WHERE state = 'running'") == 0, text[-3000:]

        server.start()
        await wait_until(lambda: db.fetchval("SELECT count(*) = 40 FROM jobs WHERE state = 'done'"), 180)
        assert await db.fetchval("SELECT max(attempts) FROM jobs") == 1
    finally:
        await db.close()
