"""State of one HSI server, pushed over MQTT (no polling): availability, status, cameras,
snapshots and events. Entities listen to it; it fires the HA bus event per published event, whose
data (when an event alerts) alerts.py decides, and one ``EVENT_ALERT`` per alert (the logbook's
line). It also keeps each camera's current risk level (CameraRisk: held, then decaying)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from homeassistant.components import mqtt
from homeassistant.config_entries import ConfigEntry
from homeassistant.const import ATTR_DEVICE_ID, ATTR_ENTITY_ID
from homeassistant.core import CALLBACK_TYPE, HomeAssistant, callback
from homeassistant.helpers import device_registry as dr
from homeassistant.helpers import entity_registry as er
from homeassistant.helpers import issue_registry as ir
from homeassistant.helpers.dispatcher import async_dispatcher_send
from homeassistant.helpers.event import async_call_later, async_track_point_in_utc_time
from homeassistant.util import dt as dt_util

from .alerts import AlertTracker, recognised_people
from .api import HsiClient, HsiError
from .const import (
    DOMAIN,
    EVENT_BUS,
    ISSUE_MODEL_MISSING,
    ISSUE_UNREACHABLE,
    RISK_LEVELS,
    SIGNAL_NEW_CAMERA,
    UNREACHABLE_ISSUE_AFTER,
)
from .views import absolute_url, signed_snapshot_path

_LOGGER = logging.getLogger(__name__)

#: The "current risk level" (how worried to be now) of a camera: the highest level of its active
#: events (``new`` until ``end``, following ``update``s); after an event ends its level holds for
#: RISK_HOLD, then steps down one level every RISK_STEP (critical: 10 min critical, then high,
#: medium, and low 30 min after the end). Never below the camera's live risk level.
RISK_HOLD = timedelta(minutes=10)
RISK_STEP = timedelta(minutes=10)
#: An event whose ``end`` never arrived (HA was down, or the broker lost it) counts as ended this
#: long after its last message, so a lost ``end`` cannot pin the level for good.
RISK_ACTIVE_TIMEOUT = timedelta(minutes=30)
#: Fired once per alerting judgement (an event's ``new``, then each level rise): the logbook's line.
EVENT_ALERT = f"{DOMAIN}_alert"
#: The logbook's line when the language model's description of an event arrives after its alert.
EVENT_DESCRIBED = f"{DOMAIN}_described"
#: Fired once per digest the server publishes on ``hsi/digest`` (the morning's, or one asked for).
EVENT_DIGEST = f"{DOMAIN}_digest"


def _level_index(level: Any) -> int | None:
    return RISK_LEVELS.index(level) if level in RISK_LEVELS else None


@dataclass
class CameraRisk:
    """The events behind a camera's current risk level: level and time per event id."""

    #: Open events: (level index, time of its latest message).
    active: dict[str, tuple[int, datetime]] = field(default_factory=dict)
    #: Ended events still decaying: (level index, when it ended).
    ended: dict[str, tuple[int, datetime]] = field(default_factory=dict)

    def on_event(self, event: dict[str, Any], now: datetime) -> None:
        """Follow one ``hsi/events`` message received at ``now``."""
        event_id = str(event.get("id"))
        level = _level_index(event.get("risk_level"))
        kind = event.get("type")
        if kind == "end":
            opened = self.active.pop(event_id, None)
            # The end carries the event's latest judgement; without a level, the last one heard.
            final = level if level is not None else (opened[0] if opened is not None else None)
            if final is not None and event_id not in self.ended:
                self.ended[event_id] = (final, now)
        elif kind in ("new", "update") and level is not None:
            if event_id in self.ended:
                # The LLM's verdict after the end (the usual order): the ended event takes it.
                self.ended[event_id] = (level, self.ended[event_id][1])
            else:
                self.active[event_id] = (level, now)

    def level(self, now: datetime) -> int | None:
        """The highest level the events justify at ``now`` (None: no event does)."""
        self._expire(now)
        levels = [level for level, _ in self.active.values()]
        levels += [_decayed(level, ended, now) for level, ended in self.ended.values()]
        return max(levels, default=None)

    def next_change(self, now: datetime) -> datetime | None:
        """When ``level`` may next change without a message (a decay step, a lost ``end``)."""
        self._expire(now)
        times = [seen + RISK_ACTIVE_TIMEOUT for _, seen in self.active.values()]
        for level, ended in self.ended.values():
            if now < ended + RISK_HOLD:
                times.append(ended + RISK_HOLD)
            elif _decayed(level, ended, now) > 0:
                steps = (now - ended - RISK_HOLD) // RISK_STEP + 1
                times.append(ended + RISK_HOLD + steps * RISK_STEP)
        return min(times, default=None)

    def _expire(self, now: datetime) -> None:
        for event_id, (level, seen) in list(self.active.items()):
            if now >= seen + RISK_ACTIVE_TIMEOUT:
                del self.active[event_id]
                self.ended[event_id] = (level, seen + RISK_ACTIVE_TIMEOUT)
        for event_id, (level, ended) in list(self.ended.items()):
            if _decayed(level, ended, now) == 0:
                del self.ended[event_id]

    def as_dict(self) -> dict[str, Any]:
        """JSON for RestoreEntity: survives a reload or restart of Home Assistant."""
        return {
            part: {event_id: [RISK_LEVELS[level], at.isoformat()] for event_id, (level, at) in events.items()}
            for part, events in (("active", self.active), ("ended", self.ended))
        }

    def restore(self, data: dict[str, Any]) -> None:
        """Add what ``as_dict`` saved, for events this run has not heard of (live messages win)."""
        for part, events in (("active", self.active), ("ended", self.ended)):
            saved = data.get(part)
            if not isinstance(saved, dict):
                continue
            for event_id, value in saved.items():
                if event_id in self.active or event_id in self.ended or not isinstance(value, list | tuple):
                    continue
                level = _level_index(value[0]) if value else None
                at = dt_util.parse_datetime(str(value[1])) if len(value) > 1 else None
                if level is not None and at is not None:
                    events[event_id] = (level, at)


