"""A server killed with SIGKILL while it holds a job loses nothing: after a restart the job is
reclaimed when its lease expires and the image yields exactly one event."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

from inference_server import demo_assets
from inference_server.store.migrate import available_migrations
from tests.reliability.conftest import server_env
from tests.support.mqtt import Subscriber
from tests.support.waiting import wait_until

from .conftest import drop


def _start_server(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "inference_server", "serve"],
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


async def test_job_is_reclaimed_after_sigkill_and_yields_exactly_one_event(
    tmp_path: Path, database_url: str, mosquitto_url: str
) -> None:
    data = tmp_path / "data"
    env = server_env(data, database_url, mosquitto_url)
    log = tmp_path / "server.log"
    subscriber = await Subscriber(mosquitto_url, "hsi/events").ready()
    blocker = await asyncpg.connect(database_url)
    first = _start_server(env, log)
    try:
        # Wait for the first server to have migrated the schema, then hold the detections table:
        # the worker can claim and infer, but its result transaction waits on this lock.
        # Every migration, not only the table: a later one that touches detections would otherwise
        # wait on this lock, and the server would never start.
        latest = available_migrations()[-1].version

        async def migrated() -> bool:
            if not await blocker.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL"):
                return False
            return bool(await blocker.fetchval("SELECT max(version) = $1 FROM schema_migrations", latest))

        await wait_until(migrated, timeout=60, what="the schema migrated")
        holding = blocker.transaction()
        await holding.start()
        await blocker.execute("LOCK TABLE detections IN ACCESS EXCLUSIVE MODE")

        drop(demo_assets.image("zidane.jpg"), data / "cameras" / "hall" / "MDAlarm_20261124-031500.jpg")
        claimed = await wait_until(
            lambda: blocker.fetchrow("SELECT id, attempts, worker_id FROM jobs WHERE state = 'running'"), timeout=60
        )
        assert claimed["attempts"] == 1
        first.send_signal(signal.SIGKILL)
        assert first.wait(10) == -signal.SIGKILL

        second = _start_server(env, log)
        try:
            await holding.rollback()  # the dead worker's transaction is aborted by PostgreSQL
            done = await wait_until(
                lambda: blocker.fetchrow(
                    "SELECT attempts, worker_id FROM jobs WHERE id = $1 AND state = 'done'", claimed["id"]
                ),
                timeout=90,
            )
            assert done["attempts"] == 2
            assert done["worker_id"] != claimed["worker_id"]
            await wait_until(lambda: blocker.fetchval("SELECT count(*) > 0 FROM events WHERE ended_at IS NOT NULL"))
            events = await blocker.fetch("SELECT id FROM events")
            assert len(events) == 1
            assert await blocker.fetchval("SELECT count(*) FROM detections") == 2
            message = await subscriber.wait_for(lambda m: m.topic == "hsi/events", timeout=30)
            assert str(events[0]["id"]) in message.payload.decode()
        finally:
            second.send_signal(signal.SIGTERM)
            try:
                code = second.wait(30)
            except subprocess.TimeoutExpired:
                second.kill()  # not left running past the test; its log says where it stopped
                pytest.fail(f"the server did not stop within 30 s of SIGTERM:\n{log.read_text()[-3000:]}")
            assert code == 0, log.read_text()[-3000:]
    finally:
        if first.poll() is None:
            first.kill()
        await blocker.close()
        subscriber.close()
