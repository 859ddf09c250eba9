"""The MQTT broker goes away mid-run and comes back (same port, persistence on): nothing is lost.

Events created while the broker is down wait in the outbox and are delivered after it returns,
in order per camera, to a persistent-session QoS 1 subscriber. ``hsi/availability``: a broker
restart does not fire the server's will (the broker never saw the connection drop), so what is
checked is that the server publishes ``online`` again on reconnect, that the broker publishes the
will ``offline`` when the server dies (SIGKILL), and ``online`` again when it is restarted.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import asyncpg
import pytest

from inference_server import demo_assets
from tests.support.mosquitto import RestartableMosquitto
from tests.support.mqtt import PersistentSubscriber
from tests.support.waiting import wait_until

from .conftest import ServerProcess, put_file, server_env, unique_jpeg

pytestmark = pytest.mark.slow

CAMERAS = ["front", "garden"]


async def _drop(cameras: Path, first: int, count: int) -> None:
    source = demo_assets.image("zidane.jpg")
    for n in range(first, first + count):
        name = f"MDAlarm_20261124-{(n // 60) % 24:02d}{n % 60:02d}00.jpg"
        put_file(cameras / CAMERAS[n % len(CAMERAS)] / name, unique_jpeg(source, n))
        await asyncio.sleep(0.5)  # longer than the batch idle time: most images make their own event


def _event_messages(subscriber: PersistentSubscriber) -> list[tuple[str, str, str]]:
    """(camera, event id, type) of every ``hsi/events`` message received, in arrival order."""
    out = []
    for topic, payload, _ in subscriber.messages():
        if topic == "hsi/events":
            message = json.loads(payload)
            out.append((message["camera_id"], message["id"], message["type"]))
    return out


def _per_camera_first_occurrences(payloads: list[str | bytes]) -> dict[str, list[str]]:
    """Each camera's distinct ``hsi/events`` messages (whole payloads), in order of first occurrence.

    An event may publish several ``update``s (a rescoring while its activity goes on), and QoS 1
    may deliver a message twice; what must hold is that every message arrives, in order.
    """
    out: dict[str, list[str]] = {}
    for payload in payloads:
        message = json.loads(payload)
        key = json.dumps(message, sort_keys=True)
        seen = out.setdefault(message["camera_id"], [])
        if key not in seen:
            seen.append(key)
    return out


def _availability(subscriber: PersistentSubscriber) -> list[bytes]:
    return [payload for topic, payload, _ in subscriber.messages() if topic == "hsi/availability"]


async def test_events_created_while_the_broker_is_down_are_delivered_in_order_afterwards(
    tmp_path: Path,
    database_url: str,
    restartable_mosquitto: RestartableMosquitto,
    server_process: list[ServerProcess],
) -> None:
    broker = restartable_mosquitto
    data = tmp_path / "data"
    cameras = data / "cameras"
    server = ServerProcess(
        server_env(data, database_url, broker.url, HSI_DETECTOR_IMGSZ="320", HSI_BATCH_WINDOW_S="2"),
        tmp_path / "server.log",
    )
    server_process.append(server)
    subscriber = PersistentSubscriber(broker.url).wait_subscribed()
    db = await asyncpg.connect(database_url)
    try:
        server.start()
        await wait_until(lambda: _availability(subscriber)[-1:] == [b"online"], 90)
        await _drop(cameras, 0, 10)
        await wait_until(lambda: len({e for _, e, t in _event_messages(subscriber) if t == "new"}) >= 3, 90)

        broker.stop()
        # Home Assistant comes back only after the server has sent everything: what was
        # published meanwhile must wait in its persistent session, across the broker's restart.
        subscriber.stay_away()
        await _drop(cameras, 10, 10)
        # The images are processed and their events committed while nothing can be published.
        await wait_until(
            lambda: db.fetchval(
                "SELECT count(*) = 20 FROM jobs WHERE state = 'done'"
                " AND NOT EXISTS (SELECT 1 FROM batches WHERE closed_at IS NULL)"
            ),
            90,
        )
        waiting = await db.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL AND topic = 'hsi/events'")
        assert waiting > 0
        received_before = len(subscriber.messages())
        online_before = _availability(subscriber).count(b"online")
        await asyncio.sleep(2)  # stay down a while: the server keeps retrying
        broker.start()

        # Everything is delivered once the broker is back, and the server says it is online again.
        await wait_until(lambda: db.fetchval("SELECT count(*) = 0 FROM outbox WHERE sent_at IS NULL"), 90)
        subscriber.come_back()
        await wait_until(lambda: _availability(subscriber).count(b"online") > online_before, 30)
        assert len(subscriber.messages()) > received_before
        sent = await db.fetch("SELECT payload FROM outbox WHERE topic = 'hsi/events' ORDER BY id")
        expected = _per_camera_first_occurrences([row["payload"] for row in sent])
        events = {str(r["id"]) for r in await db.fetch("SELECT id FROM events")}
        assert len(events) >= 4

        def first_arrivals() -> dict[str, list[str]]:
            return _per_camera_first_occurrences(
                [payload for topic, payload, _ in subscriber.messages() if topic == "hsi/events"]
            )

        await wait_until(lambda: first_arrivals() == expected, 30, what="every outbox message, in order per camera")
        assert {e for _, e, _ in _event_messages(subscriber)} == events

        # The will: the broker announces ``offline`` when the server dies, ``online`` when it is back.
        server.kill()
        await wait_until(lambda: _availability(subscriber)[-1:] == [b"offline"], 30)
        server.start()
        await wait_until(lambda: _availability(subscriber)[-1:] == [b"online"], 90)
        assert server.stop() == 0, server.tail()
        await wait_until(lambda: _availability(subscriber)[-1:] == [b"offline"], 30)
    finally:
        await db.close()
        subscriber.close()
