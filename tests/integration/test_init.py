"""Entities, the bus event, availability, camera devices coming and going, unload and
diagnostics — fed with the MQTT payloads the server's own models produce (tests/fixtures/mqtt)."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from homeassistant.config_entries import ConfigEntryState
from homeassistant.const import STATE_OFF, STATE_ON, STATE_UNAVAILABLE
from homeassistant.core import HomeAssistant
from homeassistant.exceptions import HomeAssistantError
from homeassistant.helpers import device_registry as dr
from homeassistant.helpers import entity_registry as er
from homeassistant.helpers import issue_registry as ir
from homeassistant.util import dt as dt_util
from pytest_homeassistant_custom_component.common import (
    MockConfigEntry,
    async_capture_events,
    async_fire_mqtt_message,
    async_fire_time_changed,
)
from pytest_homeassistant_custom_component.test_util.aiohttp import AiohttpClientMocker

from custom_components.home_security_intelligence.const import DOMAIN, EVENT_BUS, UNREACHABLE_ISSUE_AFTER
from custom_components.home_security_intelligence.diagnostics import async_get_config_entry_diagnostics

from .conftest import sample

URL = "http://192.168.1.20:8765"
DASHBOARD = Path(__file__).resolve().parents[2] / "docs" / "dashboard.yaml"
KEY = "hsi_0123456789ab_" + "s" * 43
JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 64 + b"\xff\xd9"


@pytest.fixture
def expected_lingering_timers() -> bool:
    """HA's ``mqtt_mock`` leaves MQTT's periodic housekeeping timer running (a harness trait)."""
    return True


@pytest.fixture
async def entry(hass: HomeAssistant, mqtt_mock: Any, aioclient_mock: AiohttpClientMocker) -> MockConfigEntry:
    aioclient_mock.get(f"{URL}/api/v1/system/status", json=sample("status.json"))
    aioclient_mock.get(
        f"{URL}/api/v1/cameras",
        json={"cameras": [{"id": "back_door", "name": "Back door", "folder": "back_door", "enabled": True}]},
    )
    entry = MockConfigEntry(domain=DOMAIN, unique_id="hsi", data={"url": URL, "api_key": KEY, "prefix": "hsi"})
    entry.add_to_hass(hass)
    assert await hass.config_entries.async_setup(entry.entry_id)
    await hass.async_block_till_done()
    return entry


def _publish(hass: HomeAssistant, topic: str, payload: dict[str, Any] | str | bytes) -> None:
    body = json.dumps(payload) if isinstance(payload, dict) else payload
    async_fire_mqtt_message(hass, topic, body)


async def _camera_online(hass: HomeAssistant) -> None:
    _publish(hass, "hsi/availability", "online")
    _publish(hass, "hsi/status", sample("status.json"))
    _publish(hass, "hsi/cameras/back_door/state", sample("camera_state.json"))
    await hass.async_block_till_done()


async def test_camera_entities_follow_the_published_state(hass: HomeAssistant, entry: MockConfigEntry) -> None:
    await _camera_online(hass)
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
    await _camera_online(hass)
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
    _publish(hass, "hsi/availability", "online")
    _publish(hass, "hsi/status", gpu_status)
    await hass.async_block_till_done()
    assert hass.states.get("sensor.home_security_intelligence_server_gpu_utilization").state == "71"
    assert hass.states.get("sensor.home_security_intelligence_server_gpu_temperature").state == "58"


async def test_an_event_fires_the_event_entity_and_the_bus(hass: HomeAssistant, entry: MockConfigEntry) -> None:
    await _camera_online(hass)
    fired = async_capture_events(hass, EVENT_BUS)
    _publish(hass, "hsi/events", sample("event_new.json"))
    await hass.async_block_till_done()
    state = hass.states.get("event.back_door_security_event")
    assert state.attributes["event_type"] == "high"
    assert state.attributes["event_id"] == "5f0c1f7e-2b7a-4c1e-9a55-0d3b1a6c9e21"
    assert state.attributes["factors"] == ["person", "night", "armed_away", "sensitive_zone"]
    assert state.attributes["summary"].startswith("1 person at Back door")
    assert [e.data["type"] for e in fired] == ["new"]
    assert fired[0].data["risk_level"] == "high" and fired[0].data["camera_id"] == "back_door"
    # The LLM's update: same event id, new level and narrative.
    _publish(hass, "hsi/events", sample("event_update.json"))
    await hass.async_block_till_done()
    state = hass.states.get("event.back_door_security_event")
    assert state.attributes["event_type"] == "critical" and state.attributes["phase"] == "update"
    assert state.attributes["analysis_source"] == "llm"
    assert [e.data["type"] for e in fired] == ["new", "update"]
    # "end" reaches the bus but does not fire the entity again.
    _publish(hass, "hsi/events", sample("event_end.json"))
    await hass.async_block_till_done()
    assert [e.data["type"] for e in fired] == ["new", "update", "end"]
    assert hass.states.get("event.back_door_security_event").attributes["phase"] == "update"


async def test_snapshot_camera_serves_the_retained_jpeg(hass: HomeAssistant, entry: MockConfigEntry) -> None:
    from homeassistant.components.camera import async_get_image

    await _camera_online(hass)
    async_fire_mqtt_message(hass, "hsi/cameras/back_door/snapshot", JPEG)
    await hass.async_block_till_done()
    image = await async_get_image(hass, "camera.back_door_latest_detection")
    assert image.content == JPEG and image.content_type == "image/jpeg"


async def test_everything_goes_unavailable_when_the_server_is_offline(
    hass: HomeAssistant, entry: MockConfigEntry, caplog: pytest.LogCaptureFixture
) -> None:
    await _camera_online(hass)
    _publish(hass, "hsi/availability", "offline")
    _publish(hass, "hsi/availability", "offline")
    await hass.async_block_till_done()
    # Logged once per change, not once per message.
    assert [r.getMessage() for r in caplog.records if "went offline" in r.getMessage()] == [
        f"HSI server {URL} went offline (its MQTT last will)"
    ]
    assert hass.states.get("sensor.back_door_risk_score").state == STATE_UNAVAILABLE
    assert hass.states.get("binary_sensor.back_door_person").state == STATE_UNAVAILABLE
    assert hass.states.get("binary_sensor.home_security_intelligence_server_server_connection").state == STATE_OFF
    _publish(hass, "hsi/availability", "online")
    await hass.async_block_till_done()
    assert hass.states.get("sensor.back_door_risk_score").state == "82"


async def test_new_cameras_appear_and_removed_ones_go(hass: HomeAssistant, entry: MockConfigEntry) -> None:
    await _camera_online(hass)
    _publish(hass, "hsi/cameras/garage/state", {**sample("camera_state.json"), "risk_score": 5, "risk_level": "low"})
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
    await _camera_online(hass)
    _publish(hass, "hsi/cameras/back_door/state", "{not json")
    _publish(hass, "hsi/events", "[1, 2]")
    await hass.async_block_till_done()
    assert hass.states.get("sensor.back_door_risk_score").state == "82"


async def test_unload_removes_the_subscriptions(hass: HomeAssistant, entry: MockConfigEntry) -> None:
    await _camera_online(hass)
    assert await hass.config_entries.async_unload(entry.entry_id)
    await hass.async_block_till_done()
    assert entry.state is ConfigEntryState.NOT_LOADED
    assert hass.states.get("sensor.back_door_risk_score").state == STATE_UNAVAILABLE
    _publish(hass, "hsi/cameras/back_door/state", {**sample("camera_state.json"), "risk_score": 1})
    await hass.async_block_till_done()
    assert hass.states.get("sensor.back_door_risk_score").state == STATE_UNAVAILABLE


async def test_diagnostics_redact_the_api_key(hass: HomeAssistant, entry: MockConfigEntry) -> None:
    await _camera_online(hass)
    diagnostics = await async_get_config_entry_diagnostics(hass, entry)
    assert diagnostics["entry"]["data"]["api_key"] == "**REDACTED**"
    assert KEY not in json.dumps(diagnostics, default=str)
    assert diagnostics["cameras"]["back_door"]["state"]["risk_score"] == 82


async def test_a_rejected_key_starts_reauth(
    hass: HomeAssistant, mqtt_mock: Any, aioclient_mock: AiohttpClientMocker
) -> None:
    aioclient_mock.get(
        f"{URL}/api/v1/system/status", status=401, json={"error": {"code": "unauthorized", "message": ""}}
    )
    entry = MockConfigEntry(domain=DOMAIN, unique_id="hsi", data={"url": URL, "api_key": KEY})
    entry.add_to_hass(hass)
    assert not await hass.config_entries.async_setup(entry.entry_id)
    assert entry.state is ConfigEntryState.SETUP_ERROR
    flows = hass.config_entries.flow.async_progress_by_handler(DOMAIN)
    assert [f["context"]["source"] for f in flows] == ["reauth"]


async def _let_time_pass(hass: HomeAssistant, delta: timedelta) -> None:
    async_fire_time_changed(hass, dt_util.utcnow() + delta)
    await hass.async_block_till_done()


async def test_a_server_offline_for_long_raises_a_repairs_issue_that_clears_itself(
    hass: HomeAssistant, entry: MockConfigEntry
) -> None:
    issues = ir.async_get(hass)
    issue_id = f"server_unreachable_{entry.entry_id}"
    await _camera_online(hass)
    _publish(hass, "hsi/availability", "offline")
    await hass.async_block_till_done()
    # A short outage (a restart of the add-on) raises nothing.
    await _let_time_pass(hass, UNREACHABLE_ISSUE_AFTER / 2)
    assert issues.async_get_issue(DOMAIN, issue_id) is None
    _publish(hass, "hsi/availability", "online")
    _publish(hass, "hsi/availability", "offline")
    await hass.async_block_till_done()
    await _let_time_pass(hass, UNREACHABLE_ISSUE_AFTER * 0.9)
    assert issues.async_get_issue(DOMAIN, issue_id) is None, "the clock restarts at each outage"
    await _let_time_pass(hass, UNREACHABLE_ISSUE_AFTER * 1.2)
    issue = issues.async_get_issue(DOMAIN, issue_id)
    assert issue is not None
    assert issue.severity is ir.IssueSeverity.ERROR and issue.translation_key == "server_unreachable"
    assert issue.translation_placeholders == {"url": URL, "minutes": "10", "title": entry.title}
    # Back online: the issue goes by itself.
    _publish(hass, "hsi/availability", "online")
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


async def test_a_key_revoked_while_running_starts_reauth(
    hass: HomeAssistant, entry: MockConfigEntry, aioclient_mock: AiohttpClientMocker
) -> None:
    await _camera_online(hass)
    assert hass.config_entries.flow.async_progress_by_handler(DOMAIN) == []
    aioclient_mock.clear_requests()
    aioclient_mock.get(f"{URL}/api/v1/events", status=401, json={"error": {"code": "unauthorized", "message": ""}})
    with pytest.raises(HomeAssistantError):
        await hass.services.async_call(
            DOMAIN, "get_events", {"config_entry_id": entry.entry_id}, blocking=True, return_response=True
        )
    await hass.async_block_till_done()
    flows = hass.config_entries.flow.async_progress_by_handler(DOMAIN)
    assert [f["context"]["source"] for f in flows] == ["reauth"]
    # A second rejection does not open a second flow.
    with pytest.raises(HomeAssistantError):
        await hass.services.async_call(
            DOMAIN, "get_events", {"config_entry_id": entry.entry_id}, blocking=True, return_response=True
        )
    await hass.async_block_till_done()
    assert len(hass.config_entries.flow.async_progress_by_handler(DOMAIN)) == 1


async def test_every_entity_of_the_dashboard_exists(hass: HomeAssistant, entry: MockConfigEntry) -> None:
    import re

    await _camera_online(hass)
    _publish(hass, "hsi/cameras/driveway/state", sample("camera_state.json"))
    await hass.async_block_till_done()
    text = await hass.async_add_executor_job(DASHBOARD.read_text, "utf-8")
    entity_ids = set(re.findall(r"\b(?:sensor|binary_sensor|camera|switch|event|image)\.[a-z0-9_]+", text))
    assert len(entity_ids) >= 20
    # Registered (GPU sensors of this CPU-only sample are registered but disabled, so have no state).
    registry = er.async_get(hass)
    assert sorted(e for e in entity_ids if registry.async_get(e) is None) == []
    assert sorted(e for e in entity_ids if hass.states.get(e) is None and "_gpu_" not in e) == []


async def test_last_event_image_is_fetched_from_the_server(
    hass: HomeAssistant, entry: MockConfigEntry, aioclient_mock: AiohttpClientMocker, hass_client: Any
) -> None:
    event = sample("event_new.json")
    aioclient_mock.get(
        f"{URL}/api/v1/events/{event['id']}/snapshot.jpg", content=JPEG, headers={"Content-Type": "image/jpeg"}
    )
    await _camera_online(hass)
    _publish(hass, "hsi/events", event)
    await hass.async_block_till_done()
    state = hass.states.get("image.back_door_last_event")
    assert state is not None and state.state == "2026-11-24T02:10:03+00:00"
    client = await hass_client()
    resp = await client.get(state.attributes["entity_picture"])
    assert resp.status == 200 and await resp.read() == JPEG
    assert aioclient_mock.mock_calls[-1][3]["Authorization"] == f"Bearer {KEY}"


async def test_detection_switch_goes_through_rest_and_reports_a_failure(
    hass: HomeAssistant, entry: MockConfigEntry, aioclient_mock: AiohttpClientMocker
) -> None:
    await _camera_online(hass)
    camera_url = f"{URL}/api/v1/cameras/back_door"
    aioclient_mock.patch(camera_url, json={"id": "back_door", "name": "Back door", "enabled": False})
    await hass.services.async_call("switch", "turn_off", {"entity_id": "switch.back_door_detection"}, blocking=True)
    assert hass.states.get("switch.back_door_detection").state == STATE_OFF
    assert aioclient_mock.mock_calls[-1][2] == {"enabled": False}
    aioclient_mock.clear_requests()
    aioclient_mock.patch(camera_url, status=500, json={"error": {"code": "internal", "message": "boom"}})
    with pytest.raises(HomeAssistantError) as raised:
        await hass.services.async_call("switch", "turn_on", {"entity_id": "switch.back_door_detection"}, blocking=True)
    assert raised.value.translation_key == "camera_update_failed"
    assert hass.states.get("switch.back_door_detection").state == STATE_OFF


@pytest.mark.parametrize(
    ("service", "data", "method", "path"),
    [
        ("mark_reviewed", {"event_id": "e1", "feedback": "false_alarm"}, "patch", "/events/e1"),
        ("get_events", {"level": "high"}, "get", "/events"),
        ("requeue_dead_letters", {}, "get", "/dlq"),
        ("set_context", {"alarm_state": "armed_away"}, "put", "/context"),
    ],
)
async def test_service_failures_are_reported_with_their_reason(
    hass: HomeAssistant,
    entry: MockConfigEntry,
    aioclient_mock: AiohttpClientMocker,
    service: str,
    data: dict[str, Any],
    method: str,
    path: str,
) -> None:
    getattr(aioclient_mock, method)(
        f"{URL}/api/v1{path}", status=503, json={"error": {"code": "database_unavailable", "message": "down"}}
    )
    with pytest.raises(HomeAssistantError) as raised:
        await hass.services.async_call(
            DOMAIN, service, {"config_entry_id": entry.entry_id, **data}, blocking=True, return_response=True
        )
    assert raised.value.translation_key == "server_error"
    assert "database_unavailable" in str(raised.value.translation_placeholders)


async def test_services_refuse_an_unknown_or_unloaded_entry(hass: HomeAssistant, entry: MockConfigEntry) -> None:
    from homeassistant.exceptions import ServiceValidationError

    with pytest.raises(ServiceValidationError) as raised:
        await hass.services.async_call(
            DOMAIN, "get_events", {"config_entry_id": "nope"}, blocking=True, return_response=True
        )
    assert raised.value.translation_key == "unknown_entry"
    assert await hass.config_entries.async_unload(entry.entry_id)
    with pytest.raises(ServiceValidationError) as raised:
        await hass.services.async_call(
            DOMAIN, "get_events", {"config_entry_id": entry.entry_id}, blocking=True, return_response=True
        )
    assert raised.value.translation_key == "entry_not_loaded"
