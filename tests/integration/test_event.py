"""The event entity: fired by each new judgement of an event, beside the bus event."""

from __future__ import annotations

from homeassistant.core import HomeAssistant
from pytest_homeassistant_custom_component.common import MockConfigEntry, async_capture_events

from custom_components.home_security_intelligence.const import EVENT_BUS

from .conftest import camera_online, publish, sample


async def test_an_event_fires_the_event_entity_and_the_bus(hass: HomeAssistant, entry: MockConfigEntry) -> None:
    await camera_online(hass)
    fired = async_capture_events(hass, EVENT_BUS)
    publish(hass, "hsi/events", sample("event_new.json"))
    await hass.async_block_till_done()
    state = hass.states.get("event.back_door_security_event")
    assert state.attributes["event_type"] == "high"
    assert state.attributes["event_id"] == "5f0c1f7e-2b7a-4c1e-9a55-0d3b1a6c9e21"
    assert state.attributes["factors"] == ["person", "night", "armed_away", "sensitive_zone"]
    assert state.attributes["summary"].startswith("1 person at Back door")
    assert [e.data["type"] for e in fired] == ["new"]
    assert fired[0].data["risk_level"] == "high" and fired[0].data["camera_id"] == "back_door"
    # The LLM's update: same event id, new level and narrative.
    publish(hass, "hsi/events", sample("event_update.json"))
    await hass.async_block_till_done()
    state = hass.states.get("event.back_door_security_event")
    assert state.attributes["event_type"] == "critical" and state.attributes["phase"] == "update"
    assert state.attributes["analysis_source"] == "llm"
    assert [e.data["type"] for e in fired] == ["new", "update"]
    # "end" reaches the bus but does not fire the entity again.
    publish(hass, "hsi/events", sample("event_end.json"))
    await hass.async_block_till_done()
    assert [e.data["type"] for e in fired] == ["new", "update", "end"]
    assert hass.states.get("event.back_door_security_event").attributes["phase"] == "update"


async def test_a_review_or_an_unchanged_update_does_not_fire_the_event_entity(
    hass: HomeAssistant, entry: MockConfigEntry
) -> None:
    await camera_online(hass)
    publish(hass, "hsi/events", sample("event_new.json"))
    await hass.async_block_till_done()
    fired_at = hass.states.get("event.back_door_security_event").state
    # The LLM agrees (same level), then the user reviews it (the server's alert: false).
    publish(hass, "hsi/events", {**sample("event_update.json"), "risk_level": "high", "alert": True})
    publish(hass, "hsi/events", {**sample("event_update.json"), "reviewed": True, "alert": False})
    await hass.async_block_till_done()
    state = hass.states.get("event.back_door_security_event")
    assert state.state == fired_at and state.attributes["phase"] == "new"
