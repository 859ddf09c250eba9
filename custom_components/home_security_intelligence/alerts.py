"""When an HSI event alerts. Each message on ``hsi/events`` (the rules' "new", the LLM's "update",
the event's "end") becomes one Home Assistant bus event, ``EVENT_BUS``, read by the device triggers
("an event started", "risk level became X") and the blueprint (its quiet period per camera and
level). The state that decides what that bus event says — per camera and per event — is here.

An event alerts once per level rise: its ``new``, then only a judgement above the highest level it
already alerted at. The LLM's ``update`` often comes after the ``end`` (an event closes with its
batch), so events are remembered well past their end; a review, a failed LLM phase (the server's
``alert: false``) and an update that repeats the level alert nobody."""

from __future__ import annotations

import hashlib
from typing import Any

from .const import RISK_LEVELS

#: Events (open or ended) whose levels are remembered; beyond it the least recently judged is
#: forgotten. An event's LLM update arrives within minutes of its end, long before 1000 newer ones.
MAX_EVENTS = 1000
#: Digests of the messages handled, per event, at most (an event's "new", updates, "end").
MAX_MESSAGES_PER_EVENT = 32
#: The message types that carry a new judgement (not the event's "end").
JUDGEMENTS = ("new", "update")


class AlertTracker:
    """Turns ``hsi/events`` messages into bus event data, remembering what the next one needs."""

    def __init__(self) -> None:
        #: Per camera: when its latest event started, and seconds from the one before to it.
        self._last_new: dict[str, float] = {}
        self._since_previous: dict[str, float | None] = {}
        #: Per event: the level of its latest judgement and the highest level it alerted at.
        self._events: dict[str, tuple[str | None, str | None]] = {}
        #: Per camera and level: (event id, time) of the latest judgement at that level or above, and
        #: of the latest one from another event — the blueprint's quiet period per camera and level.
        self._at_level: dict[str, dict[str, tuple[str, float]]] = {}
        self._at_level_other: dict[str, dict[str, tuple[str, float]]] = {}
        #: Per event: the model's description last told (a rescoring repeats it: not news).
        self._descriptions: dict[str, str] = {}
        #: Per event: digests of the messages handled (``repeated``).
        self._received: dict[str, set[bytes]] = {}

    def repeated(self, event_id: str, payload: str | bytes) -> bool:
        """Whether this exact message of ``event_id`` was handled already, and remember it. The
        server sends each message at least once: after a crash (or a broker that redelivers) one
        comes again, byte for byte, with its event id; handled twice, an "event started" trigger
        or an automation on the bus event would run twice."""
        digest = hashlib.blake2b(payload.encode() if isinstance(payload, str) else payload, digest_size=16).digest()
        seen = self._received.pop(event_id, set())
        self._received[event_id] = seen  # most recently heard last: the oldest is forgotten first
        if digest in seen:
            return True
        if len(seen) >= MAX_MESSAGES_PER_EVENT:
            seen.clear()
        seen.add(digest)
        while len(self._received) > MAX_EVENTS:
            del self._received[next(iter(self._received))]
        return False

    def bus_event(self, event: dict[str, Any], camera_id: str, camera_name: str, now: float) -> dict[str, Any]:
        """The data of the bus event for one parsed ``hsi/events`` message received at ``now``."""
        if event.get("type") == "new":
            previous = self._last_new.get(camera_id)
            self._last_new[camera_id] = now
            self._since_previous[camera_id] = round(now - previous, 1) if previous is not None else None
        alert, level_changed, previous_level = self._track_level(event)
        since_at_level = self._since_at_level(camera_id, event, now)
        described = self._new_description(event)
        return {
            "type": event.get("type"),
            # A judgement that takes the event above every level it already alerted at (its "new",
            # an escalation); never the "end", a review, a failed LLM phase or a repeated level.
            "alert": alert,
            "event_id": event.get("id"),
            "camera_id": camera_id,
            "camera_name": event.get("camera_name", camera_name),
            "risk_score": event.get("risk_score"),
            "risk_level": event.get("risk_level"),
            # True on "new", and on an "update" whose level differs from the event's previous judgement
            # (remembered past the event's "end"): informative; "alert" is what notifies.
            "level_changed": level_changed,
            "previous_risk_level": previous_level,
            "summary": event.get("summary"),
            "analysis_source": event.get("analysis_source"),
            "started_at": event.get("started_at"),
            # For per-camera cooldowns (the blueprint): seconds since this camera's previous event.
            "seconds_since_previous_event": self._since_previous.get(camera_id),
            # Per level: seconds since another event of this camera was judged at that level or
            # above (None: never). A cat at 02:08 says nothing about the high event at 02:10.
            "seconds_since_previous_at_level": since_at_level,
            # The language model's reading of the event (a vision model's when frames_sent is not
            # empty), after the server's checks; "described" is true on the message that first
            # brings (or changes) a vision model's description: the blueprint updates the event's
            # notification in place, the logbook writes a line.
            "described": described,
            "description": event.get("description"),
            "model": event.get("model"),
            "activity": event.get("activity"),
            "threat_indicators": list(event.get("threat_indicators") or []),
            "model_observations": list(event.get("model_observations") or []),
            "frames_sent": list(event.get("frames_sent") or []),
            # Known people (docs/privacy.md): the enrolled people recognised, and whether a face
            # matching no one was seen — the blueprint can skip events of known people only.
            "people": recognised_people(event),
            "unfamiliar": unfamiliar_face(event),
        }

    def _new_description(self, event: dict[str, Any]) -> bool:
        """Whether this judgement brings a picture-grounded description (a model that saw the
        frames) not told before for its event. A text-only model's words restate the detections:
        they stay in the attributes but notify nothing."""
        description = event.get("description")
        if event.get("type") not in JUDGEMENTS or not isinstance(description, str) or not description:
            return False
        if not event.get("frames_sent"):
            return False
        event_id = str(event.get("id"))
        if self._descriptions.get(event_id) == description:
            return False
        self._descriptions.pop(event_id, None)
        self._descriptions[event_id] = description
        while len(self._descriptions) > MAX_EVENTS:
            del self._descriptions[next(iter(self._descriptions))]
        return True

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
        if _is_judgement(event) and judged in RISK_LEVELS:
            for reached in RISK_LEVELS[: RISK_LEVELS.index(judged) + 1]:
                seen = latest.get(reached)
                if seen is not None and seen[0] != event_id:
                    other[reached] = seen
                latest[reached] = (event_id, now)
        return since

    def _track_level(self, event: dict[str, Any]) -> tuple[bool, bool, str | None]:
        """(alert, level changed, previous level) of one message; remembers the event's levels."""
        event_id = str(event.get("id"))
        kind = event.get("type")
        previous, alerted = self._events.get(event_id, (None, None))
        if kind not in JUDGEMENTS:
            return False, False, previous
        level = event.get("risk_level")
        changed = kind == "new" or level != previous
        rises = level in RISK_LEVELS and (alerted is None or RISK_LEVELS.index(level) > RISK_LEVELS.index(alerted))
        alert = rises and _is_judgement(event)
        # Most recently judged last: the oldest is forgotten first.
        self._events.pop(event_id, None)
        self._events[event_id] = (level, level if alert else alerted)
        while len(self._events) > MAX_EVENTS:
            del self._events[next(iter(self._events))]
        return alert, changed, previous if kind == "update" else None


def _is_judgement(event: dict[str, Any]) -> bool:
    """A new judgement: "new" or "update", unless the server says it alerts nobody (a review, a failed
    LLM phase: ``alert: false``; a server without the flag sends judgements only)."""
    return event.get("type") in JUDGEMENTS and event.get("alert", True) is not False


def _identities(event: dict[str, Any]) -> list[dict[str, Any]]:
    detections = event.get("detections") or []
    return [d["identity"] for d in detections if isinstance(d, dict) and isinstance(d.get("identity"), dict)]


def recognised_people(event: dict[str, Any]) -> list[str]:
    """The names of the enrolled people recognised in an event, most confident detection first."""
    return list(dict.fromkeys(str(i["person"]) for i in _identities(event) if i.get("person")))


def unfamiliar_face(event: dict[str, Any]) -> bool:
    """Whether the event shows a face that matched none of the enrolled people."""
    return any(i.get("person") is None and i.get("source") == "face" for i in _identities(event))
