"""Sensors: per camera (risk score and level), per server (queue, dead letters, latency) and the
GPU sensors, enabled on a GPU server only."""

from __future__ import annotations

from typing import Any

from homeassistant.const import STATE_OFF, STATE_ON
from homeassistant.core import HomeAssistant
from homeassistant.helpers import device_registry as dr
from homeassistant.helpers import entity_registry as er
from pytest_homeassistant_custom_component.common import MockConfigEntry
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
