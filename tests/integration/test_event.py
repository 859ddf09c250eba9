"""The event entity: fired by each new judgement of an event, beside the bus event."""

from __future__ import annotations

from homeassistant.core import HomeAssistant
from pytest_homeassistant_custom_component.common import MockConfigEntry, async_capture_events

from custom_components.home_security_intelligence.const import EVENT_BUS

from .conftest import URL, camera_online, publish, sample


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


async def test_an_event_seen_in_a_clip_links_it(hass: HomeAssistant, entry: MockConfigEntry) -> None:
    await camera_online(hass)
    event = sample("event_new.json")
    publish(hass, "hsi/events", {**event, "clip_url": f"/api/v1/events/{event['id']}/clip"})
    await hass.async_block_till_done()
    state = hass.states.get("event.back_door_security_event")
    assert state.attributes["clip_url"] == f"{URL}/api/v1/events/{event['id']}/clip"
    # Still images: no link.
    publish(hass, "hsi/events", {**sample("event_update.json"), "clip_url": None})
    await hass.async_block_till_done()
    assert hass.states.get("event.back_door_security_event").attributes["clip_url"] is None


async def test_the_models_description_reaches_the_event_entity_in_place_when_it_comes_later(
    hass: HomeAssistant, entry: MockConfigEntry
) -> None:
    """Phase two at the same level: no new firing (the state, its time, stays), but the entity's
    attributes carry the vision model's description, activity, indicators, observations and frames."""
    await camera_online(hass)
    publish(hass, "hsi/events", sample("event_new.json"))
    await hass.async_block_till_done()
    fired_at = hass.states.get("event.back_door_security_event").state
    assert hass.states.get("event.back_door_security_event").attributes["description"] is None
    vision = sample("event_update_vision.json")
    publish(hass, "hsi/events", {**vision, "risk_level": "high", "risk_score": 82})
    await hass.async_block_till_done()
    state = hass.states.get("event.back_door_security_event")
    assert state.state == fired_at and state.attributes["phase"] == "new"
    assert state.attributes["description"] == vision["description"]
    assert state.attributes["activity"] == "trying_entry"
    assert state.attributes["threat_indicators"] == ["pulling the door handle", "hood up at night"]
    assert state.attributes["model_observations"] == vision["model_observations"]
    assert state.attributes["frames_sent"] == [1042, 1041] and state.attributes["model"] == "qwen3-vl-8b-instruct"
    # A rise that brings the description fires the entity with it.
    publish(hass, "hsi/events", {**vision, "id": "22222222-2222-4333-8444-555555555555", "type": "new"})
    await hass.async_block_till_done()
    state = hass.states.get("event.back_door_security_event")
    assert state.state != fired_at and state.attributes["description"] == vision["description"]


async def test_a_message_sent_again_fires_nothing_again(hass: HomeAssistant, entry: MockConfigEntry) -> None:
    """At least once: a server that crashed between the broker's acknowledgement and marking the
    message sent sends it again, byte for byte. The bus event ("event started" triggers, the
    blueprint) and the event entity fire once for it; the event's next message still fires."""
    await camera_online(hass)
    fired = async_capture_events(hass, EVENT_BUS)
    publish(hass, "hsi/events", sample("event_new.json"))
    await hass.async_block_till_done()
    first = hass.states.get("event.back_door_security_event").state
    publish(hass, "hsi/events", sample("event_new.json"))
    await hass.async_block_till_done()
    assert [e.data["type"] for e in fired] == ["new"]
    assert hass.states.get("event.back_door_security_event").state == first
    publish(hass, "hsi/events", sample("event_update.json"))
    publish(hass, "hsi/events", sample("event_end.json"))
    publish(hass, "hsi/events", sample("event_end.json"))
    await hass.async_block_till_done()
    assert [e.data["type"] for e in fired] == ["new", "update", "end"]
