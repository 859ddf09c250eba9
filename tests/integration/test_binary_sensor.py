"""Binary sensors: the server's connection follows its MQTT availability, and every entity goes
unavailable while the server is offline."""

from __future__ import annotations

import pytest
from homeassistant.const import STATE_OFF, STATE_ON, STATE_UNAVAILABLE, STATE_UNKNOWN
from homeassistant.core import HomeAssistant
from pytest_homeassistant_custom_component.common import MockConfigEntry

from .conftest import URL, camera_online, publish, sample


async def test_everything_goes_unavailable_when_the_server_is_offline(
    hass: HomeAssistant, entry: MockConfigEntry, caplog: pytest.LogCaptureFixture
) -> None:
    await camera_online(hass)
    publish(hass, "hsi/availability", "offline")
    publish(hass, "hsi/availability", "offline")
    await hass.async_block_till_done()
    # Logged once per change, not once per message.
    assert [r.getMessage() for r in caplog.records if "went offline" in r.getMessage()] == [
        f"HSI server {URL} went offline (its MQTT last will)"
    ]
    assert hass.states.get("sensor.back_door_risk_score").state == STATE_UNAVAILABLE
    assert hass.states.get("binary_sensor.back_door_person").state == STATE_UNAVAILABLE
    assert hass.states.get("binary_sensor.home_security_intelligence_server_server_connection").state == STATE_OFF
    publish(hass, "hsi/availability", "online")
    await hass.async_block_till_done()
    assert hass.states.get("sensor.back_door_risk_score").state == "82"


async def test_the_tamper_sensor_follows_the_servers_tamper_state(hass: HomeAssistant, entry: MockConfigEntry) -> None:
    await camera_online(hass)
    entity_id = "binary_sensor.back_door_tampering"
    state = hass.states.get(entity_id)
    # Nothing judged yet (the server is still learning the scene): unknown, not "no problem".
    assert state.state == STATE_UNKNOWN and state.attributes["device_class"] == "problem"
    publish(hass, "hsi/cameras/back_door/tamper", sample("tamper.json"))
    await hass.async_block_till_done()
    state = hass.states.get(entity_id)
    assert (state.state, state.attributes["kind"], state.attributes["since"]) == (
        STATE_ON,
        "covered",
        "2026-11-24T02:15:00Z",
    )
    publish(hass, "hsi/cameras/back_door/tamper", {**sample("tamper.json"), "tampered": False, "kind": None})
    await hass.async_block_till_done()
    assert hass.states.get(entity_id).state == STATE_OFF
    # A malformed message changes nothing; the camera's deletion (an empty retained message) clears it.
    publish(hass, "hsi/cameras/back_door/tamper", "not json")
    await hass.async_block_till_done()
    assert hass.states.get(entity_id).state == STATE_OFF
    publish(hass, "hsi/cameras/back_door/tamper", "")
    await hass.async_block_till_done()
    assert hass.states.get(entity_id).state == STATE_UNKNOWN
