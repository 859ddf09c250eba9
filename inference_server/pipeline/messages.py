"""The MQTT messages the batch stage queues in the outbox: events, camera state, snapshots.

Each is a `Message` (topic, payload, retain) built from the ``schemas`` payloads, written to the
outbox in the transaction that changed what it describes (``publish/relay.py`` sends it).
"""

from __future__ import annotations

import time
import uuid
from datetime import datetime
from typing import Literal

import asyncpg

from inference_server.comms.messages import Message
from inference_server.comms.messages import camera_state as state_messages
from inference_server.comms.topics import Topics
from inference_server.domain import Assessment
from inference_server.pipeline.snapshot import Snapshot
from inference_server.schemas import CameraState, EventMessage
from inference_server.store import events as events_store
from inference_server.telemetry import metrics

__all__ = ["Message", "SnapshotThrottle", "camera_state", "event_message"]


async def event_message(
    conn: asyncpg.Connection, topics: Topics, event_id: uuid.UUID, kind: Literal["new", "update", "end"]
) -> Message:
    """``hsi/events``: the stored event as it is now in ``conn``'s transaction, typed ``kind``
    (a ``new`` or ``update`` from the batch stage is a judgement and alerts; an ``end`` does not)."""
    event = await events_store.get(conn, event_id)
    assert event is not None
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


class SnapshotThrottle:
    """The camera's retained snapshot, at most once per ``interval_s`` per camera.

    At 20 images/s per camera on a GPU, every frame's ~100 KiB JPEG through the outbox (a
    bytea written, WAL-logged and read back) and the broker is MBs/s that no dashboard shows;
    a snapshot skipped is not drawn at all. An image that opens or rescores
    an event is always sent (``always``), so Home Assistant's picture matches the event.
    """

    def __init__(self, topics: Topics, interval_s: float) -> None:
        self.topics = topics
        self.interval_s = interval_s
        #: Per camera: monotonic time of the last snapshot message queued.
        self._sent: dict[str, float] = {}

    def due(self, camera_id: str) -> bool:
        """Whether the camera's next snapshot would be sent (its last one is not recent)."""
        last = self._sent.get(camera_id)
        return last is None or time.monotonic() - last >= self.interval_s

    async def messages(self, camera_id: str, snapshot: Snapshot, *, always: bool) -> list[Message]:
        """The snapshot message (drawn now, if not yet), or none while the camera's last one is
        recent: then the snapshot is not drawn at all."""
        if not always and not self.due(camera_id):
            metrics.SNAPSHOTS_SKIPPED.inc()
            return []
        self._sent[camera_id] = time.monotonic()
        return [(self.topics.camera_snapshot(camera_id), await snapshot.jpeg(), True)]
