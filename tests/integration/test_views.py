"""The event snapshot view: Home Assistant's auth (a login or a signed path) in front of the server's
snapshot, fetched with the entry's key; clear answers when it cannot be had. The real server's
path is in test_llm_api.py (the summarize service) and test_digest_blueprint.py (the notification)."""

from __future__ import annotations

from typing import Any

import aiohttp
from homeassistant.core import HomeAssistant
from homeassistant.helpers import network
from pytest_homeassistant_custom_component.common import MockConfigEntry
from pytest_homeassistant_custom_component.test_util.aiohttp import AiohttpClientMocker

from custom_components.home_security_intelligence.coordinator import digest_event_data
from custom_components.home_security_intelligence.views import absolute_url, signed_snapshot_path

from .conftest import JPEG, KEY, URL

EVENT_ID = "5f0c1f7e-2b7a-4c1e-9a55-0d3b1a6c9e21"
OTHER_ID = "00000000-0000-0000-0000-000000000001"


def _path(entry: MockConfigEntry, event_id: str = EVENT_ID) -> str:
    return f"/api/home_security_intelligence/{entry.entry_id}/events/{event_id}/snapshot.jpg"


async def test_a_logged_in_user_gets_the_snapshot_the_server_gave_the_entrys_key(
    hass: HomeAssistant, entry: MockConfigEntry, aioclient_mock: AiohttpClientMocker, hass_client: Any
) -> None:
    aioclient_mock.get(
        f"{URL}/api/v1/events/{EVENT_ID}/snapshot.jpg", content=JPEG, headers={"Content-Type": "image/jpeg"}
    )
    client = await hass_client()
    resp = await client.get(_path(entry))
    assert resp.status == 200 and resp.content_type == "image/jpeg" and await resp.read() == JPEG
    assert resp.headers["Cache-Control"] == "private, max-age=3600"
    assert aioclient_mock.mock_calls[-1][3]["Authorization"] == f"Bearer {KEY}"


async def test_a_signed_path_opens_its_own_event_only(
    hass: HomeAssistant, entry: MockConfigEntry, aioclient_mock: AiohttpClientMocker, hass_client_no_auth: Any
) -> None:
    aioclient_mock.get(
        f"{URL}/api/v1/events/{EVENT_ID}/snapshot.jpg", content=JPEG, headers={"Content-Type": "image/jpeg"}
    )
    signed = signed_snapshot_path(hass, entry.entry_id, EVENT_ID)
    client = await hass_client_no_auth()
    assert (await client.get(signed)).status == 200
    # The signature is bound to its path: moved to another event it opens nothing.
    moved = _path(entry, OTHER_ID) + "?" + signed.split("?", 1)[1]
    assert (await client.get(moved)).status == 401
    assert (await client.get(signed[:-4] + "AAAA")).status == 401
    calls = [str(call[1]) for call in aioclient_mock.mock_calls if "snapshot" in str(call[1])]
    assert calls == [f"{URL}/api/v1/events/{EVENT_ID}/snapshot.jpg"]


async def test_what_cannot_be_had_gets_a_clear_status(
    hass: HomeAssistant, entry: MockConfigEntry, aioclient_mock: AiohttpClientMocker, hass_client: Any
) -> None:
    aioclient_mock.get(
        f"{URL}/api/v1/events/{EVENT_ID}/snapshot.jpg",
        status=404,
        json={"error": {"code": "not_found", "message": "this event's snapshot was removed by retention"}},
    )
    aioclient_mock.get(
        f"{URL}/api/v1/events/{OTHER_ID}/snapshot.jpg",
        status=500,
        json={"error": {"code": "internal", "message": "boom"}},
    )
    client = await hass_client()
    assert (await client.get(_path(entry))).status == 404  # removed by retention
    assert (await client.get(_path(entry, OTHER_ID))).status == 502  # the server failed
    assert (await client.get(_path(entry, "not-an-event-id-at-all-not-a-uuid-xx"))).status == 404
    assert (await client.get(_path(entry, "zzzzzzzz-zzzz-zzzz-zzzz-zzzzzzzzzzzz"))).status == 404
    assert (await client.get(_path(entry, "-" * 36))).status == 404  # hex-ish, yet no UUID
    missing = f"/api/home_security_intelligence/01JUNKNOWNENTRY/events/{EVENT_ID}/snapshot.jpg"
    assert (await client.get(missing)).status == 404
    other = MockConfigEntry(domain="other", entry_id="01JOTHERDOMAIN")
    other.add_to_hass(hass)
    assert (await client.get(_path(other))).status == 404  # another integration's entry
    assert await hass.config_entries.async_unload(entry.entry_id)
    assert (await client.get(_path(entry))).status == 404  # not loaded: no server to ask


async def test_an_unreachable_server_is_a_bad_gateway(
    hass: HomeAssistant, entry: MockConfigEntry, aioclient_mock: AiohttpClientMocker, hass_client: Any
) -> None:
    aioclient_mock.get(f"{URL}/api/v1/events/{EVENT_ID}/snapshot.jpg", exc=aiohttp.ClientConnectionError())
    client = await hass_client()
    assert (await client.get(_path(entry))).status == 502


async def test_digest_data_without_a_home_assistant_url_keeps_the_signed_path(
    hass: HomeAssistant, entry: MockConfigEntry, monkeypatch: Any
) -> None:
    def no_url(*_: Any, **__: Any) -> str:
        raise network.NoURLAvailableError

    monkeypatch.setattr("custom_components.home_security_intelligence.views.get_url", no_url)
    assert absolute_url(hass, "/x") is None
    digest = {
        "text": "…",
        "top": [
            {"id": EVENT_ID, "snapshot_url": f"/api/v1/events/{EVENT_ID}/snapshot.jpg"},
            {"camera_id": "yard"},  # an older server's event without an id: left as it came
            "garbage",
        ],
    }
    data = digest_event_data(hass, digest, URL, "hsi", entry.entry_id)
    first, second = data["top"]
    assert first["snapshot_url"] == f"{URL}/api/v1/events/{EVENT_ID}/snapshot.jpg"
    assert first["image_path"].startswith(_path(entry) + "?authSig=") and first["image_url"] is None
    assert second == {"camera_id": "yard"}
