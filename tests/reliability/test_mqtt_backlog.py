"""MQTT ingest holds back instead of dropping: a backlog far larger than the server's queue, and a
burst while it runs, all become images with jobs; nothing is refused for lack of room.

The server is stopped (SIGTERM) after its persistent session exists; an edge node publishes
``BACKLOG`` distinct small JPEGs (QoS 1) to the ingest topic of an existing camera, which
mosquitto keeps for the session (``max_queued_messages``, 1000 by default). When the server
starts, mosquitto sends them as fast as its in-flight window (20) allows; the server's queue holds
16, so the server stops reading until there is room and the broker keeps the rest. Then a burst of ``BURST`` more
while it runs. Every image is stored once, none is quarantined, and the ingest client is never
disconnected on the way (the waits stay far below the keepalive).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest

from tests.support.waiting import wait_until

from ..server.ingest.test_mqtt_ingest import publish_burst, small_jpeg
from .conftest import ServerProcess, server_env

pytestmark = pytest.mark.slow

BACKLOG = 250
BURST = 250


async def test_a_backlog_and_a_burst_far_larger_than_the_ingest_queue_are_stored_whole(
    tmp_path: Path, database_url: str, mosquitto_url: str, server_process: list[ServerProcess]
) -> None:
    log = tmp_path / "server.log"
    env = server_env(tmp_path / "data", database_url, mosquitto_url, HSI_ROLE="api", HSI_MQTT_PREFIX="backlog")
    server = ServerProcess(env, log)
    server_process.append(server)
    db = await asyncpg.connect(database_url)

    def subscriptions() -> int:
        return log.read_text(errors="replace").count("mqtt ingest subscribed")

    async def jobs(n: int) -> bool:
        return bool(await db.fetchval("SELECT count(*) = $1 FROM jobs", n))

    try:
        server.start()
        await wait_until(lambda: subscriptions() == 1, 90)  # the persistent session exists
        await db.execute("INSERT INTO cameras (id, name, folder) VALUES ('porch', 'Porch', 'porch')")
        assert server.stop() == 0, server.tail()

        backlog = [small_jpeg(n) for n in range(BACKLOG)]
        await publish_burst(mosquitto_url, "backlog/ingest/porch", backlog)
        assert await db.fetchval("SELECT count(*) FROM images") == 0

        server.start()
        await wait_until(lambda: jobs(BACKLOG), 120)
        assert await db.fetch("SELECT reason, detail FROM quarantine") == []

        burst = [small_jpeg(n) for n in range(BACKLOG, BACKLOG + BURST)]
        await publish_burst(mosquitto_url, "backlog/ingest/porch", burst)
        await wait_until(lambda: jobs(BACKLOG + BURST), 120)
        await asyncio.sleep(1)  # a duplicate or a stray redelivery would show up now

        assert await db.fetchval("SELECT count(DISTINCT sha256) FROM images WHERE source = 'mqtt'") == BACKLOG + BURST
        assert await db.fetchval("SELECT count(*) FROM images") == BACKLOG + BURST
        assert await db.fetch("SELECT reason, detail FROM quarantine") == []
        # One subscription per start: the ingest client was never dropped while paho waited.
        assert subscriptions() == 2
        assert "mqtt ingest disconnected" not in log.read_text(errors="replace")
        assert server.stop() == 0, server.tail()
    finally:
        await db.close()
