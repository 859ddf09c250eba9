"""Config flow: every step, its errors and aborts; reauth; reconfigure; options.

The server's REST answers come from HA's ``aioclient_mock`` here (tests of the flow's logic);
tests/integration/test_init.py and the services run against responses of the same shapes."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from unittest.mock import patch

import aiohttp
import paho.mqtt.client as paho
import pytest
import pytest_socket
from homeassistant import config_entries, data_entry_flow
from homeassistant.components.repairs import repairs_flow_manager
from homeassistant.config_entries import ConfigEntryState
from homeassistant.core import HomeAssistant
from homeassistant.data_entry_flow import FlowResultType
from homeassistant.helpers import issue_registry as ir
from homeassistant.helpers.service_info.hassio import HassioServiceInfo
from homeassistant.helpers.service_info.mqtt import MqttServiceInfo
from homeassistant.setup import async_setup_component
from pytest_homeassistant_custom_component.common import MockConfigEntry
from pytest_homeassistant_custom_component.test_util.aiohttp import AiohttpClientMocker

from custom_components.home_security_intelligence.const import DOMAIN
from tests.support.mosquitto import plain_mosquitto

from .conftest import sample

URL = "http://192.168.1.20:8765"
KEY = "hsi_0123456789ab_" + "s" * 43


def _server(aioclient_mock: AiohttpClientMocker, url: str = URL, status: int = 200) -> None:
    aioclient_mock.get(f"{url}/api/v1/health/ready", json={"ready": True, "checks": {}})
    body = sample("status.json") if status == 200 else {"error": {"code": "unauthorized", "message": "no"}}
    aioclient_mock.get(f"{url}/api/v1/system/status", json=body, status=status)


@pytest.fixture(autouse=True)
def no_setup(request: pytest.FixtureRequest) -> object:
    if request.node.get_closest_marker("real_setup"):
        yield None  # the entry is set up for real (MQTT and REST as in test_init.py)
        return
    with patch("custom_components.home_security_intelligence.async_setup_entry", return_value=True) as mocked:
        yield mocked


@pytest.fixture
def expected_lingering_timers(request: pytest.FixtureRequest) -> bool:
    """With a real MQTT entry, HA's client leaves its periodic housekeeping timer running (a harness trait)."""
    return request.node.get_closest_marker("real_setup") is not None


async def test_user_step_checks_the_server_and_creates_the_entry(
    hass: HomeAssistant, aioclient_mock: AiohttpClientMocker
) -> None:
    _server(aioclient_mock)
    result = await hass.config_entries.flow.async_init(DOMAIN, context={"source": config_entries.SOURCE_USER})
    assert result["type"] is FlowResultType.FORM and result["errors"] == {}
    result = await hass.config_entries.flow.async_configure(
        result["flow_id"], {"url": URL, "api_key": KEY, "prefix": "hsi"}
    )
    assert result["type"] is FlowResultType.CREATE_ENTRY
    assert result["data"] == {"url": URL, "api_key": KEY, "prefix": "hsi"}
    assert result["result"].unique_id == "hsi"
    assert aioclient_mock.mock_calls[-1][3]["Authorization"] == f"Bearer {KEY}"


@pytest.mark.parametrize(
    ("status", "exc", "error"),
    [(401, None, "invalid_auth"), (200, aiohttp.ClientConnectionError(), "cannot_connect")],
)
async def test_user_step_shows_errors_and_recovers(
    hass: HomeAssistant, aioclient_mock: AiohttpClientMocker, status: int, exc: Exception | None, error: str
) -> None:
    if exc is not None:
        aioclient_mock.get(f"{URL}/api/v1/health/ready", exc=exc)
    else:
        _server(aioclient_mock, status=status)
    result = await hass.config_entries.flow.async_init(DOMAIN, context={"source": config_entries.SOURCE_USER})
    result = await hass.config_entries.flow.async_configure(result["flow_id"], {"url": URL, "api_key": KEY})
    assert result["type"] is FlowResultType.FORM and result["errors"] == {"base": error}
    aioclient_mock.clear_requests()
    _server(aioclient_mock)
    result = await hass.config_entries.flow.async_configure(result["flow_id"], {"url": URL, "api_key": KEY})
    assert result["type"] is FlowResultType.CREATE_ENTRY


