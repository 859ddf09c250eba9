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
from homeassistant.helpers.dispatcher import async_dispatcher_send

from .api import HsiClient, HsiError
from .const import DOMAIN, EVENT_BUS, SIGNAL_NEW_CAMERA

_LOGGER = logging.getLogger(__name__)


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
        self._unsubscribe: list[CALLBACK_TYPE] = []

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
        for topic, handler, encoding in subscriptions:
            self._unsubscribe.append(await mqtt.async_subscribe(self.hass, topic, handler, qos=1, encoding=encoding))

    @callback
    def async_stop(self) -> None:
        while self._unsubscribe:
            self._unsubscribe.pop()()

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
                "summary": event.get("summary"),
                "analysis_source": event.get("analysis_source"),
                "started_at": event.get("started_at"),
                # For per-camera cooldowns (the blueprint): seconds since this camera's previous event.
                "seconds_since_previous_event": camera.since_previous_s,
            },
        )
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
