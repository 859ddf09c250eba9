"""MQTT ingest (docs/architecture.md, ``hsi/ingest/<camera>``): real brokers, real images → job → event."""

from __future__ import annotations

import asyncio
import hashlib
import io
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from PIL import Image

from inference_server import demo_assets, schemas
from inference_server.comms.mqtt import BrokerAddress
from inference_server.config import Settings
from inference_server.detection.ultralytics_backend import UltralyticsDetector
from inference_server.server import Server, ingest_client_id
from inference_server.store import cameras
from tests.support.waiting import wait_until

from ..conftest import running
from .conftest import broken_huffman_jpeg

ZIDANE = demo_assets.image("zidane.jpg").read_bytes()  # two people, 50 kB
BUS = demo_assets.image("bus.jpg").read_bytes()  # four people, 137 kB


async def publish(url: str, topic: str, payload: bytes) -> None:
    """Publish as an edge node would (QoS 1), returning once the broker acknowledged."""
    address = BrokerAddress.parse(url)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="edge-node-test")
    if address.username:
        client.username_pw_set(address.username, address.password)
    client.connect(address.host, address.port)
    client.loop_start()
    try:
        info = client.publish(topic, payload, qos=1)
        await asyncio.to_thread(info.wait_for_publish, 10)
        assert info.is_published()
    finally:
        client.disconnect()
        client.loop_stop()


async def ingest_ready(server: Server) -> None:
    assert server.mqtt_ingest is not None
    await asyncio.wait_for(server.mqtt_ingest.subscribed.wait(), 10)


async def add_camera(pool: asyncpg.Pool, camera_id: str, *, enabled: bool = True) -> None:
    assert await cameras.create(pool, schemas.CameraCreate(id=camera_id, name=camera_id, enabled=enabled))


async def event_for_image(pool: asyncpg.Pool, camera_id: str) -> dict[str, Any] | None:
    row = await pool.fetchrow(
        "SELECT i.source, i.media_type, j.state, e.objects FROM images i JOIN jobs j ON j.image_id = i.id"
        " LEFT JOIN events e ON e.camera_id = i.camera_id"
        " WHERE i.camera_id = $1",
        camera_id,
    )
    return dict(row) if row is not None and row["objects"] is not None else None


async def refusals(pool: asyncpg.Pool) -> list[tuple[str, str | None, str, int]]:
    rows = await pool.fetch("SELECT original_path, camera_id, reason, size_bytes, stored_path FROM quarantine")
    assert all(r["stored_path"] is None for r in rows)  # refused MQTT payloads are not kept
    return sorted((r["original_path"], r["camera_id"], r["reason"], r["size_bytes"]) for r in rows)


async def test_images_published_on_mosquitto_become_events_and_bad_ones_are_quarantined(
    make_settings: Callable[..., Settings], mosquitto_url: str, pose_detector: UltralyticsDetector
) -> None:
    # The limit sits between the two real images: zidane fits, bus is "too large".
    settings = make_settings(mqtt_url=mosquitto_url, mqtt_prefix="t1", max_image_bytes=len(ZIDANE) + 1000)
    async with running(settings, pose_detector) as server:
        await ingest_ready(server)
        await add_camera(server.pool, "porch")
        await add_camera(server.pool, "garage", enabled=False)
        await publish(mosquitto_url, "t1/ingest/porch", ZIDANE)
        await publish(mosquitto_url, "t1/ingest/porch", BUS)  # over the limit
        await publish(mosquitto_url, "t1/ingest/nowhere", ZIDANE)  # unknown camera
        await publish(mosquitto_url, "t1/ingest/garage", ZIDANE)  # detection switched off
        await publish(mosquitto_url, "t1/ingest/porch", broken_huffman_jpeg(ZIDANE))  # corrupt
        await publish(mosquitto_url, "t1/ingest/porch", b"")  # empty

        got = await wait_until(lambda: event_for_image(server.pool, "porch"), timeout=60)
        assert got["source"] == "mqtt" and got["media_type"] == "image/jpeg" and got["state"] == "done"
        assert _objects(got["objects"]) == {"person": 2}

        async def all_refused() -> list[tuple[str, str | None, str, int]] | None:
            found = await refusals(server.pool)
            return found if len(found) >= 5 else None

        assert await wait_until(all_refused, timeout=20) == sorted(
            [
                ("t1/ingest/porch", "porch", "too_large", len(BUS)),
                ("t1/ingest/nowhere", None, "unknown_camera", len(ZIDANE)),
                ("t1/ingest/garage", "garage", "camera_disabled", len(ZIDANE)),
                ("t1/ingest/porch", "porch", "corrupt_image", len(ZIDANE)),
                ("t1/ingest/porch", "porch", "empty_file", 0),
            ]
        )
        # Only the one good image was stored.
        assert await server.pool.fetchval("SELECT count(*) FROM images") == 1


async def test_embedded_amqtt_broker_ingest_and_switch_off(
    make_settings: Callable[..., Settings], pose_detector: UltralyticsDetector
) -> None:
    async with running(make_settings(mqtt_prefix="t2"), pose_detector) as server:
        await ingest_ready(server)
        await add_camera(server.pool, "yard")
        await publish(server.mqtt_url, "t2/ingest/yard", BUS)
        got = await wait_until(lambda: event_for_image(server.pool, "yard"), timeout=60)
        assert got["source"] == "mqtt" and _objects(got["objects"]) == {"person": 4}


