"""The last event's image: fetched from the server's REST API with the entry's key."""

from __future__ import annotations

from typing import Any

from homeassistant.core import HomeAssistant
from pytest_homeassistant_custom_component.common import MockConfigEntry
from pytest_homeassistant_custom_component.test_util.aiohttp import AiohttpClientMocker

from .conftest import JPEG, KEY, URL, camera_online, publish, sample


async def test_last_event_image_is_fetched_from_the_server(
    hass: HomeAssistant, entry: MockConfigEntry, aioclient_mock: AiohttpClientMocker, hass_client: Any
) -> None:
    event = sample("event_new.json")
    aioclient_mock.get(
        f"{URL}/api/v1/events/{event['id']}/snapshot.jpg", content=JPEG, headers={"Content-Type": "image/jpeg"}
    )
    await camera_online(hass)
    publish(hass, "hsi/events", event)
    await hass.async_block_till_done()
    state = hass.states.get("image.back_door_last_event")
    assert state is not None and state.state == "2026-11-24T02:10:03+00:00"
    client = await hass_client()
    resp = await client.get(state.attributes["entity_picture"])
    assert resp.status == 200 and await resp.read() == JPEG
    assert aioclient_mock.mock_calls[-1][3]["Authorization"] == f"Bearer {KEY}"


async def test_after_a_reload_the_image_shows_the_retained_states_last_event(
    hass: HomeAssistant, entry: MockConfigEntry, aioclient_mock: AiohttpClientMocker, hass_client: Any
) -> None:
    # No ``hsi/events`` message after the reload: only the retained camera state names the event.
    retained = sample("camera_state.json")
    aioclient_mock.get(
        f"{URL}/api/v1/events/{retained['last_event_id']}/snapshot.jpg",
        content=JPEG,
        headers={"Content-Type": "image/jpeg"},
    )
    await camera_online(hass)
    assert await hass.config_entries.async_reload(entry.entry_id)
    await hass.async_block_till_done()
    await camera_online(hass)
    state = hass.states.get("image.back_door_last_event")
    assert state is not None and state.state == "2026-11-24T02:10:03+00:00"
    client = await hass_client()
    resp = await client.get(state.attributes["entity_picture"])
    assert resp.status == 200 and await resp.read() == JPEG


async def test_a_newer_event_is_not_replaced_by_an_older_retained_state(
    hass: HomeAssistant, entry: MockConfigEntry, aioclient_mock: AiohttpClientMocker
) -> None:
    await camera_online(hass)
    newer = sample("event_new.json") | {"id": "e-newer", "started_at": "2026-11-24T03:00:00Z"}
    publish(hass, "hsi/events", newer)
    publish(hass, "hsi/cameras/back_door/state", sample("camera_state.json"))
    await hass.async_block_till_done()
    state = hass.states.get("image.back_door_last_event")
    assert state is not None and state.state == "2026-11-24T03:00:00+00:00"
    # A later event in the retained state (one whose ``new`` was missed) is taken.
    later = sample("camera_state.json") | {"last_event_id": "e-later", "last_event_at": "2026-11-24T04:00:00Z"}
    publish(hass, "hsi/cameras/back_door/state", later)
    await hass.async_block_till_done()
    state = hass.states.get("image.back_door_last_event")
    assert state is not None and state.state == "2026-11-24T04:00:00+00:00"
