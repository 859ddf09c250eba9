"""Media source: the events seen in video clips, browsed per server and camera, played through
Home Assistant (``views.HsiEventClipView``; the server's API key never leaves Home Assistant).

Identifiers: ``<entry_id>`` (a server: its cameras), ``<entry_id>/<camera_id>`` (the camera's
latest events with a clip, newest first), ``<entry_id>/<camera_id>/<event_id>`` (one clip).
"""

from __future__ import annotations

from typing import Any

from homeassistant.components.media_player.const import MediaClass, MediaType
from homeassistant.components.media_player.errors import BrowseError
from homeassistant.components.media_source import BrowseMediaSource, MediaSource, MediaSourceItem, PlayMedia
from homeassistant.components.media_source.error import Unresolvable
from homeassistant.config_entries import ConfigEntryState
from homeassistant.core import HomeAssistant
from homeassistant.exceptions import HomeAssistantError
from homeassistant.util import dt as dt_util

from .api import HsiApiError, HsiClient, HsiError
from .const import DOMAIN
from .views import CLIP_PATH, SNAPSHOT_PATH

#: Events listed per camera (the newest); older ones are in the server's history.
EVENTS_PER_CAMERA = 100


async def async_get_media_source(hass: HomeAssistant) -> HsiMediaSource:
    return HsiMediaSource(hass)


class HsiMediaSource(MediaSource):
    """Event clips of every loaded HSI server."""

    name = "Home Security Intelligence"

    def __init__(self, hass: HomeAssistant) -> None:
        super().__init__(DOMAIN)
        self.hass = hass

    def _client(self, entry_id: str, error: type[HomeAssistantError]) -> tuple[str, HsiClient]:
        entry = self.hass.config_entries.async_get_entry(entry_id)
        if entry is None or entry.domain != DOMAIN or entry.state is not ConfigEntryState.LOADED:
            raise error(translation_domain=DOMAIN, translation_key="entry_not_loaded")
        client: HsiClient = entry.runtime_data.client
        return entry.title, client

    async def async_resolve_media(self, item: MediaSourceItem) -> PlayMedia:
        parts = item.identifier.split("/")
        if len(parts) != 3:
            raise Unresolvable(translation_domain=DOMAIN, translation_key="clip_not_found")
        entry_id, _, event_id = parts
        _, client = self._client(entry_id, Unresolvable)
        try:
            # One byte asked for: the clip exists and its container's media type is known.
            async with client.event_clip(event_id, "bytes=0-0") as probe:
                mime_type = probe.content_type
        except HsiApiError as err:
            if err.status == 404:
                raise Unresolvable(translation_domain=DOMAIN, translation_key="clip_not_found") from err
            raise Unresolvable(
                translation_domain=DOMAIN, translation_key="server_error", translation_placeholders={"error": str(err)}
            ) from err
        except HsiError as err:
            raise Unresolvable(
                translation_domain=DOMAIN, translation_key="server_error", translation_placeholders={"error": str(err)}
            ) from err
        return PlayMedia(CLIP_PATH.format(entry_id=entry_id, event_id=event_id), mime_type)

    async def async_browse_media(self, item: MediaSourceItem) -> BrowseMediaSource:
        parts = [part for part in (item.identifier or "").split("/") if part]
        try:
            if not parts:
                return self._servers()
            if len(parts) == 1:
                return await self._cameras(parts[0])
            if len(parts) == 2:
                return await self._events(parts[0], parts[1])
        except HsiError as err:
            raise BrowseError(
                translation_domain=DOMAIN, translation_key="server_error", translation_placeholders={"error": str(err)}
            ) from err
        raise BrowseError(translation_domain=DOMAIN, translation_key="clip_not_found")

    def _servers(self) -> BrowseMediaSource:
        entries = [e for e in self.hass.config_entries.async_entries(DOMAIN) if e.state is ConfigEntryState.LOADED]
        return _folder(
            None,
            self.name or DOMAIN,
            [_folder(entry.entry_id, entry.title, []) for entry in entries],
        )

    async def _cameras(self, entry_id: str) -> BrowseMediaSource:
        title, client = self._client(entry_id, BrowseError)
        cameras = await client.list_cameras()
        children = [
            _folder(f"{entry_id}/{camera['id']}", str(camera.get("name") or camera["id"]), []) for camera in cameras
        ]
        return _folder(entry_id, title, children)

    async def _events(self, entry_id: str, camera_id: str) -> BrowseMediaSource:
        title, client = self._client(entry_id, BrowseError)
        page = await client.get_events(camera=camera_id, has_clip=True, limit=EVENTS_PER_CAMERA)
        events: list[dict[str, Any]] = page["events"]
        name = str(events[0]["camera_name"]) if events else camera_id
        children = [
            BrowseMediaSource(
                domain=DOMAIN,
                identifier=f"{entry_id}/{camera_id}/{event['id']}",
                media_class=MediaClass.VIDEO,
                media_content_type=MediaType.VIDEO,
                title=_event_title(event),
                can_play=True,
                can_expand=False,
                thumbnail=SNAPSHOT_PATH.format(entry_id=entry_id, event_id=event["id"]),
            )
            for event in events
        ]
        return _folder(f"{entry_id}/{camera_id}", f"{title}: {name}", children)


def _folder(identifier: str | None, title: str, children: list[BrowseMediaSource]) -> BrowseMediaSource:
    return BrowseMediaSource(
        domain=DOMAIN,
        identifier=identifier,
        media_class=MediaClass.DIRECTORY,
        media_content_type=MediaType.VIDEO,
        title=title,
        can_play=False,
        can_expand=True,
        children=children,
        children_media_class=MediaClass.VIDEO,
    )


def _event_title(event: dict[str, Any]) -> str:
    """``Tue 24 Nov 02:10, high: Person at the back door`` in Home Assistant's time zone."""
    started = dt_util.parse_datetime(str(event.get("started_at", "")))
    when = dt_util.as_local(started).strftime("%a %d %b %H:%M") if started is not None else "?"
    return f"{when}, {event.get('risk_level')}: {event.get('summary')}"
