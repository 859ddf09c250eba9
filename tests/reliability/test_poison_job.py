"""One bad job must not stop the server, and a server that does stop on a failure says so (issue 13,
items 1 and 16).

A poison job: an image whose capture time is at the end of the calendar (year 1 in UTC; 9999-12-31
in Europe/Berlin is year 10000), written straight into the database as rows from before the upload
check existed would be. Storing its result raises (``OverflowError``: the conversion to the camera's
time zone overflows). That used to stop the detect stage, and with it the process (exit status 0);
after a restart the job was claimed again and the server died again, forever. Now the job fails
(retried after the queue's backoff, then dead-lettered with the error), and the images around it are
processed as usual by the same, still running, process.

A component that really dies (here the retention worker, made to raise) stops the process with a
non-zero exit status, so that a supervisor (systemd ``Restart=on-failure``) restarts it.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest

from inference_server import demo_assets
from inference_server.store.migrate import migrate
from tests.support.waiting import wait_until

from ..server.conftest import enqueue_stored
from .conftest import ServerProcess, put_file, server_env, unique_jpeg

pytestmark = pytest.mark.slow

POISON_TIMES = [datetime(1, 1, 1, tzinfo=UTC), datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)]


async def _insert_poison(db: asyncpg.Connection, folder: Path, n: int, captured_at: datetime) -> int:
    """A real photo with people (so its result goes through the store stage) whose row carries a
    ``captured_at`` the upload check now refuses."""
    data = unique_jpeg(demo_assets.image("bus.jpg"), 900_000 + n)
    return await enqueue_stored(db, "porch", folder / f"poison-{n}.jpg", data, captured_at=captured_at)


async def test_a_poison_job_is_dead_lettered_and_the_server_keeps_processing(
    tmp_path: Path, database_url: str, mosquitto_url: str, server_process: list[ServerProcess]
) -> None:
    data = tmp_path / "data"
    cameras = data / "cameras"
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    assert pool is not None
    await migrate(pool)
    db = await asyncpg.connect(database_url)
    try:
        # Queued before the server starts: the first thing it claims, as after a restart.
        await db.execute("INSERT INTO cameras (id, name, folder) VALUES ('porch', 'Porch', 'porch')")
        outside = tmp_path / "stored"
        outside.mkdir()
        poison = [await _insert_poison(db, outside, n, when) for n, when in enumerate(POISON_TIMES)]

        env = server_env(
            data,
            database_url,
            mosquitto_url,
            HSI_DETECTOR_IMGSZ="320",
            HSI_CAMERA_TIMEZONE="Europe/Berlin",
            HSI_JOB_MAX_ATTEMPTS="3",
            HSI_JOB_BACKOFF_BASE_S="0.5",
        )
        server = ServerProcess(env, tmp_path / "server.log")
        server_process.append(server)
        server.start()
        await wait_until(server.api_url, 120, 0.2)

        sources = [demo_assets.image("bus.jpg"), demo_assets.image("zidane.jpg")]
        # Good images of the same camera while the poison jobs are being retried...
        for n in range(4):
            put_file(cameras / "porch" / f"MDAlarm_20261124-0210{n:02d}.jpg", unique_jpeg(sources[n % 2], n))
            await asyncio.sleep(0.3)

        async def poison_dead() -> bool:
            states = await db.fetch("SELECT state FROM jobs WHERE id = ANY($1::bigint[])", poison)
            return all(r["state"] == "dead" for r in states)

        await wait_until(poison_dead, 120, 0.2)
        assert server.alive(), server.tail()
        # ...and after they are dead-lettered.
        for n in range(4, 6):
            put_file(cameras / "porch" / f"MDAlarm_20261124-0210{n:02d}.jpg", unique_jpeg(sources[n % 2], n))

        async def good_done() -> bool:
            n = await db.fetchval(
                "SELECT count(*) FROM jobs WHERE state = 'done' AND NOT (id = ANY($1::bigint[]))", poison
            )
            return bool(n == 6)

        await wait_until(good_done, 120, 0.2)
        assert server.alive(), server.tail()

        for job_id in poison:
            row = await db.fetchrow("SELECT state, attempts, last_error FROM jobs WHERE id = $1", job_id)
            assert row is not None
            print(f"poison job {job_id}: {dict(row)}")
            # Retried with the queue's backoff until its attempts were used up, then dead, with the error.
            assert row["state"] == "dead" and row["attempts"] == 3, dict(row)
            assert row["last_error"].startswith("store: "), dict(row)
            assert "Error" in row["last_error"], dict(row)
        assert (
            await db.fetchval(
                "SELECT count(*) FROM jobs WHERE state <> 'done' AND NOT (id = ANY($1::bigint[]))", poison
            )
            == 0
        )
        # The good images' people reached events.
        assert await db.fetchval("SELECT count(*) FROM events WHERE camera_id = 'porch'") >= 1

        log = server.log.read_text(errors="replace")
        assert "component crashed" not in log
        for job_id in poison:
            assert f"storing result failed job_id={job_id} camera_id=porch" in log
        assert server.starts == 1 and server.alive()
        assert server.stop() == 0, server.tail()
    finally:
        await db.close()
        await pool.close()


_CRASHING_SERVER = textwrap.dedent(
    """
    import sys

    from inference_server import __main__ as cli
    from inference_server.store.retention import RetentionWorker


    async def crash(self, stop):
        raise RuntimeError("retention made to crash by the test")


    RetentionWorker.run = crash
    sys.exit(cli.main(["serve"]))
    """
)


def test_a_crashed_component_exits_non_zero(tmp_path: Path, database_url: str, mosquitto_url: str) -> None:
    """``python -m inference_server serve`` whose retention worker raises: the process stops on its
    own, cleanly (the database pool and broker connections closed), with exit status 1."""
    env = server_env(tmp_path / "data", database_url, mosquitto_url, HSI_ROLE="api")
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        proc = subprocess.run(
            [sys.executable, "-c", _CRASHING_SERVER], env=env, stdout=out, stderr=subprocess.STDOUT, timeout=120
        )
    text = log.read_text(errors="replace")
    assert proc.returncode == 1, text[-4000:]
    assert "component crashed, stopping task=retention" in text
    assert "RuntimeError: retention made to crash by the test" in text
    assert "exiting with status 1: component retention crashed" in text
    assert "server stopped" in text
