"""Reason stage: detections of one image → risk assessment → stored event + outbox, atomically.

The job's completion, its detections, the event and the MQTT messages announcing it
commit in one transaction: a crash before the commit leaves the job to be retried, a
crash after it leaves the messages for the relay. Each image therefore yields its event
exactly once, and the event reaches MQTT at least once.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Sequence
from datetime import UTC
from pathlib import Path
from zoneinfo import ZoneInfo

import asyncpg
from PIL import Image

from inference_server.config import Settings
from inference_server.jobs.queue import ClaimedJob, JobQueue
from inference_server.models.detector import Detection
from inference_server.models.reasoner import Assessment, Observation, Reasoner
from inference_server.pipeline import snapshot
from inference_server.publish.topics import Topics
from inference_server.schemas import CameraState, DetectionOut, Event, EventMessage
from inference_server.store import detections as detections_store
from inference_server.store import events as events_store
from inference_server.store import outbox
from inference_server.telemetry import metrics

log = logging.getLogger(__name__)


def build_event(
    event_id: uuid.UUID, job: ClaimedJob, dets: Sequence[Detection], assessment: Assessment, fast: bool
) -> Event:
    return Event(
        id=event_id,
        camera_id=job.camera_id,
        camera_name=job.camera_name,
        started_at=job.captured_at.astimezone(UTC),
        ended_at=None,
        risk_score=assessment.risk_score,
        risk_level=assessment.risk_level,
        summary=assessment.summary,
        reasoning=assessment.reasoning,
        risk_factors=assessment.factors,
        objects=assessment.objects,
        detections=[
            DetectionOut(label=d.label, category=d.category, confidence=d.confidence, bbox=d.bbox) for d in dets
        ],
        analysis_source=assessment.analysis_source,
        is_fast_path=fast,
        image_id=job.image_id,
        reviewed=False,
        notes=None,
        feedback=None,
    )


class ReasonStage:
    def __init__(
        self, settings: Settings, pool: asyncpg.Pool, queue: JobQueue, reasoner: Reasoner, topics: Topics
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.queue = queue
        self.reasoner = reasoner
        self.topics = topics
        self.tz = ZoneInfo(settings.camera_timezone)

    async def finish(self, job: ClaimedJob, image: Image.Image, dets: Sequence[Detection]) -> uuid.UUID | None:
        """Store the job's outcome; return the new event's id (None when nothing was seen)."""
        event: Event | None = None
        jpeg: bytes | None = None
        snapshot_path: Path | None = None
        if dets:
            started = metrics.now()
            assessment = await self.reasoner.assess(
                Observation(job.camera_id, job.camera_name, job.captured_at.astimezone(self.tz), dets)
            )
            metrics.STAGE.labels("reason").observe(metrics.now() - started)
            event = build_event(uuid.uuid4(), job, dets, assessment, fast=False)
            started = metrics.now()
            snapshot_path = self.settings.snapshots_path / job.camera_id / f"{event.id}.jpg"
            jpeg = await asyncio.to_thread(_write_snapshot, image, dets, snapshot_path)
            metrics.STAGE.labels("snapshot").observe(metrics.now() - started)

        started = metrics.now()
        async with self.pool.acquire() as conn, conn.transaction():
            await self.queue.complete(conn, job)
            await detections_store.insert_many(conn, job.image_id, job.camera_id, job.captured_at, dets)
            if event is not None and jpeg is not None:
                await events_store.insert(
                    conn,
                    event_id=event.id,
                    camera_id=job.camera_id,
                    image_id=job.image_id,
                    started_at=event.started_at,
                    assessment=assessment,
                    is_fast_path=event.is_fast_path,
                    snapshot_path=str(snapshot_path),
                )
                await outbox.add_many(conn, self._messages(event, jpeg))
        metrics.STAGE.labels("store").observe(metrics.now() - started)
        if event is None:
            log.info("nothing detected camera_id=%s job_id=%s image_id=%s", job.camera_id, job.id, job.image_id)
            return None
        metrics.EVENTS.labels(event.risk_level, event.analysis_source).inc()
        log.info(
            "event created event_id=%s camera_id=%s job_id=%s risk_score=%s risk_level=%s source=%s summary=%r",
            event.id,
            job.camera_id,
            job.id,
            event.risk_score,
            event.risk_level,
            event.analysis_source,
            event.summary,
        )
        return event.id

    def _messages(self, event: Event, jpeg: bytes) -> list[tuple[str, bytes, bool]]:
        state = CameraState(
            risk_score=event.risk_score,
            risk_level=event.risk_level,
            last_event_id=event.id,
            last_event_at=event.started_at,
            objects=event.objects,
            enabled=True,
        )
        message = EventMessage(type="new", **event.model_dump())
        msgs: list[tuple[str, bytes, bool]] = [
            (self.topics.events, message.model_dump_json().encode(), False),
            (self.topics.camera_state(event.camera_id), state.model_dump_json().encode(), True),
            (self.topics.camera_snapshot(event.camera_id), jpeg, True),
        ]
        msgs += [
            (self.topics.camera_objects(event.camera_id, label), str(n).encode(), True)
            for label, n in sorted(event.objects.items())
        ]
        return msgs


def _write_snapshot(image: Image.Image, dets: Sequence[Detection], path: Path) -> bytes:
    jpeg = snapshot.render(image, dets)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(jpeg)
    return jpeg