async def test_a_non_hsi_answer_is_cannot_connect(hass: HomeAssistant, aioclient_mock: AiohttpClientMocker) -> None:
    aioclient_mock.get(
        f"{URL}/api/v1/health/ready", text="<html>router login</html>", headers={"Content-Type": "text/html"}
    )
    result = await hass.config_entries.flow.async_init(DOMAIN, context={"source": config_entries.SOURCE_USER})
    result = await hass.config_entries.flow.async_configure(result["flow_id"], {"url": URL, "api_key": KEY})
    assert result["errors"] == {"base": "cannot_connect"}


async def test_user_step_aborts_when_the_server_is_configured(hass: HomeAssistant) -> None:
    MockConfigEntry(domain=DOMAIN, unique_id="hsi", data={"url": URL, "api_key": KEY}).add_to_hass(hass)
    result = await hass.config_entries.flow.async_init(DOMAIN, context={"source": config_entries.SOURCE_USER})
    result = await hass.config_entries.flow.async_configure(result["flow_id"], {"url": URL, "api_key": KEY})
    assert result["type"] is FlowResultType.ABORT and result["reason"] == "already_configured"


def _mqtt_info(payload: dict[str, object] | str) -> MqttServiceInfo:
    text = payload if isinstance(payload, str) else json.dumps(payload)
    return MqttServiceInfo(
        topic="hsi/discovery", payload=text, qos=1, retain=True, subscribed_topic="hsi/discovery", timestamp=0
    )


async def test_mqtt_discovery_asks_for_a_key_and_creates_the_entry(
    hass: HomeAssistant, aioclient_mock: AiohttpClientMocker
) -> None:
    _server(aioclient_mock)
    result = await hass.config_entries.flow.async_init(
        DOMAIN, context={"source": config_entries.SOURCE_MQTT}, data=_mqtt_info(sample("discovery.json"))
    )
    assert result["type"] is FlowResultType.FORM and result["step_id"] == "discovery_confirm"
    result = await hass.config_entries.flow.async_configure(result["flow_id"], {"url": URL, "api_key": KEY})
    assert result["type"] is FlowResultType.CREATE_ENTRY
    assert result["data"] == {"url": URL, "api_key": KEY, "prefix": "hsi"}
    assert result["title"] == "Home Security Intelligence"


ATTACKER = "http://192.168.1.66:8765"


def _issue(hass: HomeAssistant, entry: MockConfigEntry) -> ir.IssueEntry | None:
    return ir.async_get(hass).async_get_issue(DOMAIN, f"discovered_url_{entry.entry_id}")


@pytest.mark.real_setup
async def test_forged_mqtt_discovery_never_repoints_a_configured_server(
    hass: HomeAssistant, socket_enabled: None, aioclient_mock: AiohttpClientMocker, tmp_path: Path
) -> None:
    """Issue 13, item 2: anyone on an open broker retains an hsi/discovery naming their own URL.
    Home Assistant must keep the configured URL and never send the key there; a repair asks."""
    pytest_socket.socket_allow_hosts(["127.0.0.1"], allow_unix_socket=True)
    broker, port = plain_mosquitto(tmp_path)
    try:
        _server(aioclient_mock)
        aioclient_mock.get(f"{URL}/api/v1/cameras", json={"cameras": []})
        # The attacker's URL answers like a server, so a flow that went there would succeed.
        _server(aioclient_mock, url=ATTACKER)
        aioclient_mock.get(f"{ATTACKER}/api/v1/cameras", json={"cameras": []})
        mqtt_entry = MockConfigEntry(
            domain="mqtt", data={"broker": "127.0.0.1", "port": port}, version=1, minor_version=2
        )
        mqtt_entry.add_to_hass(hass)
        with patch("homeassistant.config.load_yaml_config_file", return_value={}):
            assert await hass.config_entries.async_setup(mqtt_entry.entry_id)
            await hass.async_block_till_done()
        entry = MockConfigEntry(
            domain=DOMAIN, unique_id="hsi", data={"url": URL, "api_key": KEY, "prefix": "hsi"}, title="HSI"
        )
        entry.add_to_hass(hass)
        assert await hass.config_entries.async_setup(entry.entry_id)
        await hass.async_block_till_done()

        # The attacker: an anonymous client of the same broker, retaining a discovery with its URL.
        forged = {**sample("discovery.json"), "url": ATTACKER}
        attacker = paho.Client(paho.CallbackAPIVersion.VERSION2)
        attacker.connect("127.0.0.1", port)
        attacker.loop_start()
        attacker.publish("hsi/discovery", json.dumps(forged), qos=1, retain=True).wait_for_publish(5)
        attacker.loop_stop()
        attacker.disconnect()
        for _ in range(100):
            if _issue(hass, entry) is not None:
                break
            await asyncio.sleep(0.05)
        await hass.async_block_till_done()

        # Before the fix the entry was re-pointed and reloaded: GET /system/status with the key went there.
        assert not [call for call in aioclient_mock.mock_calls if str(call[1]).startswith(ATTACKER)]
        assert entry.data["url"] == URL
        assert entry.state is ConfigEntryState.LOADED
        issue = _issue(hass, entry)
        assert issue is not None and issue.is_fixable and issue.translation_key == "discovered_url"
        assert issue.data == {"entry_id": entry.entry_id, "url": ATTACKER}
        assert issue.translation_placeholders == {"title": "HSI", "old_url": URL, "new_url": ATTACKER}
        assert await hass.config_entries.async_unload(entry.entry_id)
        assert await hass.config_entries.async_unload(mqtt_entry.entry_id)
    finally:
        broker.terminate()
        broker.wait(timeout=10)


