"""State of one HSI server, pushed over MQTT (no polling): availability, status, cameras,
snapshots and events. Entities listen to it; it fires the HA bus event per published event, whose
data (when an event alerts) alerts.py decides."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from homeassistant.components import mqtt
from homeassistant.config_entries import ConfigEntry
from homeassistant.core import CALLBACK_TYPE, HomeAssistant, callback
from homeassistant.helpers import device_registry as dr
from homeassistant.helpers import issue_registry as ir
from homeassistant.helpers.dispatcher import async_dispatcher_send
from homeassistant.helpers.event import async_call_later
from homeassistant.util import dt as dt_util

from .alerts import AlertTracker
from .api import HsiClient, HsiError
from .const import (
    DOMAIN,
    EVENT_BUS,
    ISSUE_UNREACHABLE,
    SIGNAL_NEW_CAMERA,
    UNREACHABLE_ISSUE_AFTER,
)

_LOGGER = logging.getLogger(__name__)


@dataclass
class CameraData:
    """What the server last published about one camera."""

    camera_id: str
    name: str
    state: dict[str, Any] = field(default_factory=dict)
    snapshot: bytes | None = None
    last_event: dict[str, Any] | None = None

    @property
    def last_event_id(self) -> str | None:
        """The camera's latest event as its retained state names it (survives reloads and restarts)."""
        event_id = self.state.get("last_event_id")
        return str(event_id) if event_id else None

    @property
    def last_event_at(self) -> datetime | None:
        """When that event started (the retained state's ``last_event_at``)."""
        return dt_util.parse_datetime(str(self.state.get("last_event_at") or ""))


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
        #: When an event alerts: what each ``hsi/events`` message tells the bus (alerts.py).
        self._alerts = AlertTracker()
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
        self.hass.bus.async_fire(EVENT_BUS, self._alerts.bus_event(event, camera.camera_id, camera.name, time.time()))
        for listener in list(self._event_listeners):
            listener(event)
        self._notify()


def _json(msg: mqtt.ReceiveMessage) -> dict[str, Any] | None:
    try:
        parsed = json.loads(msg.payload)
    except (TypeError, ValueError):
        _LOGGER.warning("ignoring a malformed message on %s", msg.topic)
        return None
    return parsed if isinstance(parsed, dict) else None
