"""Config flow: every step, its errors and aborts; reauth; reconfigure; options.

The server's REST answers come from HA's ``aioclient_mock`` here (tests of the flow's logic);
tests/integration/test_init.py and the services run against responses of the same shapes."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from pathlib import Path
from typing import Any
from unittest.mock import patch

import aiohttp
import paho.mqtt.client as paho
import pytest
import pytest_socket
import voluptuous as vol
from homeassistant import config_entries, data_entry_flow
from homeassistant.components.repairs import repairs_flow_manager
from homeassistant.config_entries import ConfigEntryState
from homeassistant.core import HomeAssistant
from homeassistant.data_entry_flow import FlowResultType
from homeassistant.helpers import issue_registry as ir
from homeassistant.helpers import selector
from homeassistant.helpers.service_info.hassio import HassioServiceInfo
from homeassistant.helpers.service_info.mqtt import MqttServiceInfo
from homeassistant.setup import async_setup_component
from pytest_homeassistant_custom_component.common import MockConfigEntry
from pytest_homeassistant_custom_component.test_util.aiohttp import AiohttpClientMocker

import custom_components.home_security_intelligence
from custom_components.home_security_intelligence.const import DOMAIN
from tests.support.mosquitto import plain_mosquitto

from .conftest import sample
from .server import RealServer

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


@pytest.mark.parametrize(
    ("name_field", "info_name"),
    [
        ({"addon": "Home Security Intelligence"}, "Home Security Intelligence"),  # Supervisors before the rename
        ({"app": "Home Security Intelligence"}, "Home Security Intelligence"),  # after: "addon" became "app"
        ({"addon": "HSI", "app": "HSI"}, "HSI"),  # a Supervisor sending both during the transition
        ({"app": "HSI (app)"}, ""),  # no name from Home Assistant: the config's name is shown
    ],
)
async def test_addon_discovery_is_accepted_with_the_addon_or_the_app_field(
    hass: HomeAssistant, aioclient_mock: AiohttpClientMocker, name_field: dict[str, str], info_name: str
) -> None:
    """Home Assistant writes the add-on's name into the discovery config as ``addon``; after the
    Supervisor's add-on -> app rename, as ``app``. The flow takes either (docs/decisions.md)."""
    url = "http://a0d7b954-home-security-intelligence:8765"
    _server(aioclient_mock, url=url)
    info = HassioServiceInfo(
        config={"host": "a0d7b954-home-security-intelligence", "port": 8765, "api_key": KEY, **name_field},
        name=info_name,
        slug="a0d7b954_home_security_intelligence",
        uuid="1234",
    )
    result = await hass.config_entries.flow.async_init(
        DOMAIN, context={"source": config_entries.SOURCE_HASSIO}, data=info
    )
    assert result["type"] is FlowResultType.FORM and result["step_id"] == "hassio_confirm"
    shown = info_name or name_field["app"]
    assert result["description_placeholders"]["name"] == shown
    result = await hass.config_entries.flow.async_configure(result["flow_id"], {})
    assert result["type"] is FlowResultType.CREATE_ENTRY and result["title"] == shown
    assert result["data"] == {"url": url, "api_key": KEY, "prefix": "hsi"}