async def _known_server(hass: HomeAssistant, url: str = URL) -> MockConfigEntry:
    entry = MockConfigEntry(domain=DOMAIN, unique_id="hsi", data={"url": url, "api_key": KEY}, title="HSI")
    entry.add_to_hass(hass)
    return entry


async def _discover(hass: HomeAssistant, url: str) -> None:
    result = await hass.config_entries.flow.async_init(
        DOMAIN,
        context={"source": config_entries.SOURCE_MQTT},
        data=_mqtt_info({**sample("discovery.json"), "url": url}),
    )
    assert result["type"] is FlowResultType.ABORT and result["reason"] == "already_configured"


async def test_an_announcement_of_the_configured_url_clears_the_repair(hass: HomeAssistant) -> None:
    entry = await _known_server(hass)
    await _discover(hass, ATTACKER)
    assert _issue(hass, entry) is not None
    # One without a URL (a server with no public_url) settles nothing.
    result = await hass.config_entries.flow.async_init(
        DOMAIN, context={"source": config_entries.SOURCE_MQTT}, data=_mqtt_info({"id": "hsi", "name": "HSI"})
    )
    assert result["type"] is FlowResultType.ABORT and _issue(hass, entry) is not None
    # The genuine server's retained discovery comes back (with a trailing slash): nothing to confirm.
    await _discover(hass, URL + "/")
    assert _issue(hass, entry) is None and entry.data["url"] == URL


async def _fix_flow(hass: HomeAssistant, entry: MockConfigEntry) -> data_entry_flow.FlowResult:
    # Repairs finds the fix flow of integrations that are set up (the entry itself is patched here).
    assert await async_setup_component(hass, DOMAIN, {})
    assert await async_setup_component(hass, "repairs", {})
    manager = repairs_flow_manager(hass)
    assert manager is not None
    result = await manager.async_init(DOMAIN, data={"issue_id": f"discovered_url_{entry.entry_id}"})
    assert result["type"] is FlowResultType.FORM and result["step_id"] == "confirm"
    assert result["description_placeholders"] == {"title": "HSI", "old_url": URL, "new_url": ATTACKER}
    return result


async def test_the_repair_sends_the_key_to_the_new_url_only_once_the_user_confirms(
    hass: HomeAssistant, aioclient_mock: AiohttpClientMocker
) -> None:
    entry = await _known_server(hass)
    await _discover(hass, ATTACKER)
    moved = ATTACKER  # here the user did move the server
    aioclient_mock.get(f"{moved}/api/v1/health/ready", exc=aiohttp.ClientConnectionError())
    result = await _fix_flow(hass, entry)
    # Opening the repair sends nothing anywhere.
    assert aioclient_mock.call_count == 0
    manager = repairs_flow_manager(hass)
    assert manager is not None
    result = await manager.async_configure(result["flow_id"], {})
    assert result["type"] is FlowResultType.FORM and result["errors"] == {"base": "cannot_connect"}
    assert entry.data["url"] == URL
    aioclient_mock.clear_requests()
    _server(aioclient_mock, url=moved)
    result = await manager.async_configure(result["flow_id"], {})
    assert result["type"] is FlowResultType.CREATE_ENTRY
    assert entry.data["url"] == moved and entry.data["api_key"] == KEY
    assert aioclient_mock.mock_calls[-1][3]["Authorization"] == f"Bearer {KEY}"
    assert _issue(hass, entry) is None


