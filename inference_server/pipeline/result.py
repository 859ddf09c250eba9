"""Result stage: one image's detections → stored, tagged with zones, counted for the baseline,
and handed to its camera's batch — all in the transaction that completes the job.

The job's completion, its detections, the batch and event changes and the MQTT messages
announcing them commit together: a crash before the commit leaves the job to be retried,
a crash after it leaves the messages for the relay. Each image is counted exactly once,
and every message reaches MQTT at least once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import asyncpg
from PIL import Image

from inference_server.config import Settings
from inference_server.domain import Detection
from inference_server.jobs.queue import ClaimedJob, JobQueue
from inference_server.pipeline import snapshot
from inference_server.pipeline.batch import BatchStage
from inference_server.pipeline.identify import PersonVectors, Recognizer
from inference_server.pipeline.tamper import SceneFeatures, TamperStage, features
from inference_server.pipeline.zones import zones_of
from inference_server.store import activity, outbox
from inference_server.store import detections as detections_store
from inference_server.telemetry import metrics

log = logging.getLogger(__name__)


class ResultStage:
    def __init__(
        self,
        settings: Settings,
        pool: asyncpg.Pool,
        queue: JobQueue,
        batches: BatchStage,
        recognizer: Recognizer | None = None,
        *,
        tamper: TamperStage | None = None,
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.queue = queue
        self.batches = batches
        #: Known people: None when no embedding model is configured.
        self.recognizer = recognizer
        #: Inferred batches waiting to be stored (the detect worker sets it): recognition skips
        #: images while the store path is behind.
        self.backlog: Callable[[], int] = lambda: 0
        #: Tampering (pipeline/tamper.py): None when switched off (``tamper_enabled``).
        self.tamper = tamper
        self.tz = ZoneInfo(settings.camera_timezone)

    async def finish(self, job: ClaimedJob, image: Image.Image, dets: Sequence[Detection]) -> None:
        """Store the job's outcome (raises ``LeaseLost`` if another worker owns the job now)."""
        jpeg: bytes | None = None
        if dets:
            started = metrics.now()
            jpeg = await asyncio.to_thread(
                _write_snapshot, image, dets, snapshot.snapshot_file(self.settings, job.camera_id, job.image_id)
            )
            metrics.STAGE.labels("snapshot").observe(metrics.now() - started)
        vectors: list[PersonVectors | None] = []
        if dets and self.recognizer is not None:
            started = metrics.now()
            vectors = await self.recognizer.embed(image, dets, backlog=self.backlog())
            metrics.STAGE.labels("embed").observe(metrics.now() - started)

        scene: SceneFeatures | None = None
        if self.tamper is not None:  # every image, with or without detections: a covered camera sees nothing
            scene = await asyncio.to_thread(features, image)

        started = metrics.now()
        async with self.pool.acquire() as conn, conn.transaction():
            await self.queue.complete(conn, job)
            if self.tamper is not None and scene is not None:
                await outbox.add_many(
                    conn, await self.tamper.observe(conn, job.camera_id, job.image_id, job.captured_at, scene)
                )
            if not dets:
                log.info("nothing detected camera_id=%s job_id=%s image_id=%s", job.camera_id, job.id, job.image_id)
                metrics.STAGE.labels("store").observe(metrics.now() - started)
                _observe_end_to_end(job)
                return
            zones = list(job.zones)
            tagged = [zones_of(d, zones) for d in dets]
            await detections_store.insert_many(conn, job.image_id, job.camera_id, job.captured_at, dets, tagged)
            local = job.captured_at.astimezone(self.tz)
            await activity.record(conn, job.camera_id, (d.label for d in dets), local.date(), local.hour)
            identities, enrolled = (
                await self.recognizer.identify(conn, job.camera_id, job.image_id, vectors)
                if self.recognizer is not None and vectors
                else ([], 0)
            )
            assert jpeg is not None
            messages = await self.batches.on_detections(
                conn,
                camera_id=job.camera_id,
                camera_name=job.camera_name,
                camera_enabled=job.camera_enabled,
                zones=zones,
                image_id=job.image_id,
                captured_at=job.captured_at,
                detections=dets,
                detection_zones=tagged,
                jpeg=jpeg,
                identities=identities,
                enrolled_people=enrolled,
            )
            await outbox.add_many(conn, messages)
        metrics.STAGE.labels("store").observe(metrics.now() - started)
        _observe_end_to_end(job)


def _observe_end_to_end(job: ClaimedJob) -> None:
    if job.received_at is not None:
        metrics.END_TO_END.observe((datetime.now(UTC) - job.received_at).total_seconds())


def _write_snapshot(image: Image.Image, dets: Sequence[Detection], path: Path) -> bytes:
    jpeg = snapshot.render(image, dets)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(jpeg)
    return jpeg