def _decayed(level: int, ended: datetime, now: datetime) -> int:
    if now < ended + RISK_HOLD:
        return level
    return max(0, level - 1 - (now - ended - RISK_HOLD) // RISK_STEP)


@dataclass
class CameraData:
    """What the server last published about one camera."""

    camera_id: str
    name: str
    state: dict[str, Any] = field(default_factory=dict)
    snapshot: bytes | None = None
    #: The retained ``TamperState`` (``tampered``, ``kind``, ``since``); None until the server judged one.
    tamper: dict[str, Any] | None = None
    last_event: dict[str, Any] | None = None
    risk: CameraRisk = field(default_factory=CameraRisk)
    #: Whether ``last_event`` alerted (its "new", a level rise): the event entity fires on those.
    last_event_alerted: bool = False
    #: The enrolled person this camera last recognised (None until one was).
    last_person: str | None = None

    def current_level(self, now: datetime) -> str | None:
        """How worried to be now: the events' held or decaying level, never below the live one."""
        levels = [self.risk.level(now), _level_index(self.state.get("risk_level"))]
        known = [level for level in levels if level is not None]
        return RISK_LEVELS[max(known)] if known else None

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
        #: The next decay step of any camera's current risk level (one timer, no polling).
        self._risk_timer: CALLBACK_TYPE | None = None
        #: Whether the server was ever seen offline (or never online) since it was last online:
        #: "online again" is only logged after a real outage.
        self._was_online = False
        self._names_task_running = False
        #: Cameras first seen after set-up whose name is being asked of the server.
        self._unnamed: set[str] = set()

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
            (f"{p}/cameras/+/tamper", self._on_tamper, "utf-8"),
            (f"{p}/events", self._on_event, "utf-8"),
            (f"{p}/digest", self._on_digest, "utf-8"),
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
        if self._risk_timer is not None:
            self._risk_timer()
            self._risk_timer = None
        # An unloaded entry raises no issue: it is no longer watching the server.
        ir.async_delete_issue(self.hass, DOMAIN, self.issue_id)
        ir.async_delete_issue(self.hass, DOMAIN, ISSUE_MODEL_MISSING.format(self.entry.entry_id))

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
            if online and self._was_online:
                _LOGGER.info("HSI server %s is online again", self.client.url)
            elif online:
                _LOGGER.debug("HSI server %s is online", self.client.url)
            else:
                _LOGGER.warning("HSI server %s went offline (its MQTT last will)", self.client.url)
        if online:
            self._was_online = True
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
            self._update_model_issue(parsed)
            self._notify()

    @callback
    def _update_model_issue(self, status: dict[str, Any]) -> None:
        """A repairs issue while the server runs without its detector model (a first start with
        no model, a wrong path): what is missing and what to do, gone once the model loads."""
        issue_id = ISSUE_MODEL_MISSING.format(self.entry.entry_id)
        models = status.get("models")
        missing = [
            m
            for m in (models if isinstance(models, list) else [])
            if isinstance(m, dict) and m.get("name") == "detector" and m.get("state") == "missing"
        ]
        if not missing:
            ir.async_delete_issue(self.hass, DOMAIN, issue_id)
            return
        ir.async_create_issue(
            self.hass,
            DOMAIN,
            issue_id,
            is_fixable=False,
            is_persistent=False,
            severity=ir.IssueSeverity.ERROR,
            translation_key="detector_model_missing",
            translation_placeholders={"title": self.entry.title, "detail": str(missing[0].get("detail") or "")},
            learn_more_url="https://github.com/home-security-intelligence/hsi/blob/main/addon/DOCS.md",
        )

    def _camera_id(self, topic: str) -> str:
        return topic.removeprefix(f"{self.prefix}/cameras/").split("/", 1)[0]

    @callback
    def _ensure_camera(self, camera_id: str, name: str | None = None) -> CameraData:
        """The camera's data; a camera first seen here gets its entities (and device) named by the
        server: ``name``, a name loaded at set-up, else the server's REST API is asked first."""
        camera = self.cameras.get(camera_id)
        if camera is None:
            known = name or self._names.get(camera_id)
            camera = CameraData(camera_id, known or camera_id)
            self.cameras[camera_id] = camera
            if known is None:
                # A camera added on the server after set-up: its entities wait for its name (one
                # REST call), so the device and entity ids never carry the raw id by accident.
                self._unnamed.add(camera_id)
                self._refresh_names()
            else:
                self._announce(camera_id)
        elif name and camera_id in self._unnamed:
            # Its name arrived with an event before the server's camera list: no need to wait.
            self._unnamed.discard(camera_id)
            camera.name = name
            self._names[camera_id] = name
            self._announce(camera_id)
        elif name and name != camera.name:
            self._rename_camera(camera, name)
        return camera

    @callback
    def _announce(self, camera_id: str) -> None:
        async_dispatcher_send(self.hass, SIGNAL_NEW_CAMERA.format(self.entry.entry_id), camera_id)

    @callback
    def _refresh_names(self) -> None:
        if not self._names_task_running:
            self._names_task_running = True
            self.entry.async_create_background_task(self.hass, self._async_refresh_names(), "hsi camera names")

    async def _async_refresh_names(self) -> None:
        names: dict[str, str] = {}
        try:
            names = {c["id"]: c["name"] for c in await self.client.list_cameras()}
        except HsiError as err:
            _LOGGER.warning("camera names not loaded; new cameras are named by their id for now: %s", err)
        finally:
            self._names_task_running = False
        self._names.update(names)
        for camera in list(self.cameras.values()):
            if (name := names.get(camera.camera_id)) and name != camera.name:
                self._rename_camera(camera, name)
        while self._unnamed:
            camera_id = self._unnamed.pop()
            if camera_id in self.cameras:
                self._announce(camera_id)

    @callback
    def _rename_camera(self, camera: CameraData, name: str) -> None:
        """The server's new name for a camera, on its device too (a name the user set is kept)."""
        camera.name = name
        self._names[camera.camera_id] = name
        registry = dr.async_get(self.hass)
        device = registry.async_get_device(identifiers={(DOMAIN, f"{self.server_id}_{camera.camera_id}")})
        if device is not None and device.name != name:
            registry.async_update_device(device.id, name=name)

    @callback
    def async_restore_risk(self, camera_id: str, data: dict[str, Any]) -> None:
        """Events a camera's current level followed before a reload or restart (RestoreEntity)."""
        camera = self.cameras.get(camera_id)
        if camera is not None:
            camera.risk.restore(data)
            self._schedule_risk_timer()

    @callback
    def _schedule_risk_timer(self) -> None:
        now = dt_util.utcnow()
        changes = [c for c in (camera.risk.next_change(now) for camera in self.cameras.values()) if c is not None]
        if self._risk_timer is not None:
            self._risk_timer()
            self._risk_timer = None
        if changes:
            self._risk_timer = async_track_point_in_utc_time(self.hass, self._on_risk_timer, min(changes))

    @callback
    def _on_risk_timer(self, _now: datetime) -> None:
        self._risk_timer = None
        self._schedule_risk_timer()
        self._notify()

    def home_level(self) -> str | None:
        """The highest current risk level over all cameras (None: no camera)."""
        now = dt_util.utcnow()
        levels = [_level_index(camera.current_level(now)) for camera in self.cameras.values()]
        known = [level for level in levels if level is not None]
        return RISK_LEVELS[max(known)] if known else None

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
    def _on_tamper(self, msg: mqtt.ReceiveMessage) -> None:
        camera_id = self._camera_id(msg.topic)
        if not msg.payload:  # cleared with the camera's other topics when it is deleted
            if (camera := self.cameras.get(camera_id)) is not None:
                camera.tamper = None
                self._notify()
            return
        if (parsed := _json(msg)) is not None and isinstance(parsed.get("tampered"), bool):
            self._ensure_camera(camera_id).tamper = parsed
            self._notify()

    @callback
    def _alert_data(self, data: dict[str, Any], event: dict[str, Any]) -> dict[str, Any]:
        """``EVENT_ALERT``'s data: the bus event's, plus the camera's event entity and device.
        The logbook finds a bus event for an entity's or a device's logbook (and a logbook card's
        entities) by the ``entity_id`` / ``device_id`` in its data."""
        alert = {**data, "server_id": self.server_id, "context": _context_line(event)}
        registry = er.async_get(self.hass)
        unique_id = f"{self.server_id}_{data['camera_id']}_security_event"
        entity_id = registry.async_get_entity_id("event", DOMAIN, unique_id)
        if entity_id is not None:
            alert[ATTR_ENTITY_ID] = entity_id
            entry = registry.async_get(entity_id)
            if entry is not None and entry.device_id is not None:
                alert[ATTR_DEVICE_ID] = entry.device_id
        return alert

    @callback
    def _on_event(self, msg: mqtt.ReceiveMessage) -> None:
        event = _json(msg)
        if event is None or "camera_id" not in event:
            return
        if self._alerts.repeated(str(event.get("id")), msg.payload):
            # Sent again (at least once: a server that crashed before marking it sent, a broker's
            # redelivery): handled already, its triggers and automations ran.
            _LOGGER.debug("ignoring a repeated %s message of event %s", event.get("type"), event.get("id"))
            return
        name = event.get("camera_name")
        camera = self._ensure_camera(str(event["camera_id"]), str(name) if name else None)
        if _is_latest(event, camera.last_event):
            camera.last_event = event
        if people := recognised_people(event):
            camera.last_person = people[0]
        camera.risk.on_event(event, dt_util.utcnow())
        self._schedule_risk_timer()
        data = self._alerts.bus_event(event, camera.camera_id, camera.name, time.time())
        self.hass.bus.async_fire(EVENT_BUS, data)
        if data["alert"]:
            # The logbook's one line per event (and per level rise): logbook.py describes it.
            self.hass.bus.async_fire(EVENT_ALERT, self._alert_data(data, event))
        elif data["described"]:
            # The model's words came without a new level: one logbook line of their own.
            self.hass.bus.async_fire(EVENT_DESCRIBED, self._alert_data(data, event))
        camera.last_event_alerted = bool(data["alert"])
        for listener in list(self._event_listeners):
            listener(event)
        self._notify()

    @callback
    def _on_digest(self, msg: mqtt.ReceiveMessage) -> None:
        """A digest (the scheduled one, or one asked for with publish): one HA event, whose data
        is the digest with the snapshot URLs made absolute, for one notification."""
        digest = _json(msg)
        if digest is None or "text" not in digest:
            return
        self.hass.bus.async_fire(
            EVENT_DIGEST,
            digest_event_data(self.hass, digest, self.client.url, self.server_id, self.entry.entry_id),
        )


@callback
def digest_event_data(
    hass: HomeAssistant, digest: dict[str, Any], url: str, server_id: str, entry_id: str
) -> dict[str, Any]:
    """The ``home_security_intelligence_digest`` event's data (also the ``summarize`` service's answer).
    Each top event's ``snapshot_url`` is made absolute (the server's, it needs the API key) and
    gets the same picture through Home Assistant: ``image_path``, signed (no key or login needed,
    for a notification), and ``image_url``, that path under Home Assistant's URL when it has one."""
    top: list[dict[str, Any]] = []
    for event in digest.get("top", []):
        if not isinstance(event, dict):
            continue
        shown = dict(event)
        if "snapshot_url" in event:
            shown["snapshot_url"] = f"{url}{event['snapshot_url']}"
        if "id" in event:
            path = signed_snapshot_path(hass, entry_id, str(event["id"]))
            shown["image_path"] = path
            shown["image_url"] = absolute_url(hass, path)
        top.append(shown)
    return {**digest, "top": top, "server_id": server_id}


def _is_latest(event: dict[str, Any], last: dict[str, Any] | None) -> bool:
    """Whether ``event`` is (a message of) the camera's latest event: the LLM's late ``update`` of an
    older event does not replace a newer event."""
    if last is None or event.get("id") == last.get("id"):
        return True
    started, last_started = (
        dt_util.parse_datetime(str(event.get("started_at") or "")),
        dt_util.parse_datetime(str(last.get("started_at") or "")),
    )
    return started is None or last_started is None or started >= last_started


def _context_line(event: dict[str, Any]) -> list[str]:
    """The household context the event was judged in, for the logbook (["armed away", "nobody home"])."""
    context = event.get("context")
    if not isinstance(context, dict):
        return []
    parts: list[str] = []
    alarm = context.get("alarm_state")
    if alarm and alarm != "unknown":
        parts.append(str(alarm).replace("_", " "))
    people = context.get("people_home")
    if isinstance(people, list):
        parts.append(f"home: {', '.join(map(str, people))}" if people else "nobody home")
    return parts


def _json(msg: mqtt.ReceiveMessage) -> dict[str, Any] | None:
    try:
        parsed = json.loads(msg.payload)
    except (TypeError, ValueError):
        _LOGGER.warning("ignoring a malformed message on %s", msg.topic)
        return None
    return parsed if isinstance(parsed, dict) else None
