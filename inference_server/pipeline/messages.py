"""The MQTT messages the batch stage queues in the outbox: events, camera state, snapshots.

Each is a `Message` (topic, payload, retain) built from the ``schemas`` payloads, written to the
outbox in the transaction that changed what it describes (``publish/relay.py`` sends it).
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Literal

import asyncpg

from inference_server.comms.messages import Message
from inference_server.comms.messages import camera_state as state_messages
from inference_server.comms.topics import Topics
from inference_server.domain import Assessment
from inference_server.pipeline.snapshot import Snapshot
from inference_server.schemas import CameraState, Event, EventMessage
from inference_server.store import events as events_store
from inference_server.telemetry import metrics

__all__ = ["Message", "SnapshotThrottle", "camera_state", "digest", "event_message", "message_of"]


async def event_message(
    conn: asyncpg.Connection, topics: Topics, event_id: uuid.UUID, kind: Literal["new", "update", "end"]
) -> Message:
    """``hsi/events``: the stored event as it is now in ``conn``'s transaction (``message_of``)."""
    event = await events_store.get(conn, event_id)
    assert event is not None
    return message_of(topics, event, kind)


def message_of(topics: Topics, event: Event, kind: Literal["new", "update", "end"]) -> Message:
    """``hsi/events``: ``event`` as stored, typed ``kind`` (a ``new`` or ``update`` from the batch
    stage is a judgement and alerts; an ``end`` does not)."""
    message = EventMessage(type=kind, alert=kind != "end", **event.model_dump())
    return (topics.events, message.model_dump_json().encode(), False)


async def camera_state(
    conn: asyncpg.Connection,
    topics: Topics,
    camera_id: str,
    enabled: bool,
    assessment: Assessment,
    live: dict[str, int],
    *,
    previous: frozenset[str],
    last_event: tuple[uuid.UUID, datetime] | Literal["read"] | None = "read",
) -> list[Message]:
    """The camera's retained state and one retained count per label in ``live`` or ``previous``
    (a label seen before and gone now is published as 0). ``last_event``: the camera's latest
    event as the caller read it in this transaction, after which it made none; ``"read"``: read it."""
    last = await events_store.latest_for_camera(conn, camera_id) if last_event == "read" else last_event
    state = CameraState(
        risk_score=assessment.risk_score,
        risk_level=assessment.risk_level,
        last_event_id=last[0] if last else None,
        last_event_at=last[1] if last else None,
        objects=live,
        enabled=enabled,
    )
    return state_messages(topics, camera_id, state, previous)


def digest(messages: Sequence[Message]) -> bytes:
    """What identifies ``messages`` (topics, payloads, retain flags, in order): 16 bytes."""
    h = hashlib.blake2b(digest_size=16)
    for topic, payload, retain in messages:
        name = topic.encode()
        h.update(b"%d:%s%d:%s%d" % (len(name), name, len(payload), payload, retain))
    return h.digest()


class SnapshotThrottle:
    """When a camera's retained snapshot is published (per camera, per worker process).

    - An image that opens or rescores an event: always (``always``), so Home Assistant's
      picture matches the event.
    - An image whose objects differ from the last published snapshot's (labels and counts: a
      second person, a car arriving, the first thing seen): at once.
    - Otherwise the same scene again (a parked car on a windy afternoon, someone standing at
      the door): at most once per ``interval_s``.

    A snapshot not published is not drawn at all. Every image's ~100-250 KiB JPEG through the
    outbox (a bytea written, WAL-logged and read back) and the broker, at a picture a second
    per camera while anything is in view, is CPU and megabytes that show no one anything new
    (docs/performance.md, stop 34). Frigate publishes its MQTT snapshot likewise: when a better
    picture of the object is found, else at most once a minute.
    """

    def __init__(self, topics: Topics, interval_s: float) -> None:
        self.topics = topics
        self.interval_s = interval_s
        #: Per camera: monotonic time of the last snapshot message queued, and what it showed.
        self._sent: dict[str, tuple[float, frozenset[tuple[str, int]]]] = {}

    def due(self, camera_id: str, snapshot: Snapshot) -> bool:
        """Whether ``snapshot`` would be sent as the camera's next: its last one is not recent, or
        showed other objects."""
        last = self._sent.get(camera_id)
        return last is None or time.monotonic() - last[0] >= self.interval_s or snapshot.objects != last[1]

    async def messages(self, camera_id: str, snapshot: Snapshot, *, always: bool) -> list[Message]:
        """The snapshot message (drawn now, if not yet), or none while the camera's last one is
        recent and showed the same objects: then the snapshot is not drawn at all."""
        if not always and not self.due(camera_id, snapshot):
            metrics.SNAPSHOTS_SKIPPED.inc()
            return []
        self._sent[camera_id] = (time.monotonic(), snapshot.objects)
        return [(self.topics.camera_snapshot(camera_id), await snapshot.jpeg(), True)]
