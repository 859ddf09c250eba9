"""Result stage: images' detections → stored, tagged with zones, counted for the baseline,
and handed to their camera's batch — all in the transaction that completes their jobs.

The detect worker hands over one camera's images of an inferred batch together, and they are
stored in one transaction, in arrival order: their jobs' completion, their detections, the
activity counts and the camera's batch locked and joined (one statement), the batch and event
changes and the MQTT messages announcing them commit together (a group with nothing detected
and no tamper check stores only its jobs' completion: one statement, its own transaction). A
crash before the commit leaves every job to be retried, a crash after it leaves the messages
for the relay. Each image is counted exactly once,
and every message reaches MQTT at least once. A job whose lease was lost meanwhile is left out
of the transaction (its result discarded, as with one image); if storing the group fails for any
other reason, each image is stored alone, so only the one that fails loses its attempt
(``docs/decisions.md``, "Batch-level store transactions").
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import asyncpg

from inference_server.config import Settings
from inference_server.domain import Detection, Identity
from inference_server.jobs.queue import ClaimedJob, JobQueue, LeaseLost, complete_sql
from inference_server.pipeline.batch import BatchStage, Seen
from inference_server.pipeline.decode import Fit, Picture
from inference_server.pipeline.identify import PersonVectors, Recognizer
from inference_server.pipeline.messages import Message
from inference_server.pipeline.snapshot import Snapshot
from inference_server.pipeline.tamper import Deferral, SceneFeatures, TamperStage, features
from inference_server.pipeline.zones import zones_of
from inference_server.store import activity, batches, outbox
from inference_server.store import detections as detections_store
from inference_server.telemetry import metrics

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Ready:
    """One image's result with what is computed before the transaction."""

    job: ClaimedJob
    detections: Sequence[Detection]
    snapshot: Snapshot
    vectors: list[PersonVectors | None]
    scene: SceneFeatures | None


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
        #: The outbox relay's ``offer`` (the server sets it): the rows a store committed, handed
        #: over so the relay need not read them back.
        self.offer: Callable[[Sequence[outbox.OutboxMessage]], None] = outbox.no_offer
        #: The outbox relay's acknowledged rows (the server sets it): a store's outbox insert
        #: writes their marks (nobody acknowledges into this default one).
        self.marks = outbox.SentMarks()
        self.tz = ZoneInfo(settings.camera_timezone)

    @property
    def decode_fit(self) -> Fit:
        """How large the detect worker decodes (``detector_decode_fit``): both sides at the model
        size, or only the longer one (the model's letterbox) unless faces are cropped from the
        picture (recognition on), which need both sides."""
        if self.settings.detector_decode_fit == "letterbox" and self.recognizer is None:
            return "letterbox"
        return "cover"

    async def finish(self, job: ClaimedJob, image: Picture, dets: Sequence[Detection]) -> None:
        """Store one job's outcome (raises ``LeaseLost`` if another worker owns the job now)."""
        if await self.finish_many([(job, image, dets)]):
            raise LeaseLost(f"job {job.id} attempt {job.attempts} is no longer held by {self.queue.worker_id}")

    def scene_wanted(self, job: ClaimedJob) -> bool:
        """Whether ``job``'s picture gets a tamper check (``TamperStage.wants``, which counts it
        as asked). The detect worker asks when it takes the job, and measures the scene on the
        thread that prepares the picture for the model (``features``): no thread hand-over of
        its own (docs/decisions.md, "The scene measured beside the model's input")."""
        return self.tamper is not None and self.tamper.wants(job.camera_id, job.captured_at)

    async def finish_many(
        self,
        results: Sequence[tuple[ClaimedJob, Picture, Sequence[Detection]]],
        scenes: Mapping[int, SceneFeatures | None] | None = None,
    ) -> list[ClaimedJob]:
        """Store the outcomes of one camera's jobs, in arrival order, in one transaction; return
        the jobs whose lease was lost (nothing of them is stored). ``scenes``: the tamper check's
        features of the jobs whose check was decided already (``scene_wanted``; None: not
        checked), by job id; the others are decided and measured here."""
        ready = [await self._prepare(job, image, dets, scenes) for job, image, dets in results]
        started = metrics.now()
        committed = written = False
        marks: list[int] = []
        try:
            if (quiet := self._completion_only(ready)) is not None:
                # Nothing detected, and no tamper check that writes or announces anything: the
                # jobs' completion is all there is to store, one statement, its own transaction
                # (BEGIN and COMMIT were two more); the quiet check is then taken in memory.
                owned, added = await self.queue.complete_many(self.pool, [r.job for r in ready]), []
                await self._defer_checks([(r, d) for r, d in quiet if r.job.id in owned])
            else:
                async with self.pool.acquire() as conn, conn.transaction():
                    # The relay's marks ride on the group's store statement (a picture with
                    # detections), else on its outbox insert, else they wait for the next store.
                    marks = self.marks.take()
                    owned, messages, state, carried = await self._store(conn, ready, marks)
                    rest = marks if messages and not carried else []
                    added = await outbox.add_many(conn, messages, rest, state.sql if state is not None else None)
                    written = carried or bool(rest)
            committed = True
            self.offer(added)
        finally:
            self.marks.settle(marks, committed=committed and written)
            if self.tamper is not None and ready:
                self.tamper.settle(ready[0].job.camera_id, committed=committed)
        elapsed = metrics.now() - started
        kept = [r for r in ready if r.job.id in owned]
        for r in kept:
            metrics.STAGE.labels("store").observe(elapsed / len(kept))
            if not r.detections:
                log.debug(
                    "nothing detected camera_id=%s job_id=%s image_id=%s", r.job.camera_id, r.job.id, r.job.image_id
                )
            _observe_end_to_end(r.job)
        return [r.job for r in ready if r.job.id not in owned]

    def _completion_only(self, ready: Sequence[_Ready]) -> list[tuple[_Ready, Deferral]] | None:
        """Whether the group's jobs' completion is all there is to store: nothing detected, and at
        most one tamper check, which ``observe`` would take without a statement
        (``TamperStage.deferrable``); with that check, judged. None: the transaction."""
        if any(r.detections for r in ready):
            return None
        checks = [(r, r.scene) for r in ready if r.scene is not None]
        if not checks:
            return []
        if len(checks) > 1 or self.tamper is None:
            return None
        r, scene = checks[0]
        deferral = self.tamper.deferrable(r.job.camera_id, scene, r.job.captured_at)
        return None if deferral is None else [(r, deferral)]

    async def _defer_checks(self, kept: Sequence[tuple[_Ready, Deferral]]) -> None:
        """After a completion-only store: the tamper check of the images still held, taken in
        memory as ``_completion_only`` judged it; if the camera's check changed meanwhile (a
        ``forget``), ``observe`` in a transaction of its own."""
        for r, deferral in kept:
            if self.tamper is None or r.scene is None or self.tamper.defer(deferral):
                continue
            async with self.pool.acquire() as conn, conn.transaction():
                messages = await self.tamper.observe(conn, r.job.camera_id, r.job.image_id, r.job.captured_at, r.scene)
                added = await outbox.add_many(conn, messages)
            self.offer(added)

    async def _prepare(
        self,
        job: ClaimedJob,
        image: Picture,
        dets: Sequence[Detection],
        scenes: Mapping[int, SceneFeatures | None] | None = None,
    ) -> _Ready:
        """Before the transaction: embeddings (bounded) and the scene's tamper features (unless
        measured already: ``scenes``); the snapshot is only prepared (drawn if used:
        ``pipeline/snapshot.py``)."""
        # The decoded picture serves as the snapshot's when it is as large as a snapshot is drawn
        # (both sides at the model size) or was not reduced at all; else the file is decoded again.
        large = min(image.size) >= self.settings.detector_imgsz or image.size == job.size
        picture = image if self.decode_fit == "cover" or large else None
        snap = Snapshot(self.settings, job.camera_id, job.image_id, Path(job.image_path), dets, picture)
        vectors: list[PersonVectors | None] = []
        if dets and self.recognizer is not None:
            started = metrics.now()
            vectors = await self.recognizer.embed(image.pixels, dets, backlog=self.backlog())
            metrics.STAGE.labels("embed").observe(metrics.now() - started)
        scene: SceneFeatures | None = None
        # With or without detections: a covered camera sees nothing.
        if scenes is not None and job.id in scenes:
            scene = scenes[job.id]
        elif self.scene_wanted(job):
            scene = await asyncio.to_thread(features, image.image())
        return _Ready(job, dets, snap, vectors, scene)

    async def _store(
        self, conn: asyncpg.Connection, ready: Sequence[_Ready], marks: Sequence[int] = ()
    ) -> tuple[set[int], list[Message], batches.StateSent | None, bool]:
        """In the transaction: one camera's images; their jobs marked done (the ids of those still
        held are returned: nothing of the others is stored) and the MQTT messages that follow,
        with what the camera's batch is to remember of its state among them (``on_detections``);
        and whether the store's statement wrote ``marks`` (outbox rows the relay sent: it does
        when anything was detected)."""
        if not ready:
            return set(), [], None, False
        camera_id = ready[0].job.camera_id
        jobs = [r.job for r in ready]
        found = [r for r in ready if r.detections]
        tagged = {r.job.image_id: [zones_of(d, r.job.zones) for d in r.detections] for r in found}
        prelocked: tuple[batches.Joining, batches.Locked] | None = None
        if not found:
            owned = await self.queue.complete_many(conn, jobs)
            detection_ids: list[list[int]] | None = []
        else:
            # One statement: the jobs done, the detections and the camera's hourly counts, and the
            # camera's batch locked (with the household context) and joined by these images.
            joining = self.batches.joining([r.job.image_id for r in found])
            owned, detection_ids, locked = await _complete_and_insert(
                conn,
                camera_id,
                *self._detections(found, tagged),
                self.queue.completing(jobs),
                batches.lock_query("$1", 20, found[-1].job.captured_at, joining, _HELD, _COUNTED),
                marks,
            )
            prelocked = (joining, locked)
        if detection_ids is None:
            # A lease was lost (rare): the statement stored no detection and joined no image;
            # those still held now, and their batch locked for them.
            prelocked = None
            found = [r for r in found if r.job.id in owned]
            rows, hourly = self._detections(found, tagged)
            detection_ids = await detections_store.insert_images(conn, camera_id, rows, hourly=hourly)
        messages: list[Message] = []
        for r in ready:
            if self.tamper is not None and r.scene is not None and r.job.id in owned:
                messages += await self.tamper.observe(conn, camera_id, r.job.image_id, r.job.captured_at, r.scene)
        if not found:
            return owned, messages, None, False
        seen: list[Seen] = []
        enrolled = 0
        for r, ids in zip(found, detection_ids, strict=True):
            identities: list[Identity | None] = []
            if self.recognizer is not None and r.vectors:
                identities, enrolled = await self.recognizer.identify(
                    conn, camera_id, r.job.image_id, r.vectors, [(i, r.job.captured_at) for i in ids]
                )
            seen.append(
                Seen(
                    r.job.image_id,
                    r.job.captured_at,
                    r.detections,
                    tagged[r.job.image_id],
                    r.snapshot,
                    identities,
                    ids,
                )
            )
        latest = found[-1].job
        changed, state = await self.batches.on_detections(
            conn,
            camera_id=camera_id,
            camera_name=latest.camera_name,
            camera_enabled=latest.camera_enabled,
            zones=list(latest.zones),
            seen=seen,
            enrolled_people=enrolled,
            prelocked=prelocked,
        )
        return owned, messages + changed, state, True

    def _detections(
        self, found: Sequence[_Ready], tagged: dict[int, list[tuple[str, ...]]]
    ) -> tuple[detections_store.Images, activity.Hourly]:
        """``found``'s detections as the insert takes them, and their hourly counts (local time)."""
        local = {r.job.image_id: r.job.captured_at.astimezone(self.tz) for r in found}
        hourly = activity.hourly_counts(
            (local[i].date(), local[i].hour, (d.label for d in r.detections)) for r in found if (i := r.job.image_id)
        )
        return [(r.job.image_id, r.job.captured_at, r.detections, tagged[r.job.image_id]) for r in found], hourly


