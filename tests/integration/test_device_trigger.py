"""Device triggers per camera: "event started" and "risk level became X" fire from the
server's events (the payload samples its models produce)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from homeassistant.components import automation
from homeassistant.components.device_automation import DeviceAutomationType
from homeassistant.core import HomeAssistant, ServiceCall
from homeassistant.helpers import device_registry as dr
from homeassistant.setup import async_setup_component
from pytest_homeassistant_custom_component.common import (
    MockConfigEntry,
    async_fire_mqtt_message,
    async_get_device_automations,
)
from pytest_homeassistant_custom_component.test_util.aiohttp import AiohttpClientMocker

from custom_components.home_security_intelligence.const import DOMAIN

from .conftest import sample

URL = "http://192.168.1.20:8765"


@pytest.fixture
def expected_lingering_timers() -> bool:
    """HA's ``mqtt_mock`` leaves MQTT's periodic housekeeping timer running (a harness trait)."""
    return True


async def test_camera_triggers_are_offered_and_fire(
    hass: HomeAssistant, mqtt_mock: Any, aioclient_mock: AiohttpClientMocker, service_calls: list[ServiceCall]
) -> None:
    aioclient_mock.get(f"{URL}/api/v1/system/status", json=sample("status.json"))
    aioclient_mock.get(f"{URL}/api/v1/cameras", json={"cameras": []})
    entry = MockConfigEntry(domain=DOMAIN, unique_id="hsi", data={"url": URL, "api_key": "k", "prefix": "hsi"})
    entry.add_to_hass(hass)
    assert await hass.config_entries.async_setup(entry.entry_id)
    async_fire_mqtt_message(hass, "hsi/availability", "online")
    async_fire_mqtt_message(hass, "hsi/cameras/back_door/state", json.dumps(sample("camera_state.json")))
    await hass.async_block_till_done()
    device = dr.async_get(hass).async_get_device(identifiers={(DOMAIN, "hsi_back_door")})
    assert device is not None

    triggers = await async_get_device_automations(hass, DeviceAutomationType.TRIGGER, device.id)
    assert sorted(t["type"] for t in triggers if t["domain"] == DOMAIN) == [
        "event_started",
        "risk_level_critical",
        "risk_level_high",
        "risk_level_low",
        "risk_level_medium",
    ]

    def automation_for(kind: str) -> dict[str, Any]:
        return {
            "trigger": {"platform": "device", "domain": DOMAIN, "device_id": device.id, "type": kind},
            "action": {"service": "test.automation", "data": {"kind": kind}},
        }

    assert await async_setup_component(
        hass,
        automation.DOMAIN,
        {automation.DOMAIN: [automation_for(k) for k in ("event_started", "risk_level_high", "risk_level_critical")]},
    )
    async_fire_mqtt_message(hass, "hsi/events", json.dumps(sample("event_new.json")))  # high
    await hass.async_block_till_done()
    assert sorted(c.data["kind"] for c in service_calls) == ["event_started", "risk_level_high"]
    async_fire_mqtt_message(hass, "hsi/events", json.dumps(sample("event_update.json")))  # critical
    await hass.async_block_till_done()
    assert sorted(c.data["kind"] for c in service_calls) == ["event_started", "risk_level_critical", "risk_level_high"]
    # An update that confirms the level is no change: "became critical" does not fire again.
    again = {**sample("event_update.json"), "summary": "Same level, a second narrative"}
    async_fire_mqtt_message(hass, "hsi/events", json.dumps(again))
    await hass.async_block_till_done()
    assert len(service_calls) == 3
    # The event's end repeats the level but is no new judgement: nothing fires.
    async_fire_mqtt_message(hass, "hsi/events", json.dumps(sample("event_end.json")))
    await hass.async_block_till_done()
    assert len(service_calls) == 3
    # Issue 15: the LLM's update arriving after the "end", and a review, fire nothing either.
    async_fire_mqtt_message(hass, "hsi/events", json.dumps(sample("event_update.json")))
    review = {**sample("event_update.json"), "alert": False, "reviewed": True}
    async_fire_mqtt_message(hass, "hsi/events", json.dumps(review))
    await hass.async_block_till_done()
    assert len(service_calls) == 3
