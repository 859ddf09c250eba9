"""Binary sensors: the server's connection follows its MQTT availability, and every entity goes
unavailable while the server is offline."""

from __future__ import annotations

import pytest
from homeassistant.const import STATE_OFF, STATE_UNAVAILABLE
from homeassistant.core import HomeAssistant
from pytest_homeassistant_custom_component.common import MockConfigEntry

from .conftest import URL, camera_online, publish


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
