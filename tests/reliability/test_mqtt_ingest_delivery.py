"""MQTT ingest is at least once: images published while the server is down, or held by it when
it dies, reach the database when it comes back.

The ingest client keeps a persistent session under a client id that survives restarts and
acknowledges a message only after its image is committed. So the broker keeps what arrives while
the server is away (SIGKILL, then a restart) and delivers again what was never acknowledged; a
redelivered image is recognised by its hash (one image, one job).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest

from inference_server import demo_assets
from tests.support.waiting import wait_until

from .conftest import EdgeNode, ServerProcess, server_env, unique_jpeg

pytestmark = pytest.mark.slow


async def test_images_published_while_the_server_is_down_are_ingested_when_it_returns(
    tmp_path: Path, database_url: str, mosquitto_url: str, server_process: list[ServerProcess]
) -> None:
    source = demo_assets.image("zidane.jpg")
    log = tmp_path / "server.log"
    server = ServerProcess(server_env(tmp_path / "data", database_url, mosquitto_url, HSI_DETECTOR_IMGSZ="320"), log)
    server_process.append(server)
    edge = EdgeNode(mosquitto_url)
    db = await asyncpg.connect(database_url)
    try:
        server.start()
        await wait_until(lambda: "mqtt ingest subscribed" in log.read_text(errors="replace"), 90)
        await db.execute("INSERT INTO cameras (id, name, folder) VALUES ('porch', 'Porch', 'porch')")
        for n in range(2):
            await edge.publish("hsi/ingest/porch", unique_jpeg(source, n))
        await wait_until(lambda: db.fetchval("SELECT count(*) = 2 FROM jobs WHERE state = 'done'"), 90)

        # Down hard; the edge node keeps publishing (the broker acknowledges and keeps them).
        server.kill()
        for n in range(2, 7):
            await edge.publish("hsi/ingest/porch", unique_jpeg(source, n))
        # And one more that is the same bytes as an image already stored: still one image.
        await edge.publish("hsi/ingest/porch", unique_jpeg(source, 0))
        assert await db.fetchval("SELECT count(*) FROM images") == 2

        server.start()
        await wait_until(lambda: db.fetchval("SELECT count(*) = 7 FROM jobs WHERE state = 'done'"), 120)
        await asyncio.sleep(1)  # a duplicate or a stray redelivery would show up now
        assert await db.fetchval("SELECT count(*) FROM images") == 7
        assert await db.fetchval("SELECT count(*) FROM jobs") == 7
        assert await db.fetch("SELECT reason FROM quarantine") == []
        assert server.stop() == 0, server.tail()
    finally:
        await db.close()
        edge.close()
