"""The coordinator: camera devices coming and going, malformed messages, and the repairs issue
of a server offline for long."""

from __future__ import annotations

from datetime import timedelta

from homeassistant.core import HomeAssistant
from homeassistant.helpers import device_registry as dr
from homeassistant.helpers import issue_registry as ir
from homeassistant.util import dt as dt_util
from pytest_homeassistant_custom_component.common import (
    MockConfigEntry,
    async_fire_mqtt_message,
    async_fire_time_changed,
)

from custom_components.home_security_intelligence.const import DOMAIN, UNREACHABLE_ISSUE_AFTER

from .conftest import URL, camera_online, publish, sample


async def test_new_cameras_appear_and_removed_ones_go(hass: HomeAssistant, entry: MockConfigEntry) -> None:
    await camera_online(hass)
    publish(hass, "hsi/cameras/garage/state", {**sample("camera_state.json"), "risk_score": 5, "risk_level": "low"})
    await hass.async_block_till_done()
    assert hass.states.get("sensor.garage_risk_score").state == "5"
    devices = dr.async_get(hass)
    assert devices.async_get_device(identifiers={(DOMAIN, "hsi_garage")}) is not None
    # The server clears a deleted camera's retained state: its device goes.
    async_fire_mqtt_message(hass, "hsi/cameras/garage/state", "")
    await hass.async_block_till_done()
    assert devices.async_get_device(identifiers={(DOMAIN, "hsi_garage")}) is None
    assert hass.states.get("sensor.back_door_risk_score").state == "82"


async def test_malformed_messages_are_ignored(hass: HomeAssistant, entry: MockConfigEntry) -> None:
    await camera_online(hass)
    publish(hass, "hsi/cameras/back_door/state", "{not json")
    publish(hass, "hsi/events", "[1, 2]")
    await hass.async_block_till_done()
    assert hass.states.get("sensor.back_door_risk_score").state == "82"


async def _let_time_pass(hass: HomeAssistant, delta: timedelta) -> None:
    async_fire_time_changed(hass, dt_util.utcnow() + delta)
    await hass.async_block_till_done()


async def test_a_server_offline_for_long_raises_a_repairs_issue_that_clears_itself(
    hass: HomeAssistant, entry: MockConfigEntry
) -> None:
    issues = ir.async_get(hass)
    issue_id = f"server_unreachable_{entry.entry_id}"
    await camera_online(hass)
    publish(hass, "hsi/availability", "offline")
    await hass.async_block_till_done()
    # A short outage (a restart of the add-on) raises nothing.
    await _let_time_pass(hass, UNREACHABLE_ISSUE_AFTER / 2)
    assert issues.async_get_issue(DOMAIN, issue_id) is None
    publish(hass, "hsi/availability", "online")
    publish(hass, "hsi/availability", "offline")
    await hass.async_block_till_done()
    await _let_time_pass(hass, UNREACHABLE_ISSUE_AFTER * 0.9)
    assert issues.async_get_issue(DOMAIN, issue_id) is None, "the clock restarts at each outage"
    await _let_time_pass(hass, UNREACHABLE_ISSUE_AFTER * 1.2)
    issue = issues.async_get_issue(DOMAIN, issue_id)
    assert issue is not None
    assert issue.severity is ir.IssueSeverity.ERROR and issue.translation_key == "server_unreachable"
    assert issue.translation_placeholders == {"url": URL, "minutes": "10", "title": entry.title}
    # Back online: the issue goes by itself.
    publish(hass, "hsi/availability", "online")
    await hass.async_block_till_done()
    assert issues.async_get_issue(DOMAIN, issue_id) is None


async def test_a_server_that_never_comes_online_raises_the_issue_and_unload_clears_it(
    hass: HomeAssistant, entry: MockConfigEntry
) -> None:
    issues = ir.async_get(hass)
    issue_id = f"server_unreachable_{entry.entry_id}"
    # No retained "online" ever arrived (the server's MQTT side is down, its REST side answered).
    await _let_time_pass(hass, UNREACHABLE_ISSUE_AFTER * 1.1)
    assert issues.async_get_issue(DOMAIN, issue_id) is not None
    assert await hass.config_entries.async_unload(entry.entry_id)
    await hass.async_block_till_done()
    assert issues.async_get_issue(DOMAIN, issue_id) is None
