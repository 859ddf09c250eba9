"""The logbook: one readable line per security event ("Back door: high (82) — …; armed away, nobody
home"), one more when its level rises, none for an unchanged update, a review or the end."""

from __future__ import annotations

from typing import Any

import pytest
from homeassistant.core import HomeAssistant
from homeassistant.helpers import entity_registry as er
from homeassistant.setup import async_setup_component
from homeassistant.util import dt as dt_util
from pytest_homeassistant_custom_component.common import MockConfigEntry
from pytest_homeassistant_custom_component.components.recorder.common import async_wait_recording_done
from pytest_homeassistant_custom_component.typing import WebSocketGenerator

from custom_components.home_security_intelligence.const import DOMAIN

from .conftest import camera_online, publish, sample


@pytest.fixture(autouse=True)
def auto_enable_custom_integrations(recorder_mock: Any, enable_custom_integrations: None) -> None:
    """The recorder (the logbook's store) starts before ``hass``, as the harness requires."""


@pytest.fixture
async def logbook(recorder_mock: Any, hass: HomeAssistant) -> None:
    # The logbook's dependency "frontend" only serves the UI panel and needs the hass_frontend
    # package, absent from the test environment: marked loaded so the real logbook (its recorder
    # queries and websocket API) sets up.
    hass.config.components.add("frontend")
    assert await async_setup_component(hass, "logbook", {})


async def _entries(hass: HomeAssistant, ws: WebSocketGenerator, start: str, **scope: list[str]) -> list[dict[str, Any]]:
    """The logbook's entries since ``start``, of the whole home or of ``entity_ids`` / ``device_ids``
    (what a logbook card or an entity's and a device's logbook ask for)."""
    await async_wait_recording_done(hass)
    client = await ws()
    await client.send_json({"id": 1, "type": "logbook/get_events", "start_time": start, **scope})
    response = await client.receive_json()
    assert response["success"], response
    return [e for e in response["result"] if e.get("domain") == DOMAIN]


async def test_one_readable_line_per_event_and_one_per_level_rise(
    recorder_mock: Any, hass: HomeAssistant, logbook: None, entry: MockConfigEntry, hass_ws_client: WebSocketGenerator
) -> None:
    start = dt_util.utcnow().isoformat()
    await camera_online(hass)
    publish(hass, "hsi/events", sample("event_new.json"))
    await hass.async_block_till_done()
    publish(hass, "hsi/events", {**sample("event_update.json"), "risk_level": "high", "risk_score": 82})  # agrees
    publish(hass, "hsi/events", {**sample("event_end.json"), "risk_level": "high", "risk_score": 82})
    publish(hass, "hsi/events", {**sample("event_update.json"), "reviewed": True, "alert": False})  # a review
    await hass.async_block_till_done()
    entries = await _entries(hass, hass_ws_client, start)
    assert [(e["name"], e["message"]) for e in entries] == [
        (
            "Back door",
            "high (82) — 1 person at Back door at 02:10 (night) while armed away; nobody home",
        )
    ]
    assert entries[0]["entity_id"] == "event.back_door_security_event"
    # The same line in the event entity's logbook (and a logbook card naming it) and the camera's
    # device logbook: found there through the entity_id / device_id in the alert's data.
    device_id = er.async_get(hass).async_get("event.back_door_security_event").device_id
    for scope in ({"entity_ids": ["event.back_door_security_event"]}, {"device_ids": [device_id]}):
        scoped = await _entries(hass, hass_ws_client, start, **scope)
        assert [e["message"] for e in scoped] == [entries[0]["message"]], scope
    # The LLM raises it to critical: one more line, saying it rose.
    publish(hass, "hsi/events", sample("event_update.json"))
    await hass.async_block_till_done()
    entries = await _entries(hass, hass_ws_client, start)
    assert [e["message"].split(" — ")[0] for e in entries] == ["high (82)", "rose to critical (88)"]


async def test_the_models_description_gets_its_own_line_or_joins_the_alerts(
    recorder_mock: Any, hass: HomeAssistant, logbook: None, entry: MockConfigEntry, hass_ws_client: WebSocketGenerator
) -> None:
    start = dt_util.utcnow().isoformat()
    await camera_online(hass)
    vision = sample("event_update_vision.json")
    publish(hass, "hsi/events", sample("event_new.json"))
    await hass.async_block_till_done()
    publish(hass, "hsi/events", {**vision, "risk_level": "high", "risk_score": 82})  # same level, described
    publish(hass, "hsi/events", {**vision, "risk_level": "high", "risk_score": 82})  # a repeat: nothing new
    await hass.async_block_till_done()
    publish(hass, "hsi/events", {**vision, "id": "33333333-2222-4333-8444-555555555555", "type": "new"})
    await hass.async_block_till_done()
    entries = await _entries(hass, hass_ws_client, start)
    assert [e["message"] for e in entries] == [
        "high (82) — 1 person at Back door at 02:10 (night) while armed away; nobody home",
        f"high (82), described by qwen3-vl-8b-instruct: {vision['description']}",
        "critical (88) — 1 person at Back door at 02:10 (night) while armed away; nobody home."
        f" Described by qwen3-vl-8b-instruct: {vision['description']}",
    ]
    assert entries[1]["entity_id"] == "event.back_door_security_event"
