"""End to end: the real server publishes through a real Mosquitto broker to Home Assistant's
real MQTT integration; the integration's entities and bus event follow. It also measures the
time from the server's event message reaching the broker's subscribers (a paho subscriber in
this process is the reference clock) to Home Assistant firing the bus event and the event entity."""

from __future__ import annotations

import asyncio
import shutil
import statistics
import time
from collections.abc import Generator
from pathlib import Path
from typing import Any
from unittest.mock import patch

import paho.mqtt.client as paho
import pytest
import pytest_socket
from homeassistant.core import Event, HomeAssistant, callback
from pytest_homeassistant_custom_component.common import MockConfigEntry

from custom_components.home_security_intelligence.const import DOMAIN, EVENT_BUS
from tests.support.mosquitto import plain_mosquitto

from .server import RealServer, server_file, start_server

IMAGES = 6


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Generator[tuple[RealServer, int]]:
    pytest_socket.enable_socket()
    folder = tmp_path_factory.mktemp("e2e")
    broker, port = plain_mosquitto(folder)
    server = start_server(folder / "hsi", mqtt_url=f"mqtt://127.0.0.1:{port}")
    yield server, port
    server.stop()
    broker.terminate()
    broker.wait(timeout=10)


async def test_server_events_reach_home_assistant_entities(
    hass: HomeAssistant, socket_enabled: None, stack: tuple[RealServer, int], tmp_path: Path
) -> None:
    server, port = stack
    pytest_socket.socket_allow_hosts(["127.0.0.1"], allow_unix_socket=True)
    mqtt_entry = MockConfigEntry(domain="mqtt", data={"broker": "127.0.0.1", "port": port}, version=1, minor_version=2)
    mqtt_entry.add_to_hass(hass)
    # HA's MQTT reads configuration.yaml for YAML-defined entities; this test has none.
    with patch("homeassistant.config.load_yaml_config_file", return_value={}):
        assert await hass.config_entries.async_setup(mqtt_entry.entry_id)
        await hass.async_block_till_done()
    entry = MockConfigEntry(
        domain=DOMAIN, unique_id="hsi", data={"url": server.url, "api_key": server.api_key, "prefix": "hsi"}
    )
    entry.add_to_hass(hass)
    assert await hass.config_entries.async_setup(entry.entry_id)
    await hass.async_block_till_done()

    # The reference: when each event message reaches a plain subscriber of the same broker.
    seen_by_paho: dict[str, float] = {}
    reference = paho.Client(paho.CallbackAPIVersion.VERSION2)

    def on_message(_c: Any, _u: Any, msg: paho.MQTTMessage) -> None:
        import json

        body = json.loads(msg.payload)
        if body.get("type") == "new":
            seen_by_paho.setdefault(body["id"], time.monotonic())

    reference.on_message = on_message
    reference.connect("127.0.0.1", port)
    reference.subscribe("hsi/events", qos=1)
    reference.loop_start()
    fired_at: dict[str, float] = {}
    bus: list[dict[str, Any]] = []

    @callback
    def on_bus(event: Event) -> None:
        # Fired in the same MQTT callback that triggers the event entity (coordinator._on_event).
        bus.append(dict(event.data))
        if event.data["type"] == "new":
            fired_at.setdefault(event.data["event_id"], time.monotonic())

    hass.bus.async_listen(EVENT_BUS, on_bus)
    try:
        # Let HA's client and the reference subscribe before anything is published.
        for _ in range(100):
            if hass.states.get("binary_sensor.home_security_intelligence_server_server_connection") is not None:
                state = hass.states.get("binary_sensor.home_security_intelligence_server_server_connection")
                if state.state == "on":
                    break
            await asyncio.sleep(0.1)
        assert hass.states.get("binary_sensor.home_security_intelligence_server_server_connection").state == "on"

        picture = server_file("demo_assets.image('bus.jpg')").read_bytes()
        for i in range(IMAGES):
            camera = f"cam{i}"
            folder = server.cameras / camera
            await hass.async_add_executor_job(_drop, folder, picture, i)
            entity_id = f"event.{camera}_security_event"
            for _ in range(600):
                state = hass.states.get(entity_id)
                if state is not None and state.attributes.get("event_id"):
                    break
                await asyncio.sleep(0.01)
            assert state is not None and state.attributes.get("event_type") in ("low", "medium", "high", "critical")
            # The camera's retained state follows its event's `new` in the same outbox batch; a camera
            # first seen now gets its entities once its name is known (one request to the server).
            for _ in range(500):
                score = hass.states.get(f"sensor.{camera}_risk_score")
                if score is not None and score.state not in ("unknown", "unavailable"):
                    break
                await asyncio.sleep(0.01)
            assert score is not None and score.state not in ("unknown", "unavailable")
            # Occupancy is "currently seen": back to off once the camera's activity batch closes.
            assert hass.states.get(f"binary_sensor.{camera}_person").state in ("on", "off")
    finally:
        reference.loop_stop()
        reference.disconnect()
    assert {e["camera_id"] for e in bus if e["type"] == "new"} == {f"cam{i}" for i in range(IMAGES)}
    delays = [(fired_at[event_id] - seen_by_paho[event_id]) * 1000 for event_id in fired_at if event_id in seen_by_paho]
    assert len(delays) == IMAGES
    p95 = sorted(delays)[max(0, round(0.95 * (len(delays) - 1)))]
    print(
        f"\nHSI end to end: server event message → HA event entity fired, {len(delays)} events:"
        f" p50 {statistics.median(delays):.1f} ms, p95 {p95:.1f} ms, max {max(delays):.1f} ms"
    )
    assert await hass.config_entries.async_unload(entry.entry_id)


def _drop(folder: Path, picture: bytes, i: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".drop{i}.part"
    # A distinct file each time (ingest de-duplicates identical bytes per camera).
    tmp.write_bytes(picture[:2] + b"\xff\xfe\x00\x06e2e" + bytes([i]) + picture[2:])
    shutil.move(tmp, folder / f"MDAlarm_20261124-0210{i:02d}.jpg")
