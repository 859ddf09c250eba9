"""Phase two with vision, end to end: the real server (subprocess, real YOLO, embedded
PostgreSQL) sends the event's key frames to a FAKE OpenAI-compatible vision server
(tests/support/fake_vlm.py: no vision-language weights exist here), and the model's description
travels through a real Mosquitto broker to Home Assistant's event entity and bus event."""

from __future__ import annotations

import asyncio
import shutil
import threading
from collections.abc import Generator
from pathlib import Path
from typing import Any
from unittest.mock import patch

import pytest
import pytest_socket
from homeassistant.core import Event, HomeAssistant, callback
from pytest_homeassistant_custom_component.common import MockConfigEntry

from custom_components.home_security_intelligence.const import DOMAIN, EVENT_BUS
from tests.support.fake_vlm import V2_REPLY, FakeVlm, assessments, decode, image_parts
from tests.support.mosquitto import plain_mosquitto

from .server import RealServer, server_file, start_server


class _FakeInThread:
    """The fake server on its own event loop in a thread (the server under test is another process)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.fake: FakeVlm = asyncio.run_coroutine_threadsafe(FakeVlm().start(), self.loop).result(10)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.fake.close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(scope="module")
def vision_stack(tmp_path_factory: pytest.TempPathFactory) -> Generator[tuple[RealServer, int, FakeVlm]]:
    pytest_socket.enable_socket()
    folder = tmp_path_factory.mktemp("vision")
    broker, port = plain_mosquitto(folder)
    fake = _FakeInThread()
    llm = {
        "HSI_LLM__BACKEND": "openai",
        "HSI_LLM__BASE_URL": fake.fake.base_url,
        "HSI_LLM__MODEL": "fake-vlm",
        "HSI_LLM__MAX_IMAGES": "2",
        "HSI_LLM__IMAGE_MAX_PX": "256",
        "HSI_DIGEST_LLM": "false",
    }
    server = start_server(folder / "hsi", mqtt_url=f"mqtt://127.0.0.1:{port}", extra_env=llm)
    yield server, port, fake.fake
    server.stop()
    fake.stop()
    broker.terminate()
    broker.wait(timeout=10)


async def test_the_vision_models_description_reaches_the_event_entity(
    hass: HomeAssistant, socket_enabled: None, vision_stack: tuple[RealServer, int, FakeVlm]
) -> None:
    server, port, fake = vision_stack
    pytest_socket.socket_allow_hosts(["127.0.0.1"], allow_unix_socket=True)
    mqtt_entry = MockConfigEntry(domain="mqtt", data={"broker": "127.0.0.1", "port": port}, version=1, minor_version=2)
    mqtt_entry.add_to_hass(hass)
    with patch("homeassistant.config.load_yaml_config_file", return_value={}):
        assert await hass.config_entries.async_setup(mqtt_entry.entry_id)
        await hass.async_block_till_done()
    entry = MockConfigEntry(
        domain=DOMAIN, unique_id="hsi", data={"url": server.url, "api_key": server.api_key, "prefix": "hsi"}
    )
    entry.add_to_hass(hass)
    assert await hass.config_entries.async_setup(entry.entry_id)
    await hass.async_block_till_done()
    bus: list[dict[str, Any]] = []

    @callback
    def on_bus(event: Event) -> None:
        bus.append(dict(event.data))

    hass.bus.async_listen(EVENT_BUS, on_bus)
    for _ in range(100):
        state = hass.states.get("binary_sensor.home_security_intelligence_server_server_connection")
        if state is not None and state.state == "on":
            break
        await asyncio.sleep(0.1)
    picture = server_file("demo_assets.image('zidane.jpg')")
    await hass.async_add_executor_job(_drop, picture, server.cameras / "porch")
    entity_id = "event.porch_security_event"
    for _ in range(1200):
        state = hass.states.get(entity_id)
        if state is not None and state.attributes.get("description"):
            break
        await asyncio.sleep(0.1)
    assert state is not None and state.attributes.get("description") == V2_REPLY["description"]
    assert state.attributes["activity"] == "approaching" and state.attributes["model"] == "fake-vlm"
    (body,) = assessments(fake)
    sent = [decode(url) for url in image_parts(body)]
    assert len(sent) == 1 and max(sent[0].size) == 256  # one photo in the event, bounded to 256 px
    assert len(state.attributes["frames_sent"]) == 1
    described = [e for e in bus if e["described"]]
    assert len(described) == 1 and described[0]["description"] == V2_REPLY["description"]
    assert described[0]["frames_sent"] == state.attributes["frames_sent"]
    assert await hass.config_entries.async_unload(entry.entry_id)


def _drop(picture: Path, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / ".drop.part"
    shutil.copyfile(picture, tmp)
    shutil.move(tmp, folder / "MDAlarm_20261124-021000.jpg")
