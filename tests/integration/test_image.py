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