@pytest.mark.parametrize(
    "config",
    [
        {"host": "local-home-security-intelligence", "port": 8765, "app": "Home Security Intelligence"},
        {"host": "", "port": 8765, "api_key": KEY},
        {"host": "local-home-security-intelligence", "port": "not a port", "api_key": KEY},
        {"host": "local-home-security-intelligence", "port": 70000, "api_key": KEY},
    ],
)
async def test_unreadable_addon_discovery_aborts_and_logs_no_key(
    hass: HomeAssistant, config: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    info = HassioServiceInfo(config=config, name="HSI", slug="home_security_intelligence", uuid="1234")
    result = await hass.config_entries.flow.async_init(
        DOMAIN, context={"source": config_entries.SOURCE_HASSIO}, data=info
    )
    assert result["type"] is FlowResultType.ABORT and result["reason"] == "invalid_discovery_info"
    assert "could not be read" in caplog.text and KEY not in caplog.text
    assert not hass.config_entries.async_entries(DOMAIN)


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


async def test_a_manual_flow_takes_over_a_pending_discovered_card(
    hass: HomeAssistant, aioclient_mock: AiohttpClientMocker
) -> None:
    """Issue 15, item 9: "Add integration" by hand while the discovered card waits ended, after the
    key was typed, in an untranslated ``already_in_progress``; now the manual flow creates the
    entry and HA drops the discovered card."""
    _server(aioclient_mock)
    discovered = await hass.config_entries.flow.async_init(
        DOMAIN, context={"source": config_entries.SOURCE_MQTT}, data=_mqtt_info(sample("discovery.json"))
    )
    assert discovered["type"] is FlowResultType.FORM and discovered["step_id"] == "discovery_confirm"
    result = await hass.config_entries.flow.async_init(DOMAIN, context={"source": config_entries.SOURCE_USER})
    result = await hass.config_entries.flow.async_configure(
        result["flow_id"], {"url": URL, "api_key": KEY, "prefix": "hsi"}
    )
    assert result["type"] is FlowResultType.CREATE_ENTRY, result
    assert result["result"].unique_id == "hsi"
    assert hass.config_entries.flow.async_progress_by_handler(DOMAIN) == []


@pytest.mark.parametrize("typed", [URL + "/api/v1", URL + "/api/v1/", URL + "/", " " + URL + "//"])
async def test_a_pasted_api_address_is_normalised(
    hass: HomeAssistant, aioclient_mock: AiohttpClientMocker, typed: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 15, item 11: ``.../api/v1`` gave ``unknown`` and an ERROR traceback."""
    _server(aioclient_mock)
    result = await hass.config_entries.flow.async_init(DOMAIN, context={"source": config_entries.SOURCE_USER})
    result = await hass.config_entries.flow.async_configure(result["flow_id"], {"url": typed, "api_key": KEY})
    assert result["type"] is FlowResultType.CREATE_ENTRY
    assert result["data"]["url"] == URL
    assert [str(call[1]) for call in aioclient_mock.mock_calls] == [
        f"{URL}/api/v1/health/ready",
        f"{URL}/api/v1/system/status",
    ]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize("typed", ["http://", "192.168.1.20:8765", "ftp://192.168.1.20", "not a url"])
async def test_a_url_that_is_no_server_address_is_invalid_url(
    hass: HomeAssistant, aioclient_mock: AiohttpClientMocker, typed: str
) -> None:
    result = await hass.config_entries.flow.async_init(DOMAIN, context={"source": config_entries.SOURCE_USER})
    result = await hass.config_entries.flow.async_configure(result["flow_id"], {"url": typed, "api_key": KEY})
    assert result["type"] is FlowResultType.FORM and result["errors"] == {"base": "invalid_url"}
    assert aioclient_mock.call_count == 0  # the key went nowhere


@pytest.mark.parametrize(
    ("status", "headers", "body", "error", "placeholders"),
    [
        (
            429,
            {"Retry-After": "42"},
            {"error": {"code": "too_many_failures", "message": "too many failed authentications; retry in 42 s"}},
            "too_many_failures",
            {"retry_after": "42"},
        ),
        (  # no header: the wait is read from the server's message
            429,
            {},
            {"error": {"code": "too_many_failures", "message": "too many failed authentications; retry in 17 s"}},
            "too_many_failures",
            {"retry_after": "17"},
        ),
        (404, {}, {"error": {"code": "not_found", "message": "no route"}}, "server_refused", {"status": "404"}),
        (400, {}, {"error": {"code": "bad_request"}}, "server_refused", {"status": "400"}),
    ],
)
async def test_server_refusals_are_translated_errors_without_a_traceback(
    hass: HomeAssistant,
    aioclient_mock: AiohttpClientMocker,
    caplog: pytest.LogCaptureFixture,
    status: int,
    headers: dict[str, str],
    body: dict[str, object],
    error: str,
    placeholders: dict[str, str],
) -> None:
    """Issue 15, items 10 and 11: a 429 said "unexpected answer" (``unknown``) and every 4xx was
    logged as an "Unexpected exception" traceback."""
    aioclient_mock.get(f"{URL}/api/v1/health/ready", status=status, json=body, headers=headers)
    result = await hass.config_entries.flow.async_init(DOMAIN, context={"source": config_entries.SOURCE_USER})
    result = await hass.config_entries.flow.async_configure(result["flow_id"], {"url": URL, "api_key": KEY})
    assert result["type"] is FlowResultType.FORM and result["errors"] == {"base": error}
    assert placeholders.items() <= result["description_placeholders"].items()
    if error == "server_refused":
        assert result["description_placeholders"]["message"] in ("no route", "bad_request")
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert [r.levelno for r in caplog.records if r.name.endswith("config_flow")] == [logging.WARNING]


async def test_every_form_shows_the_lockout_with_its_wait_and_keeps_its_own_placeholders(
    hass: HomeAssistant, aioclient_mock: AiohttpClientMocker
) -> None:
    """The 429 of item 10 in the discovered, add-on and reconfigure forms too."""
    body = {"error": {"code": "too_many_failures", "message": "too many failed authentications; retry in 9 s"}}
    addon_url = "http://local-home-security-intelligence:8765"
    for url in (URL, addon_url):
        aioclient_mock.get(f"{url}/api/v1/health/ready", status=429, json=body, headers={"Retry-After": "9"})
    # (another server id than the add-on's "hsi", whose flow would otherwise be the same one)
    announcement = {**sample("discovery.json"), "id": "garage"}
    discovered = await hass.config_entries.flow.async_init(
        DOMAIN, context={"source": config_entries.SOURCE_MQTT}, data=_mqtt_info(announcement)
    )
    discovered = await hass.config_entries.flow.async_configure(
        discovered["flow_id"], {"url": URL + "/api/v1", "api_key": KEY}
    )
    info = HassioServiceInfo(
        config={"host": "local-home-security-intelligence", "port": 8765, "api_key": KEY},
        name="HSI add-on",
        slug="home_security_intelligence",
        uuid="1234",
    )
    addon = await hass.config_entries.flow.async_init(
        DOMAIN, context={"source": config_entries.SOURCE_HASSIO}, data=info
    )
    addon = await hass.config_entries.flow.async_configure(addon["flow_id"], {})
    entry = MockConfigEntry(domain=DOMAIN, unique_id="other", data={"url": URL, "api_key": KEY})
    entry.add_to_hass(hass)
    reconfigure = await entry.start_reconfigure_flow(hass)
    reconfigure = await hass.config_entries.flow.async_configure(reconfigure["flow_id"], {"url": URL, "api_key": KEY})
    for result in (discovered, addon, reconfigure):
        assert result["type"] is FlowResultType.FORM, result
        assert result["errors"] == {"base": "too_many_failures"}
        assert result["description_placeholders"]["retry_after"] == "9"
    assert discovered["description_placeholders"]["name"] == "Home Security Intelligence"
    assert addon["description_placeholders"]["name"] == "HSI add-on"
    assert dict(entry.data) == {"url": URL, "api_key": KEY}


def _key_field(result: data_entry_flow.FlowResult) -> tuple[vol.Marker, selector.TextSelector]:
    schema = result["data_schema"]
    assert schema is not None
    (marker, field) = next((k, v) for k, v in schema.schema.items() if k == "api_key")
    assert isinstance(field, selector.TextSelector)
    return marker, field


async def test_the_key_is_a_password_field_in_every_form(
    hass: HomeAssistant, aioclient_mock: AiohttpClientMocker
) -> None:
    """Issue 15, item 14: the key was a plain text field and reconfigure showed it whole."""
    forms = [
        await hass.config_entries.flow.async_init(DOMAIN, context={"source": config_entries.SOURCE_USER}),
        await hass.config_entries.flow.async_init(
            DOMAIN, context={"source": config_entries.SOURCE_MQTT}, data=_mqtt_info(sample("discovery.json"))
        ),
    ]
    entry = MockConfigEntry(domain=DOMAIN, unique_id="other", data={"url": URL, "api_key": KEY})
    entry.add_to_hass(hass)
    forms.append(await entry.start_reauth_flow(hass))
    reconfigure = await entry.start_reconfigure_flow(hass)
    forms.append(reconfigure)
    for form in forms:
        _, field = _key_field(form)
        assert field.config["type"] == selector.TextSelectorType.PASSWORD, form["step_id"]
    marker, _ = _key_field(reconfigure)
    assert isinstance(marker, vol.Optional) and marker.default is vol.UNDEFINED and not marker.description
    assert KEY not in str(reconfigure)


async def test_reconfigure_with_an_empty_key_keeps_the_stored_key(
    hass: HomeAssistant, aioclient_mock: AiohttpClientMocker
) -> None:
    entry = MockConfigEntry(domain=DOMAIN, unique_id="hsi", data={"url": "http://old:8765", "api_key": KEY})
    entry.add_to_hass(hass)
    _server(aioclient_mock)
    result = await entry.start_reconfigure_flow(hass)
    result = await hass.config_entries.flow.async_configure(result["flow_id"], {"url": URL + "/api/v1"})
    assert result["type"] is FlowResultType.ABORT and result["reason"] == "reconfigure_successful"
    assert dict(entry.data) == {"url": URL, "api_key": KEY}
    assert aioclient_mock.mock_calls[-1][3]["Authorization"] == f"Bearer {KEY}"


def test_every_reason_and_error_of_the_flow_is_translated() -> None:
    """Every abort reason and error the flow (or HA for it) can show has its text in strings.json
    and translations/en.json; ``already_in_progress`` had none."""
    component = Path(custom_components.home_security_intelligence.__file__).parent
    source = (component / "config_flow.py").read_text(encoding="utf-8")
    reasons = set(re.findall(r'reason="(\w+)"', source)) | {"already_configured", "already_in_progress"}
    reasons |= {"reauth_successful", "reconfigure_successful"}
    errors = set(re.findall(r'ServerCheck\("(\w+)"', source))
    assert {"invalid_auth", "cannot_connect", "too_many_failures", "server_refused", "invalid_url"} <= errors
    for name in ("strings.json", "translations/en.json"):
        config = json.loads((component / name).read_text(encoding="utf-8"))["config"]
        assert reasons <= set(config["abort"]), (name, reasons - set(config["abort"]))
        assert errors <= set(config["error"]), (name, errors - set(config["error"]))


@pytest.mark.real_setup
async def test_wrong_keys_in_a_second_flow_lock_out_neither_the_right_key_nor_the_working_entry(
    hass: HomeAssistant, socket_enabled: None, mqtt_mock: Any, real_server: RealServer
) -> None:
    """Issue 15, item 10: 10 wrong keys typed in a second flow (same address as the working entry)
    must give a clear, translated error, the right key must still be accepted, and the working
    entry's service calls must go on (the server locks out wrong keys, never a right one)."""
    pytest_socket.socket_allow_hosts(["127.0.0.1"], allow_unix_socket=True)
    working = MockConfigEntry(
        domain=DOMAIN, unique_id="hsi", data={"url": real_server.url, "api_key": real_server.api_key, "prefix": "hsi"}
    )
    working.add_to_hass(hass)
    assert await hass.config_entries.async_setup(working.entry_id)
    await hass.async_block_till_done()

    result = await hass.config_entries.flow.async_init(DOMAIN, context={"source": config_entries.SOURCE_USER})
    wrong = "hsi_0123456789ab_" + "w" * 43
    errors = []
    for _ in range(11):
        result = await hass.config_entries.flow.async_configure(
            result["flow_id"], {"url": real_server.url, "api_key": wrong, "prefix": "second"}
        )
        assert result["type"] is FlowResultType.FORM
        errors.append(result["errors"]["base"])
    assert errors == ["invalid_auth"] * 10 + ["too_many_failures"]
    retry_in = int(result["description_placeholders"]["retry_after"])
    assert 0 < retry_in <= 60

    # The working entry is not locked out by someone else's wrong keys from its address.
    page = await hass.services.async_call(
        DOMAIN, "get_events", {"config_entry_id": working.entry_id}, blocking=True, return_response=True
    )
    assert page is not None and "events" in page

    # The right key is still accepted in the flow.
    result = await hass.config_entries.flow.async_configure(
        result["flow_id"], {"url": real_server.url, "api_key": real_server.api_key, "prefix": "second"}
    )
    assert result["type"] is FlowResultType.CREATE_ENTRY, result.get("errors")
    assert await hass.config_entries.async_unload(working.entry_id)
