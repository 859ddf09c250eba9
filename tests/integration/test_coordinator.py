"""The coordinator: camera devices coming and going, malformed messages, and the repairs issue
of a server offline for long."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest
from homeassistant.core import HomeAssistant
from homeassistant.helpers import device_registry as dr
from homeassistant.helpers import entity_registry as er
from homeassistant.helpers import issue_registry as ir
from homeassistant.util import dt as dt_util
from pytest_homeassistant_custom_component.common import (
    MockConfigEntry,
    async_fire_mqtt_message,
    async_fire_time_changed,
)
from pytest_homeassistant_custom_component.test_util.aiohttp import AiohttpClientMocker

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


async def test_online_again_is_logged_after_an_outage_only(
    hass: HomeAssistant, entry: MockConfigEntry, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="custom_components.home_security_intelligence")
    await camera_online(hass)
    assert "online again" not in caplog.text, "the first connect is no recovery"
    publish(hass, "hsi/availability", "offline")
    publish(hass, "hsi/availability", "online")
    await hass.async_block_till_done()
    assert caplog.text.count(f"HSI server {URL} is online again") == 1


async def test_a_camera_added_after_set_up_gets_its_server_name_and_follows_renames(
    hass: HomeAssistant, entry: MockConfigEntry, aioclient_mock: AiohttpClientMocker
) -> None:
    await camera_online(hass)
    # The server gained a camera after set-up: its name is only known to the server's REST API.
    aioclient_mock.clear_requests()
    aioclient_mock.get(
        f"{URL}/api/v1/cameras",
        json={
            "cameras": [
                {"id": "back_door", "name": "Back door", "folder": "back_door", "enabled": True},
                {"id": "garage", "name": "Garage door", "folder": "garage", "enabled": True},
            ]
        },
    )
    publish(hass, "hsi/cameras/garage/state", {**sample("camera_state.json"), "risk_score": 5, "risk_level": "low"})
    await hass.async_block_till_done()
    devices = dr.async_get(hass)
    device = devices.async_get_device(identifiers={(DOMAIN, "hsi_garage")})
    assert device is not None and device.name == "Garage door"
    score = er.async_get(hass).async_get_entity_id("sensor", DOMAIN, "hsi_garage_risk_score")
    assert score == "sensor.garage_door_risk_score"
    assert hass.states.get(score).attributes["friendly_name"] == "Garage door Risk score"
    # Renamed on the server: its events carry the new name, and the device follows.
    publish(hass, "hsi/events", {**sample("event_new.json"), "camera_id": "garage", "camera_name": "Garage (north)"})
    await hass.async_block_till_done()
    device = devices.async_get_device(identifiers={(DOMAIN, "hsi_garage")})
    assert device is not None and device.name == "Garage (north)"
    assert hass.states.get(score).attributes["friendly_name"] == "Garage (north) Risk score"


async def test_a_new_camera_whose_name_cannot_be_asked_is_named_by_its_id_and_says_so(
    hass: HomeAssistant, entry: MockConfigEntry, aioclient_mock: AiohttpClientMocker, caplog: pytest.LogCaptureFixture
) -> None:
    await camera_online(hass)
    aioclient_mock.clear_requests()
    aioclient_mock.get(f"{URL}/api/v1/cameras", status=503, json={"error": {"code": "down", "message": "down"}})
    publish(hass, "hsi/cameras/garage/state", {**sample("camera_state.json"), "risk_score": 5, "risk_level": "low"})
    await hass.async_block_till_done()
    # The fallback: the camera still appears, named by its id, and the log says why.
    assert hass.states.get("sensor.garage_risk_score").state == "5"
    assert "camera names not loaded; new cameras are named by their id for now" in caplog.text


async def test_a_server_without_its_detector_model_raises_a_repairs_issue_until_it_loads(
    hass: HomeAssistant, entry: MockConfigEntry
) -> None:
    """The add-on's first start without its model (issue 21): hsi/status names the missing model,
    Home Assistant shows what to do, and the issue goes once a status without it arrives."""
    issues = ir.async_get(hass)
    issue_id = f"detector_model_missing_{entry.entry_id}"
    await camera_online(hass)
    status = sample("status.json")
    detail = "detector weights not found: /share/hsi/models/mine.onnx (set HSI_DETECTOR_WEIGHTS ...)"
    missing = {"name": "detector", "device": "none", "state": "missing", "vram_mb": None, "detail": detail}
    publish(hass, "hsi/status", {**status, "detector": None, "models": [missing]})
    await hass.async_block_till_done()
    issue = issues.async_get_issue(DOMAIN, issue_id)
    assert issue is not None and issue.translation_key == "detector_model_missing"
    assert issue.severity is ir.IssueSeverity.ERROR
    assert issue.translation_placeholders == {"title": entry.title, "detail": detail}
    publish(hass, "hsi/status", status)
    await hass.async_block_till_done()
    assert issues.async_get_issue(DOMAIN, issue_id) is None
