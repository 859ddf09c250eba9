"""Fixtures for the integration's tests (Home Assistant's harness, pytest-homeassistant-custom-component)."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Generator
from pathlib import Path
from typing import Any

import pytest
import pytest_socket
from homeassistant.core import HomeAssistant
from pytest_homeassistant_custom_component.common import MockConfigEntry, async_fire_mqtt_message
from pytest_homeassistant_custom_component.test_util.aiohttp import AiohttpClientMocker

from custom_components.home_security_intelligence.const import DOMAIN

from .server import RealServer, start_server

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "mqtt"
URL = "http://192.168.1.20:8765"
KEY = "hsi_0123456789ab_" + "s" * 43
JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 64 + b"\xff\xd9"


@pytest.fixture(autouse=True)
def auto_enable_custom_integrations(enable_custom_integrations: None) -> Generator[None]:
    """Load custom_components/ in every test."""
    yield


@pytest.fixture
def expected_lingering_timers(request: pytest.FixtureRequest) -> bool:
    """HA's ``mqtt_mock`` leaves MQTT's periodic housekeeping timer running (a harness trait)."""
    return "mqtt_mock" in request.fixturenames


def sample(name: str) -> dict[str, Any]:
    """An MQTT payload the server's own models produced (tests/fixtures/mqtt, checked server-side)."""
    loaded = json.loads((FIXTURES / name).read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


@pytest.fixture
async def entry(hass: HomeAssistant, mqtt_mock: Any, aioclient_mock: AiohttpClientMocker) -> MockConfigEntry:
    """An entry set up against a mocked server (REST) with one camera, "back_door"."""
    return await set_up_entry(hass, aioclient_mock)


async def set_up_entry(hass: HomeAssistant, aioclient_mock: AiohttpClientMocker) -> MockConfigEntry:
    """What the ``entry`` fixture does, for a test that must act first (e.g. seed Home Assistant's
    restore cache, which is read when the entry is set up); the test asks for ``mqtt_mock`` itself."""
    aioclient_mock.get(f"{URL}/api/v1/system/status", json=sample("status.json"))
    aioclient_mock.get(
        f"{URL}/api/v1/cameras",
        json={"cameras": [{"id": "back_door", "name": "Back door", "folder": "back_door", "enabled": True}]},
    )
    entry = MockConfigEntry(domain=DOMAIN, unique_id="hsi", data={"url": URL, "api_key": KEY, "prefix": "hsi"})
    entry.add_to_hass(hass)
    assert await hass.config_entries.async_setup(entry.entry_id)
    await hass.async_block_till_done()
    return entry


def publish(hass: HomeAssistant, topic: str, payload: dict[str, Any] | str | bytes) -> None:
    """What the server would publish on ``topic`` (a dict is sent as JSON)."""
    body = json.dumps(payload) if isinstance(payload, dict) else payload
    async_fire_mqtt_message(hass, topic, body)


async def camera_online(hass: HomeAssistant) -> None:
    """The server online, its status and camera "back_door"'s state, as its retained messages say."""
    publish(hass, "hsi/availability", "online")
    publish(hass, "hsi/status", sample("status.json"))
    publish(hass, "hsi/cameras/back_door/state", sample("camera_state.json"))
    await hass.async_block_till_done()


@pytest.fixture(scope="module")
def real_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Generator[RealServer]:
    """A REAL server (subprocess, embedded PostgreSQL) for the module that asks for it, started once,
    before the per-test socket guard of HA's harness applies; a module's ``REAL_SERVER_OPTIONS``
    (e.g. ``{"recognition": True}``) are passed to ``start_server``."""
    pytest_socket.enable_socket()
    server = start_server(tmp_path_factory.mktemp("hsi"), **getattr(request.module, "REAL_SERVER_OPTIONS", {}))
    yield server
    server.stop()


@pytest.fixture
async def real_entry(
    hass: HomeAssistant, socket_enabled: None, mqtt_mock: Any, real_server: RealServer
) -> AsyncGenerator[MockConfigEntry]:
    """The integration set up against the module's REAL server (its ``real_server`` fixture)."""
    pytest_socket.socket_allow_hosts(["127.0.0.1"], allow_unix_socket=True)
    entry = MockConfigEntry(
        domain=DOMAIN, unique_id="hsi", data={"url": real_server.url, "api_key": real_server.api_key, "prefix": "hsi"}
    )
    entry.add_to_hass(hass)
    assert await hass.config_entries.async_setup(entry.entry_id)
    await hass.async_block_till_done()
    yield entry
    assert await hass.config_entries.async_unload(entry.entry_id)


async def call_service(hass: HomeAssistant, service: str, entry: MockConfigEntry, **data: Any) -> Any:
    """One of the integration's services for ``entry``, blocking, with its response."""
    return await hass.services.async_call(
        DOMAIN, service, {"config_entry_id": entry.entry_id, **data}, blocking=True, return_response=True
    )
