"""State of one HSI server, pushed over MQTT (no polling): availability, status, cameras,
snapshots and events. Entities listen to it; it fires the HA bus event per published event."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from homeassistant.components import mqtt
from homeassistant.config_entries import ConfigEntry
from homeassistant.core import CALLBACK_TYPE, HomeAssistant, callback
from homeassistant.helpers import device_registry as dr
from homeassistant.helpers import issue_registry as ir
from homeassistant.helpers.dispatcher import async_dispatcher_send
from homeassistant.helpers.event import async_call_later

from .api import HsiClient, HsiError
from .const import (
    DOMAIN,
    EVENT_BUS,
    ISSUE_UNREACHABLE,
    RISK_LEVELS,
    SIGNAL_NEW_CAMERA,
    UNREACHABLE_ISSUE_AFTER,
)

_LOGGER = logging.getLogger(__name__)
MAX_OPEN_EVENTS = 1000


@dataclass
class CameraData:
    """What the server last published about one camera."""

    camera_id: str
    name: str
    state: dict[str, Any] = field(default_factory=dict)
    snapshot: bytes | None = None
    last_event: dict[str, Any] | None = None
    since_previous_s: float | None = None


class HsiCoordinator:
    """Subscribes to the server's retained topics and keeps the latest of each."""

    def __init__(self, hass: HomeAssistant, entry: ConfigEntry, client: HsiClient, prefix: str) -> None:
        self.hass = hass
        self.entry = entry
        self.client = client
        self.prefix = prefix
        self.online = False
        self.status: dict[str, Any] | None = None
        self.cameras: dict[str, CameraData] = {}
        self._names: dict[str, str] = {}
        self._listeners: list[CALLBACK_TYPE] = []
        self._event_listeners: list[Callable[[dict[str, Any]], None]] = []
        self._last_new: dict[str, float] = {}
        #: Level of each open event's latest judgement, so "risk level became X" fires on a change only.
        self._event_levels: dict[str, str | None] = {}
        #: Per camera and level: (event id, time) of the latest judgement at that level or above, and
        #: of the latest one from another event — the blueprint's quiet period per camera and level.
        self._at_level: dict[str, dict[str, tuple[str, float]]] = {}
        self._at_level_other: dict[str, dict[str, tuple[str, float]]] = {}
        self._unsubscribe: list[CALLBACK_TYPE] = []
        self._unreachable_timer: CALLBACK_TYPE | None = None

    @property
    def issue_id(self) -> str:
        return ISSUE_UNREACHABLE.format(self.entry.entry_id)

    @property
    def server_id(self) -> str:
        return self.entry.unique_id or self.entry.entry_id

    async def async_start(self) -> None:
        try:
            self._names = {c["id"]: c["name"] for c in await self.client.list_cameras()}
        except HsiError as err:
            # Names are cosmetic: cameras still appear from MQTT, named by their id.
            _LOGGER.debug("camera names not loaded: %s", err)
        p = self.prefix
        subscriptions: list[tuple[str, Callable[[mqtt.ReceiveMessage], None], str | None]] = [
            (f"{p}/availability", self._on_availability, "utf-8"),
            (f"{p}/status", self._on_status, "utf-8"),
            (f"{p}/cameras/+/state", self._on_camera_state, "utf-8"),
            (f"{p}/cameras/+/snapshot", self._on_snapshot, None),
            (f"{p}/events", self._on_event, "utf-8"),
        ]
        # Until the retained "online" arrives the server counts as offline: the clock starts now.
        self._arm_unreachable_timer()
        for topic, handler, encoding in subscriptions:
            self._unsubscribe.append(await mqtt.async_subscribe(self.hass, topic, handler, qos=1, encoding=encoding))

    @callback
    def async_stop(self) -> None:
        while self._unsubscribe:
            self._unsubscribe.pop()()
        self._cancel_unreachable_timer()
        # An unloaded entry raises no issue: it is no longer watching the server.
        ir.async_delete_issue(self.hass, DOMAIN, self.issue_id)

    @callback
    def _arm_unreachable_timer(self) -> None:
        if self._unreachable_timer is None:
            self._unreachable_timer = async_call_later(
                self.hass, UNREACHABLE_ISSUE_AFTER, self._raise_unreachable_issue
            )

    @callback
    def _cancel_unreachable_timer(self) -> None:
        if self._unreachable_timer is not None:
            self._unreachable_timer()
            self._unreachable_timer = None

    @callback
    def _raise_unreachable_issue(self, _now: Any) -> None:
        self._unreachable_timer = None
        minutes = int(UNREACHABLE_ISSUE_AFTER.total_seconds() // 60)
        _LOGGER.error(
            "HSI server %s has been offline for %d minutes; raising a repairs issue", self.client.url, minutes
        )
        ir.async_create_issue(
            self.hass,
            DOMAIN,
            self.issue_id,
            is_fixable=False,
            is_persistent=False,
            severity=ir.IssueSeverity.ERROR,
            translation_key="server_unreachable",
            translation_placeholders={"url": self.client.url, "minutes": str(minutes), "title": self.entry.title},
            learn_more_url="https://github.com/home-security-intelligence/hsi/blob/main/docs/install.md",
        )

    @callback
    def async_add_listener(self, update: CALLBACK_TYPE) -> CALLBACK_TYPE:
        self._listeners.append(update)

        def remove() -> None:
            self._listeners.remove(update)

        return remove

    @callback
    def async_add_event_listener(self, listener: Callable[[dict[str, Any]], None]) -> CALLBACK_TYPE:
        """``listener`` gets every ``hsi/events`` message (new / update / end), parsed."""
        self._event_listeners.append(listener)

        def remove() -> None:
            self._event_listeners.remove(listener)

        return remove

    @callback
    def _notify(self) -> None:
        for update in list(self._listeners):
            update()

    @callback
    def _on_availability(self, msg: mqtt.ReceiveMessage) -> None:
        online = msg.payload == "online"
        if online != self.online:
            # Logged once per change, not per message (quality scale: log-when-unavailable).
            if online:
                _LOGGER.info("HSI server %s is online again", self.client.url)
            else:
                _LOGGER.warning("HSI server %s went offline (its MQTT last will)", self.client.url)
        if online:
            self._cancel_unreachable_timer()
            ir.async_delete_issue(self.hass, DOMAIN, self.issue_id)
        else:
            self._arm_unreachable_timer()
        self.online = online
        self._notify()

    @callback
    def _on_status(self, msg: mqtt.ReceiveMessage) -> None:
        parsed = _json(msg)
        if parsed is not None:
            self.status = parsed
            self._notify()

    def _camera_id(self, topic: str) -> str:
        return topic.removeprefix(f"{self.prefix}/cameras/").split("/", 1)[0]

    @callback
    def _ensure_camera(self, camera_id: str) -> CameraData:
        camera = self.cameras.get(camera_id)
        if camera is None:
            camera = CameraData(camera_id, self._names.get(camera_id, camera_id))
            self.cameras[camera_id] = camera
            async_dispatcher_send(self.hass, SIGNAL_NEW_CAMERA.format(self.entry.entry_id), camera_id)
        return camera

    @callback
    def _on_camera_state(self, msg: mqtt.ReceiveMessage) -> None:
        camera_id = self._camera_id(msg.topic)
        if not msg.payload:
            # The server cleared the retained state: the camera was deleted.
            self._remove_camera(camera_id)
            return
        parsed = _json(msg)
        if parsed is None:
            return
        self._ensure_camera(camera_id).state = parsed
        self._notify()

    @callback
    def _remove_camera(self, camera_id: str) -> None:
        if self.cameras.pop(camera_id, None) is None:
            return
        registry = dr.async_get(self.hass)
        device = registry.async_get_device(identifiers={(DOMAIN, f"{self.server_id}_{camera_id}")})
        if device is not None:
            registry.async_update_device(device.id, remove_config_entry_id=self.entry.entry_id)
        self._notify()

    @callback
    def _on_snapshot(self, msg: mqtt.ReceiveMessage) -> None:
        if isinstance(msg.payload, bytes) and msg.payload:
            self._ensure_camera(self._camera_id(msg.topic)).snapshot = msg.payload
            self._notify()

    @callback
    def _on_event(self, msg: mqtt.ReceiveMessage) -> None:
        event = _json(msg)
        if event is None or "camera_id" not in event:
            return
        camera = self._ensure_camera(str(event["camera_id"]))
        camera.last_event = event
        now = time.time()
        if event.get("type") == "new":
            previous = self._last_new.get(camera.camera_id)
            self._last_new[camera.camera_id] = now
            camera.since_previous_s = round(now - previous, 1) if previous is not None else None
        level_changed, previous_level = self._track_level(event)
        since_at_level = self._since_at_level(camera.camera_id, event, now)
        self.hass.bus.async_fire(
            EVENT_BUS,
            {
                "type": event.get("type"),
                # A new judgement (the rules' "new" or the LLM's "update"), not the event's "end".
                "alert": event.get("type") in ("new", "update"),
                "event_id": event.get("id"),
                "camera_id": camera.camera_id,
                "camera_name": event.get("camera_name", camera.name),
                "risk_score": event.get("risk_score"),
                "risk_level": event.get("risk_level"),
                # True on "new", and on an "update" whose level differs from the event's previous judgement.
                "level_changed": level_changed,
                "previous_risk_level": previous_level,
                "summary": event.get("summary"),
                "analysis_source": event.get("analysis_source"),
                "started_at": event.get("started_at"),
                # For per-camera cooldowns (the blueprint): seconds since this camera's previous event.
                "seconds_since_previous_event": camera.since_previous_s,
                # Per level: seconds since another event of this camera was judged at that level or
                # above (None: never). A cat at 02:08 says nothing about the high event at 02:10.
                "seconds_since_previous_at_level": since_at_level,
            },
        )
        for listener in list(self._event_listeners):
            listener(event)
        self._notify()

    def _since_at_level(self, camera_id: str, event: dict[str, Any], now: float) -> dict[str, float | None]:
        event_id = str(event.get("id"))
        latest = self._at_level.setdefault(camera_id, {})
        other = self._at_level_other.setdefault(camera_id, {})
        since: dict[str, float | None] = {}
        for level in RISK_LEVELS:
            seen = latest.get(level)
            if seen is not None and seen[0] == event_id:
                seen = other.get(level)
            since[level] = round(now - seen[1], 1) if seen is not None else None
        judged = event.get("risk_level")
        if event.get("type") in ("new", "update") and judged in RISK_LEVELS:
            for reached in RISK_LEVELS[: RISK_LEVELS.index(judged) + 1]:
                seen = latest.get(reached)
                if seen is not None and seen[0] != event_id:
                    other[reached] = seen
                latest[reached] = (event_id, now)
        return since

    def _track_level(self, event: dict[str, Any]) -> tuple[bool, str | None]:
        event_id = str(event.get("id"))
        kind = event.get("type")
        previous = self._event_levels.get(event_id)
        if kind == "end":
            self._event_levels.pop(event_id, None)
            return False, previous
        if kind not in ("new", "update"):
            return False, previous
        level = event.get("risk_level")
        changed = kind == "new" or level != previous
        self._event_levels[event_id] = level
        while len(self._event_levels) > MAX_OPEN_EVENTS:
            # An "end" missed (HA restarted mid-event): forget the oldest.
            del self._event_levels[next(iter(self._event_levels))]
        return changed, previous if kind == "update" else None


def _json(msg: mqtt.ReceiveMessage) -> dict[str, Any] | None:
    try:
        parsed = json.loads(msg.payload)
    except (TypeError, ValueError):
        _LOGGER.warning("ignoring a malformed message on %s", msg.topic)
        return None
    return parsed if isinstance(parsed, dict) else None