#: Every job of the statement below is still held (its $19: how many there are).
_HELD = "(SELECT count(*) FROM done) = $19"
#: The statement below added the camera's hourly counts (so every job is still held): the batch
#: is locked only then, and after them. Every transaction of a camera takes its counts rows
#: before its batch: a store that saw no batch open (another transaction's not yet committed)
#: holds the counts while it opens or locks one, and a store that took the batch first and then
#: waited for those counts made a deadlock (stop 38's CI; ``docs/decisions.md``).
_COUNTED = "(SELECT count(*) FROM counted) > 0"


async def _complete_and_insert(
    conn: asyncpg.Connection,
    camera_id: str,
    images: detections_store.Images,
    hourly: activity.Hourly,
    completing: tuple[list[int], list[int], str],
    lock: batches.LockQuery,
    marks: Sequence[int],
) -> tuple[set[int], list[list[int]] | None, batches.Locked]:
    """Mark the jobs done (``JobQueue.completing``: ids, attempts, worker) and, when every one of
    them is still held, insert ``images``' detections with the hourly counts; and ``lock`` (the
    camera's batch, locked after the counts and only when they were added: ``_COUNTED``, and
    joined by the images); and mark the outbox rows ``marks`` sent (``SentMarks``: rows no other
    transaction writes), in one statement (stop 34: the first two took two round trips; stop
    36: the lock was a third; stop 40: the marks waited for an outbox insert).
    Returns the ids of the jobs marked done, and each image's detection ids, or None when a lease
    was lost: then no detection was inserted; and what the lock read."""
    rows = await conn.fetch(
        f"WITH done AS ({complete_sql('$16', '$17', '$18')}),"
        f" counted AS ({activity.hourly_upsert('$1', '$12', '$13', '$14', '$15', where=_HELD)} RETURNING 1),"
        f" inserted AS ({detections_store.insert_sql(_HELD)}), {lock.ctes},"
        f" marked AS ({outbox.mark_sent_sql(f'${20 + len(lock.args)}::bigint[]')})"
        " SELECT (SELECT array_agg(id) FROM done) AS done_ids, (SELECT array_agg(id) FROM inserted) AS inserted_ids,"
        f" {lock.select}",
        camera_id,
        *detections_store.columns(images),
        *hourly,
        *completing,
        len(completing[0]),
        *lock.args,
        list(marks),
    )
    done = set(rows[0]["done_ids"] or ())
    locked = batches.locked_from(rows, lock)
    if len(done) < len(completing[0]):
        return done, None, locked
    return done, detections_store.ids_by_image(images, list(rows[0]["inserted_ids"] or ())), locked


def _observe_end_to_end(job: ClaimedJob) -> None:
    if job.received_at is not None:
        metrics.END_TO_END.observe((datetime.now(UTC) - job.received_at).total_seconds())
