"""HTTP views: an event's snapshot and clip served by Home Assistant, so a notification can show
the snapshot and a media player (``media_source``) can play the clip.

The HSI server's snapshot URL needs the server's API key, which a phone notification cannot
carry. ``/api/home_security_intelligence/<entry_id>/events/<event_id>/snapshot.jpg`` is Home
Assistant's own: it needs Home Assistant's authentication (a logged-in user's token, or a path
signed with ``async_sign_path``), and the integration fetches the picture from its server with
the entry's key. A digest's top events carry such a signed path (``image_path``), valid for
``SIGNED_PATH_TTL`` or until Home Assistant restarts (its signing secret lives in memory).
``.../events/<event_id>/clip`` streams the event's video clip the same way, a ``Range`` passed
on to the server (browsers seek, and Safari plays a video only with ranges).
"""

from __future__ import annotations

import logging
import uuid
from datetime import timedelta
from http import HTTPStatus

import aiohttp
from aiohttp import web
from homeassistant.components.http.auth import async_sign_path
from homeassistant.config_entries import ConfigEntryState
from homeassistant.core import HomeAssistant, callback
from homeassistant.helpers.http import KEY_HASS, HomeAssistantView
from homeassistant.helpers.network import NoURLAvailableError, get_url

from .api import HsiApiError, HsiClient, HsiError
from .const import DOMAIN

_LOGGER = logging.getLogger(__name__)

SNAPSHOT_PATH = "/api/home_security_intelligence/{entry_id}/events/{event_id}/snapshot.jpg"
CLIP_PATH = "/api/home_security_intelligence/{entry_id}/events/{event_id}/clip"
#: Headers of the server's clip answer passed on to the player.
_CLIP_HEADERS = ("Content-Type", "Content-Length", "Content-Range", "Accept-Ranges", "Last-Modified", "ETag")
_CHUNK = 256 * 1024
#: How long a digest's signed snapshot link works (a notification is often opened hours later).
SIGNED_PATH_TTL = timedelta(days=7)


@callback
def async_register_views(hass: HomeAssistant) -> None:
    hass.http.register_view(HsiEventSnapshotView())
    hass.http.register_view(HsiEventClipView())


@callback
def signed_snapshot_path(hass: HomeAssistant, entry_id: str, event_id: str) -> str:
    """The event's snapshot under Home Assistant, signed for ``SIGNED_PATH_TTL`` by Home
    Assistant's content user (not the caller: a link in a notification outlives any session)."""
    path = SNAPSHOT_PATH.format(entry_id=entry_id, event_id=event_id)
    return async_sign_path(hass, path, SIGNED_PATH_TTL, use_content_user=True)


@callback
def absolute_url(hass: HomeAssistant, path: str) -> str | None:
    """``path`` under Home Assistant's URL (the external one first), or None when it has none."""
    try:
        return f"{get_url(hass, prefer_external=True)}{path}"
    except NoURLAvailableError:
        return None


def _route(path: str) -> str:
    return path.replace("{entry_id}", "{entry_id:[0-9A-Za-z]+}").replace("{event_id}", "{event_id:[0-9a-fA-F-]{36}}")


def _client(request: web.Request, entry_id: str, event_id: str) -> tuple[HsiClient, str] | None:
    """The loaded entry's client and the event's id in canonical form, or None (404)."""
    hass = request.app[KEY_HASS]
    try:
        event = str(uuid.UUID(event_id))
    except ValueError:
        return None
    entry = hass.config_entries.async_get_entry(entry_id)
    if entry is None or entry.domain != DOMAIN or entry.state is not ConfigEntryState.LOADED:
        return None
    client: HsiClient = entry.runtime_data.client
    return client, event


def _upstream_failure(err: HsiError, what: str, event_id: str, passed_on: tuple[HTTPStatus, ...]) -> web.Response:
    """The answer when the server did not give the event's ``what`` (snapshot, clip): the server's
    own status when it is one of ``passed_on`` (the event has none, a range past its end), else 502
    (logged: the server failed or could not be reached)."""
    if isinstance(err, HsiApiError) and err.status in passed_on:
        return web.Response(status=err.status)
    _LOGGER.warning("event %s not fetched event_id=%s error=%s", what, event_id, err)
    return web.Response(status=HTTPStatus.BAD_GATEWAY)


class HsiEventSnapshotView(HomeAssistantView):
    """An event's snapshot, fetched from the entry's server with its key."""

    url = _route(SNAPSHOT_PATH)
    name = "api:home_security_intelligence:event_snapshot"
    requires_auth = True

    async def get(self, request: web.Request, entry_id: str, event_id: str) -> web.Response:
        if (found := _client(request, entry_id, event_id)) is None:
            return web.Response(status=HTTPStatus.NOT_FOUND)
        client, event = found
        try:
            jpeg = await client.event_snapshot(event)
        except HsiError as err:
            return _upstream_failure(err, "snapshot", event, (HTTPStatus.NOT_FOUND,))
        # Evidence: kept by the viewer only, never by a shared cache.
        return web.Response(body=jpeg, content_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})


class HsiEventClipView(HomeAssistantView):
    """An event's video clip, streamed from the entry's server with its key (ranges passed on)."""

    url = _route(CLIP_PATH)
    name = "api:home_security_intelligence:event_clip"
    requires_auth = True

    async def get(self, request: web.Request, entry_id: str, event_id: str) -> web.StreamResponse:
        if (found := _client(request, entry_id, event_id)) is None:
            return web.Response(status=HTTPStatus.NOT_FOUND)
        client, event = found
        try:
            async with client.event_clip(event, request.headers.get("Range")) as upstream:
                headers = {name: upstream.headers[name] for name in _CLIP_HEADERS if name in upstream.headers}
                response = web.StreamResponse(
                    status=upstream.status, headers=headers | {"Cache-Control": "private, max-age=3600"}
                )
                await response.prepare(request)
                try:
                    async for chunk in upstream.content.iter_chunked(_CHUNK):
                        await response.write(chunk)
                except (aiohttp.ClientError, TimeoutError) as err:
                    # The answer has begun: the player sees it end short of its length.
                    _LOGGER.warning("event clip cut off by the server event_id=%s error=%r", event, err)
                    return response
                await response.write_eof()
                return response
        except HsiError as err:
            return _upstream_failure(
                err, "clip", event, (HTTPStatus.NOT_FOUND, HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
            )
