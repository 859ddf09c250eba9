"""Sensors: per camera (risk score and level), per server (queue, dead letters, latency) and the
GPU sensors, enabled on a GPU server only."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from freezegun.api import FrozenDateTimeFactory
from homeassistant.const import STATE_OFF, STATE_ON
from homeassistant.core import HomeAssistant
from homeassistant.helpers import device_registry as dr
from homeassistant.helpers import entity_registry as er
from pytest_homeassistant_custom_component.common import MockConfigEntry, async_fire_time_changed
from pytest_homeassistant_custom_component.test_util.aiohttp import AiohttpClientMocker

from custom_components.home_security_intelligence.const import DOMAIN

from .conftest import KEY, URL, camera_online, publish, sample


async def test_camera_entities_follow_the_published_state(hass: HomeAssistant, entry: MockConfigEntry) -> None:
    await camera_online(hass)
    assert hass.states.get("sensor.back_door_risk_score").state == "82"
    level = hass.states.get("sensor.back_door_risk_level")
    assert level.state == "high" and level.attributes["options"] == ["low", "medium", "high", "critical"]
    assert hass.states.get("binary_sensor.back_door_person").state == STATE_ON
    # "dog": 0 in the sample: the animal sensor is off, and there was no vehicle.
    assert hass.states.get("binary_sensor.back_door_animal").state == STATE_OFF
    assert hass.states.get("binary_sensor.back_door_vehicle").state == STATE_OFF
    assert hass.states.get("switch.back_door_detection").state == STATE_ON
    device = dr.async_get(hass).async_get_device(identifiers={(DOMAIN, "hsi_back_door")})
    assert device is not None and device.name == "Back door"
    server = dr.async_get(hass).async_get_device(identifiers={(DOMAIN, "hsi")})
    assert device.via_device_id == server.id


async def test_server_sensors_and_connectivity(hass: HomeAssistant, entry: MockConfigEntry) -> None:
    await camera_online(hass)
    assert hass.states.get("sensor.home_security_intelligence_server_queue_depth").state == "4"
    assert hass.states.get("sensor.home_security_intelligence_server_dead_letters").state == "2"
    assert hass.states.get("sensor.home_security_intelligence_server_latency_p95").state == "380.0"
    assert hass.states.get("binary_sensor.home_security_intelligence_server_server_connection").state == STATE_ON
    registry = er.async_get(hass)
    assert registry.async_get("sensor.home_security_intelligence_server_queue_depth").entity_category == "diagnostic"
    # No GPU on this server: the GPU sensors exist but are disabled by the integration.
    gpu = registry.async_get("sensor.home_security_intelligence_server_gpu_utilization")
    assert gpu is not None and gpu.disabled_by is er.RegistryEntryDisabler.INTEGRATION
    assert hass.states.get("sensor.home_security_intelligence_server_gpu_utilization") is None


async def test_gpu_sensors_of_a_gpu_server_are_enabled_and_report(
    hass: HomeAssistant, mqtt_mock: Any, aioclient_mock: AiohttpClientMocker
) -> None:
    gpu_status = {
        **sample("status.json"),
        "gpu": {
            "name": "NVIDIA H200",
            "utilization_percent": 71,
            "memory_used_mb": 5120,
            "memory_total_mb": 143771,
            "temperature_c": 58,
        },
    }
    aioclient_mock.get(f"{URL}/api/v1/system/status", json=gpu_status)
    aioclient_mock.get(f"{URL}/api/v1/cameras", json={"cameras": []})
    entry = MockConfigEntry(domain=DOMAIN, unique_id="hsi", data={"url": URL, "api_key": KEY, "prefix": "hsi"})
    entry.add_to_hass(hass)
    assert await hass.config_entries.async_setup(entry.entry_id)
    await hass.async_block_till_done()
    publish(hass, "hsi/availability", "online")
    publish(hass, "hsi/status", gpu_status)
    await hass.async_block_till_done()
    assert hass.states.get("sensor.home_security_intelligence_server_gpu_utilization").state == "71"
    assert hass.states.get("sensor.home_security_intelligence_server_gpu_temperature").state == "58"


async def _advance(hass: HomeAssistant, freezer: FrozenDateTimeFactory, delta: timedelta) -> None:
    freezer.tick(delta)
    async_fire_time_changed(hass)
    await hass.async_block_till_done()


def _state(hass: HomeAssistant, entity_id: str) -> str:
    state = hass.states.get(entity_id)
    assert state is not None, entity_id
    return state.state


async def test_current_level_holds_the_event_level_then_decays_and_last_event_keeps_it(
    hass: HomeAssistant, entry: MockConfigEntry, freezer: FrozenDateTimeFactory
) -> None:
    current = "sensor.back_door_current_risk_level"
    home = "sensor.home_security_intelligence_server_home_risk_level"
    await camera_online(hass)
    publish(hass, "hsi/events", sample("event_new.json"))  # high
    # The server's retained state drops to low at the moment of the alert (the batch closed).
    publish(hass, "hsi/cameras/back_door/state", {**sample("camera_state.json"), "risk_score": 0, "risk_level": "low"})
    await hass.async_block_till_done()
    assert _state(hass, "sensor.back_door_risk_level") == "low"
    assert _state(hass, current) == "high" and _state(hass, home) == "high"
    assert hass.states.get(current).attributes["active_events"] == 1
    last = hass.states.get("sensor.back_door_last_event")
    assert last.state == "high"
    assert last.attributes["risk_score"] == 82 and last.attributes["reviewed"] is False
    assert last.attributes["summary"].startswith("1 person at Back door")
    # Still open an hour later: held (no end yet; the lost-end bound is 30 min of silence).
    await _advance(hass, freezer, timedelta(minutes=20))
    assert _state(hass, current) == "high"
    publish(hass, "hsi/events", {**sample("event_end.json"), "risk_level": "high", "risk_score": 82})
    await hass.async_block_till_done()
    assert _state(hass, current) == "high"
    # The LLM's verdict after the end raises the ended event: critical, held 10 minutes.
    publish(hass, "hsi/events", {**sample("event_update.json"), "type": "update", "alert": True})
    await hass.async_block_till_done()
    assert _state(hass, current) == "critical" and _state(hass, home) == "critical"
    assert _state(hass, "sensor.back_door_last_event") == "critical"
    await _advance(hass, freezer, timedelta(minutes=9))
    assert _state(hass, current) == "critical"
    await _advance(hass, freezer, timedelta(minutes=2))  # 11 min after the end
    assert _state(hass, current) == "high"
    await _advance(hass, freezer, timedelta(minutes=10))
    assert _state(hass, current) == "medium"
    await _advance(hass, freezer, timedelta(minutes=10))
    assert _state(hass, current) == "low" and _state(hass, home) == "low"
    # The last event keeps its values.
    assert _state(hass, "sensor.back_door_last_event") == "critical"
    # Never below the live level.
    publish(hass, "hsi/cameras/back_door/state", sample("camera_state.json"))  # high
    await hass.async_block_till_done()
    assert _state(hass, current) == "high"


async def test_current_level_and_last_event_survive_a_reload(
    hass: HomeAssistant, entry: MockConfigEntry, freezer: FrozenDateTimeFactory
) -> None:
    current = "sensor.back_door_current_risk_level"
    await camera_online(hass)
    publish(hass, "hsi/events", sample("event_new.json"))
    await hass.async_block_till_done()
    publish(hass, "hsi/events", sample("event_end.json"))
    await hass.async_block_till_done()
    assert await hass.config_entries.async_reload(entry.entry_id)
    await hass.async_block_till_done()
    # After the reload the retained state (low) comes back; the ended event's level is held.
    publish(hass, "hsi/availability", "online")
    publish(hass, "hsi/cameras/back_door/state", {**sample("camera_state.json"), "risk_score": 0, "risk_level": "low"})
    await hass.async_block_till_done()
    assert _state(hass, current) == "critical", "the end message's level, 88 critical, is the event's last"
    last = hass.states.get("sensor.back_door_last_event")
    assert last.state == "critical" and last.attributes["event_id"] == "5f0c1f7e-2b7a-4c1e-9a55-0d3b1a6c9e21"
    # The decay timer is re-armed from the restored end time.
    await _advance(hass, freezer, timedelta(minutes=11))
    assert _state(hass, current) == "high"


async def test_last_event_is_not_replaced_by_a_late_update_of_an_older_event(
    hass: HomeAssistant, entry: MockConfigEntry
) -> None:
    await camera_online(hass)
    publish(hass, "hsi/events", sample("event_new.json"))
    newer = {**sample("event_new.json"), "id": "11111111-2222-4333-8444-555555555555", "risk_level": "low"}
    publish(hass, "hsi/events", {**newer, "started_at": "2026-11-24T02:20:00Z", "risk_score": 10})
    # The LLM's verdict on the first event arrives after the second one started.
    publish(hass, "hsi/events", sample("event_update.json"))
    await hass.async_block_till_done()
    last = hass.states.get("sensor.back_door_last_event")
    assert last.state == "low" and last.attributes["event_id"] == newer["id"]
    # The older event is still open and now critical: the current level says so.
    assert _state(hass, "sensor.back_door_current_risk_level") == "critical"


async def test_an_event_whose_end_was_lost_stops_holding_after_30_minutes_of_silence(
    hass: HomeAssistant, entry: MockConfigEntry, freezer: FrozenDateTimeFactory
) -> None:
    current = "sensor.back_door_current_risk_level"
    await camera_online(hass)
    publish(hass, "hsi/cameras/back_door/state", {**sample("camera_state.json"), "risk_score": 0, "risk_level": "low"})
    publish(hass, "hsi/events", sample("event_new.json"))  # high; its "end" never comes
    await hass.async_block_till_done()
    await _advance(hass, freezer, timedelta(minutes=29))
    assert _state(hass, current) == "high"
    # 30 min of silence: counted as ended then, and decays from there (10 min hold, 10 min steps).
    await _advance(hass, freezer, timedelta(minutes=2))
    assert _state(hass, current) == "high"
    await _advance(hass, freezer, timedelta(minutes=10))
    assert _state(hass, current) == "medium"
    await _advance(hass, freezer, timedelta(minutes=10))
    assert _state(hass, current) == "low"