async def test_the_repair_of_a_removed_entry_aborts(hass: HomeAssistant) -> None:
    entry = await _known_server(hass)
    await _discover(hass, ATTACKER)
    result = await _fix_flow(hass, entry)
    assert await hass.config_entries.async_remove(entry.entry_id)
    manager = repairs_flow_manager(hass)
    assert manager is not None
    result = await manager.async_configure(result["flow_id"], {})
    assert result["type"] is FlowResultType.ABORT and result["reason"] == "entry_removed"


async def test_bad_mqtt_discovery_payload_aborts(hass: HomeAssistant) -> None:
    result = await hass.config_entries.flow.async_init(
        DOMAIN, context={"source": config_entries.SOURCE_MQTT}, data=_mqtt_info("not json")
    )
    assert result["type"] is FlowResultType.ABORT and result["reason"] == "invalid_discovery_info"


async def test_addon_discovery_needs_only_a_confirmation(
    hass: HomeAssistant, aioclient_mock: AiohttpClientMocker
) -> None:
    url = "http://local-home-security-intelligence:8765"
    _server(aioclient_mock, url=url)
    info = HassioServiceInfo(
        config={"host": "local-home-security-intelligence", "port": 8765, "api_key": KEY},
        name="Home Security Intelligence",
        slug="home_security_intelligence",
        uuid="1234",
    )
    result = await hass.config_entries.flow.async_init(
        DOMAIN, context={"source": config_entries.SOURCE_HASSIO}, data=info
    )
    assert result["type"] is FlowResultType.FORM and result["step_id"] == "hassio_confirm"
    result = await hass.config_entries.flow.async_configure(result["flow_id"], {})
    assert result["type"] is FlowResultType.CREATE_ENTRY
    assert result["data"] == {"url": url, "api_key": KEY, "prefix": "hsi"}


async def test_reauth_replaces_the_key(hass: HomeAssistant, aioclient_mock: AiohttpClientMocker) -> None:
    entry = MockConfigEntry(domain=DOMAIN, unique_id="hsi", data={"url": URL, "api_key": "hsi_old"})
    entry.add_to_hass(hass)
    _server(aioclient_mock, status=401)
    result = await entry.start_reauth_flow(hass)
    assert result["step_id"] == "reauth_confirm"
    result = await hass.config_entries.flow.async_configure(result["flow_id"], {"api_key": "hsi_wrong"})
    assert result["errors"] == {"base": "invalid_auth"}
    aioclient_mock.clear_requests()
    _server(aioclient_mock)
    result = await hass.config_entries.flow.async_configure(result["flow_id"], {"api_key": KEY})
    assert result["type"] is FlowResultType.ABORT and result["reason"] == "reauth_successful"
    assert entry.data["api_key"] == KEY


async def test_reconfigure_changes_url_and_key(hass: HomeAssistant, aioclient_mock: AiohttpClientMocker) -> None:
    entry = MockConfigEntry(domain=DOMAIN, unique_id="hsi", data={"url": "http://old:8765", "api_key": "hsi_old"})
    entry.add_to_hass(hass)
    _server(aioclient_mock)
    result = await entry.start_reconfigure_flow(hass)
    assert result["step_id"] == "reconfigure"
    result = await hass.config_entries.flow.async_configure(result["flow_id"], {"url": URL, "api_key": KEY})
    assert result["type"] is FlowResultType.ABORT and result["reason"] == "reconfigure_successful"
    assert dict(entry.data) == {"url": URL, "api_key": KEY}


async def test_options_choose_the_context_entities(hass: HomeAssistant) -> None:
    entry = MockConfigEntry(domain=DOMAIN, unique_id="hsi", data={"url": URL, "api_key": KEY})
    entry.add_to_hass(hass)
    hass.states.async_set("alarm_control_panel.home", "armed_away")
    hass.states.async_set("person.anna", "home")
    hass.states.async_set("binary_sensor.back_door", "off", {"device_class": "door"})
    result = await hass.config_entries.options.async_init(entry.entry_id)
    assert result["step_id"] == "init"
    choice = {
        "alarm_entity": "alarm_control_panel.home",
        "presence_entities": ["person.anna"],
        "entry_entities": ["binary_sensor.back_door"],
        "sun_entity": "sun.sun",
    }
    result = await hass.config_entries.options.async_configure(result["flow_id"], choice)
    assert result["type"] is FlowResultType.CREATE_ENTRY
    assert dict(entry.options) == choice