async def test_mqtt_ingest_can_be_switched_off(make_settings: Callable[..., Settings], amqtt_url: str) -> None:
    settings = make_settings(mqtt_url=amqtt_url, mqtt_prefix="t3", mqtt_ingest_enabled=False, role="api")
    async with running(settings) as server:
        assert server.mqtt_ingest is None
        await add_camera(server.pool, "porch")
        await publish(amqtt_url, "t3/ingest/porch", ZIDANE)
        await asyncio.sleep(1.0)  # a subscribed server stores it well within this (see tests above)
        assert await server.pool.fetchval("SELECT count(*) FROM images") == 0


def _objects(value: Any) -> dict[str, int]:
    import json

    return dict(json.loads(value) if isinstance(value, str) else value)


def small_jpeg(n: int) -> bytes:
    """A distinct, valid 64×48 JPEG per ``n`` (the server de-duplicates identical bytes)."""
    out = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 120, 99)).save(out, "JPEG", quality=90)
    data, text = out.getvalue(), f"hsi-{n:08d}".encode()
    # The number in a comment segment (COM, 0xFFFE) after the start marker: same pixels, other bytes.
    return data[:2] + b"\xff\xfe" + (len(text) + 2).to_bytes(2, "big") + text + data[2:]


async def publish_burst(url: str, topic: str, payloads: list[bytes]) -> None:
    """Publish back to back (QoS 1, nothing awaited in between), then wait for every PUBACK."""
    address = BrokerAddress.parse(url)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="edge-node-burst")
    client.max_inflight_messages_set(0)  # as fast as the broker takes them
    client.max_queued_messages_set(0)
    client.connect(address.host, address.port)
    client.loop_start()
    try:
        infos = [client.publish(topic, payload, qos=1) for payload in payloads]
        for info in infos:
            await asyncio.to_thread(info.wait_for_publish, 30)
            assert info.is_published()
    finally:
        client.disconnect()
        client.loop_stop()


async def test_a_burst_larger_than_the_ingest_queue_waits_in_the_broker_and_is_stored_whole(
    make_settings: Callable[..., Settings], mosquitto_url: str
) -> None:
    # One place in the server's queue, mosquitto sends up to 20 unacknowledged: the server must
    # hold the rest back (it stops reading the socket) instead of refusing them. paho runs on the
    # event loop: the ingest has no network thread of its own (paho names it after the client).
    settings = make_settings(mqtt_url=mosquitto_url, mqtt_prefix="t4", mqtt_ingest_queue=1, role="api")
    async with running(settings) as server:
        await ingest_ready(server)
        assert [t.name for t in threading.enumerate() if t.name.endswith(ingest_client_id(settings))] == []
        await add_camera(server.pool, "porch")
        burst = [small_jpeg(n) for n in range(80)]
        await publish_burst(mosquitto_url, "t4/ingest/porch", burst)

        async def all_stored() -> bool:
            return bool(await server.pool.fetchval("SELECT count(*) = 80 FROM jobs"))

        await wait_until(all_stored, timeout=60)
        assert await refusals(server.pool) == []
        stored = await server.pool.fetch("SELECT sha256 FROM images WHERE camera_id = 'porch' AND source = 'mqtt'")
        assert {bytes(r["sha256"]) for r in stored} == {hashlib.sha256(b).digest() for b in burst}


async def test_topic_levels_that_are_not_camera_ids_are_refused_before_anything_touches_the_disk(
    make_settings: Callable[..., Settings], mosquitto_url: str
) -> None:
    settings = make_settings(mqtt_url=mosquitto_url, mqtt_prefix="t5", role="api")
    async with running(settings) as server:
        await ingest_ready(server)
        await add_camera(server.pool, "porch")
        await add_camera(server.pool, "garage", enabled=False)
        before = _folders(settings.data_dir)
        long_level = "a" * 300
        for level in ("..", long_level, "Porch", "nowhere", "garage"):
            await publish(mosquitto_url, f"t5/ingest/{level}", ZIDANE)
        await publish(mosquitto_url, "t5/ingest/porch", ZIDANE)  # handled after the five above

        await wait_until(lambda: server.pool.fetchval("SELECT count(*) FROM images"), timeout=20)
        rows = await server.pool.fetch("SELECT original_path, camera_id, reason, detail FROM quarantine ORDER BY id")
        assert [(r["original_path"], r["camera_id"], r["reason"]) for r in rows] == [
            ("t5/ingest/..", None, "invalid_camera_id"),
            (f"t5/ingest/{long_level[:190]}… (310 characters)", None, "invalid_camera_id"),
            ("t5/ingest/Porch", None, "invalid_camera_id"),
            ("t5/ingest/nowhere", None, "unknown_camera"),
            ("t5/ingest/garage", "garage", "camera_disabled"),
        ]
        assert "'..' is not a camera id" in rows[0]["detail"]
        assert len(rows[1]["detail"]) < 300  # the 300-character level is shown cut, not whole
        # The only folders made are the accepted image's: nothing for a refused id, nothing
        # outside images/ (".." named the data folder), no empty folder per unknown camera.
        day = datetime.now(UTC).strftime("%Y-%m-%d")
        images_dir = settings.images_path
        made = _folders(settings.data_dir) - before
        assert made <= {images_dir, images_dir / "porch", images_dir / "porch" / day}
        assert (images_dir / "porch" / day).is_dir()
        assert sorted(p.name for p in images_dir.iterdir()) == ["porch"]


def _folders(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_dir() and "postgres" not in p.parts}
