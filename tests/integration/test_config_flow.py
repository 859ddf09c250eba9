"""Config flow: every step, its errors and aborts; reauth; reconfigure; options.

The server's REST answers come from HA's ``aioclient_mock`` here (tests of the flow's logic);
tests/integration/test_init.py and the services run against responses of the same shapes."""

from __future__ import annotations

import json
from unittest.mock import patch

import aiohttp
import pytest
from homeassistant import config_entries
from homeassistant.core import HomeAssistant
from homeassistant.data_entry_flow import FlowResultType
from homeassistant.helpers.service_info.hassio import HassioServiceInfo
from homeassistant.helpers.service_info.mqtt import MqttServiceInfo
from pytest_homeassistant_custom_component.common import MockConfigEntry
from pytest_homeassistant_custom_component.test_util.aiohttp import AiohttpClientMocker

from custom_components.home_security_intelligence.const import DOMAIN

from .conftest import sample

URL = "http://192.168.1.20:8765"
KEY = "hsi_0123456789ab_" + "s" * 43


def _server(aioclient_mock: AiohttpClientMocker, url: str = URL, status: int = 200) -> None:
    aioclient_mock.get(f"{url}/api/v1/health/ready", json={"ready": True, "checks": {}})
    body = sample("status.json") if status == 200 else {"error": {"code": "unauthorized", "message": "no"}}
    aioclient_mock.get(f"{url}/api/v1/system/status", json=body, status=status)


@pytest.fixture(autouse=True)
def no_setup() -> object:
    with patch("custom_components.home_security_intelligence.async_setup_entry", return_value=True) as mocked:
        yield mocked


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


async def test_mqtt_discovery_of_a_known_server_updates_its_url(hass: HomeAssistant) -> None:
    entry = MockConfigEntry(domain=DOMAIN, unique_id="hsi", data={"url": "http://old:8765", "api_key": KEY})
    entry.add_to_hass(hass)
    result = await hass.config_entries.flow.async_init(
        DOMAIN, context={"source": config_entries.SOURCE_MQTT}, data=_mqtt_info(sample("discovery.json"))
    )
    assert result["type"] is FlowResultType.ABORT and result["reason"] == "already_configured"
    assert entry.data["url"] == URL


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
