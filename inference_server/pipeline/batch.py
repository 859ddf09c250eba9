"""Batch stage: groups a camera's detections into one activity and turns it into one event.

- Each image with detections joins its camera's open batch (or opens one). A batch closes
  ``batch_window_s`` after it opened or ``batch_idle_s`` after its last detection.
- Phase one, the rules engine, judges the whole batch so far. The event opens at once
  (``type: new``) on a fast-path detection (default person ≥ 0.90) or as soon as the rules
  judge the batch at ``alert_open_level`` (default high) or above, whatever the detector's
  confidence; lower-risk activity opens its event when the batch closes. While open, a
  changed judgement is published as ``type: update``.
- A batch whose window runs out while its activity goes on (a detection within
  ``batch_idle_s``) does not end its event: the event opens now if it was waiting, and a new
  batch continues it (``batches.open_continuation``), judged with the whole event's detections;
  a changed judgement is an ``update``. The event ends (``type: end``, the camera's live state
  back to quiet) when the activity goes idle or when it has lasted ``event_max_s``; the next
  detection after that opens a new batch and a new event. Phase two, the LLM, follows on its
  own worker (pipeline/llm.py).

Batches live in PostgreSQL and are changed only inside the transaction that stores the
image's result, so a restart continues them and never loses their detections.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

import asyncpg

from inference_server.clock import Clock, follows_real_time
from inference_server.comms.topics import Topics
from inference_server.config import Settings
from inference_server.domain import Assessment, Detection, Identity, Observation
from inference_server.event_loop import until_next, wait_any
from inference_server.pipeline import snapshot as snapshot_module
from inference_server.pipeline.messages import (
    Message,
    SnapshotThrottle,
    camera_state,
    digest,
    event_message,
    message_of,
)
from inference_server.pipeline.snapshot import Snapshot, snapshot_file
from inference_server.pipeline.summary import ActivitySummary
from inference_server.reasoning.rules import RulesReasoner
from inference_server.schemas import ContextState, Event, Zone
from inference_server.store import activity, batches, cameras, context, outbox, people
from inference_server.store import events as events_store
from inference_server.store.db import DB_ERRORS, is_unavailable
from inference_server.telemetry import metrics

log = logging.getLogger(__name__)

_VISIT_WINDOW = timedelta(hours=1)


def _latest(
    last: tuple[uuid.UUID, datetime] | Literal["read"] | None, opened: Event
) -> tuple[uuid.UUID, datetime] | Literal["read"]:
    """The camera's latest event (``events.latest_for_camera``: the latest to start) once
    ``opened`` is stored, from ``last``, the latest read earlier in the transaction: the new one,
    unless that started later (a late upload's pictures open an event older than the camera's
    last); unknown ("read") stays unknown."""
    if last == "read":
        return last
    if last is not None and last[1] > opened.started_at:
        return last
    return (opened.id, opened.started_at)


def _set_late(state: ContextState, captured_at: datetime) -> datetime | None:
    """``context.for_capture`` fell back to a context set after the capture: when it was set."""
    return state.set_at if state.set_at is not None and state.set_at > captured_at else None


@dataclass(frozen=True, slots=True)
class Seen:
    """One stored image with detections, as the batch stage takes it."""

    image_id: int
    captured_at: datetime
    detections: Sequence[Detection]
    #: Parallel to ``detections``: the camera zones each is in.
    detection_zones: Sequence[tuple[str, ...]]
    snapshot: Snapshot
    #: Parallel to ``detections`` (or empty): who each person is, where recognised.
    identities: Sequence[Identity | None] = ()
    #: Parallel to ``detections`` (or empty: unknown): their ids in the database.
    detection_ids: Sequence[int] = ()

    def rows(self) -> list[batches.BatchDetection]:
        """The image's detections as ``batches.detections`` reads them back (needs ``detection_ids``)."""
        identities = list(self.identities) or [None] * len(self.detections)
        return [
            batches.BatchDetection(
                self.image_id, d.label, d.confidence, d.bbox, zones, self.captured_at, detection_id, who is not None
            )
            for d, zones, who, detection_id in zip(
                self.detections, self.detection_zones, identities, self.detection_ids, strict=True
            )
        ]


@dataclass(frozen=True, slots=True)
class Judged:
    """A batch observed and scored by the rules, with the image that best shows it."""

    observation: Observation
    assessment: Assessment
    image_id: int
    labels: frozenset[str]


#: The closing loop looks at least this often, for batches of another process (scale-out) that
#: this one does not know of: their own process closes them on time; this is for one that died.
_LOOK_AT_LEAST_EVERY = timedelta(seconds=10)


class BatchStage:
    def __init__(
        self,
        settings: Settings,
        pool: asyncpg.Pool,
        rules: RulesReasoner,
        topics: Topics,
        clock: Clock,
        *,
        llm_enabled: bool,
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.rules = rules
        self.topics = topics
        self.clock = clock
        self.llm_enabled = llm_enabled
        self.tz = ZoneInfo(settings.camera_timezone)
        self.window = timedelta(seconds=settings.batch_window_s)
        self.idle = timedelta(seconds=settings.batch_idle_s)
        self.event_max = timedelta(seconds=settings.event_max_s)
        self._snapshots = SnapshotThrottle(topics, settings.snapshot_publish_interval_s)
        #: The score from which an activity opens its event at once (``alert_open_level``).
        self.alert_score = rules.thresholds.score_of(settings.alert_open_level)
        #: Per camera, its open batch's activity as this stage last stored it (pipeline/summary.py).
        self._summaries: dict[str, ActivitySummary] = {}
        #: Per camera, the history its open batch was last judged with (``_history``).
        self._histories: dict[str, tuple[tuple[object, ...], activity.History]] = {}
        #: The outbox relay's ``offer`` (the server sets it): the rows a closing committed.
        self.offer: Callable[[Sequence[outbox.OutboxMessage]], None] = outbox.no_offer
        #: The closing loop's next look (clock time; None: at its next tick): when the first open
        #: batch falls due, as the last look found, brought forward by the batches this stage
        #: changed since, and at most ``_LOOK_AT_LEAST_EVERY`` ahead (another process's batches).
        self._next_look: datetime | None = None
        #: Set when ``_next_look`` comes forward: the closing loop, asleep until the old one, wakes.
        self._look_sooner = asyncio.Event()

    def _due_at(self, batch: batches.Batch) -> datetime:
        """When ``batch`` falls due as it stands (``_due``)."""
        return min(
            batch.opened_at + self.window, batch.last_activity_at + self.idle, batch.chain_started_at + self.event_max
        )

    def _due(self, batch: batches.Batch, now: datetime) -> bool:
        return now >= self._due_at(batch)

    async def _held_for_clip(
        self, conn: asyncpg.Connection, batch: batches.Batch, now: datetime, arriving: Sequence[int]
    ) -> bool:
        """A batch due only for idleness stays open while frames of a clip it holds still wait for
        the detector, or arrive now: a clip is one activity, however slowly its frames are detected."""
        only_idle = now - batch.opened_at < self.window and now - batch.chain_started_at < self.event_max
        return only_idle and await batches.awaits_clip_frames(conn, batch.id, arriving)

    def _continues(self, batch: batches.Batch, now: datetime) -> bool:
        """A due batch whose activity goes on: only its window ran out (not idle, and its event
        is younger than ``event_max_s``), so the next batch continues its event."""
        return now - batch.last_activity_at < self.idle and now - batch.chain_started_at < self.event_max

    def joining(self, image_ids: Sequence[int]) -> batches.Joining:
        """``image_ids`` joining the camera's open batch now, if it is not due (``_due``)."""
        now = self.clock.now()
        return batches.Joining(image_ids, now, now - self.window, now - self.idle, now - self.event_max)

    def is_fast(self, detections: Sequence[Detection]) -> bool:
        return any(d.confidence >= self.settings.fast_path.get(d.label, 2.0) for d in detections)

    # --- per stored group (inside the result transaction) -----------------------------------
    async def on_detections(
        self,
        conn: asyncpg.Connection,
        *,
        camera_id: str,
        camera_name: str,
        camera_enabled: bool,
        zones: Sequence[Zone],
        seen: Sequence[Seen],
        enrolled_people: int = 0,
        prelocked: tuple[batches.Joining, batches.Locked] | None = None,
    ) -> tuple[list[Message], batches.StateSent | None]:
        """One camera's images with detections, stored together in arrival order: their part in
        the camera's batch and event, and the MQTT messages that follow; with the camera's state
        among them, what its batch is to remember of it (``_state``: the outbox insert
        writes it), else None.

        They join the batch in one statement and the batch is judged once, with all of them (the
        same commit, so the same moment for every reader): the camera's retained state and
        snapshot are the latest image's, an event opens or is rescored once. ``prelocked``: the
        caller's statement already locked the batch with ``joining`` of these images, the latest's
        capture time and this transaction (``lock_query``), and what it read."""
        messages: list[Message] = []
        latest = seen[-1]
        snapshots = {s.image_id: s.snapshot for s in seen}
        arriving = [s.image_id for s in seen]
        # The batch, locked, and the household as it was when the latest image was taken; the
        # images join the batch in the same statement unless it is due (``_due``) or none is open.
        if prelocked is None:
            joining = self.joining(arriving)
            locked = await batches.lock_open_in_context(conn, camera_id, latest.captured_at, joining)
        else:
            joining, locked = prelocked
        now = joining.now
        batch, household = locked.batch, locked.household
        # The camera's latest event, while this call has made none (closing a batch may).
        last_event: tuple[uuid.UUID, datetime] | Literal["read"] | None = locked.last_event
        opened = False
        if batch is not None and locked.joined is not None:
            before, batch = batch.version, locked.joined
        else:
            if batch and self._due(batch, now) and not await self._held_for_clip(conn, batch, now, arriving):
                messages += await self.close_guarded(conn, batch, now)
                last_event = "read"
                batch = await batches.lock_open(conn, camera_id)  # the batch continuing its event, if any
            if batch is None:
                # (Another process storing this camera's images at the same moment may open it
                # first: then these join that one.)
                batch, opened = await batches.open_or_lock(conn, camera_id, now, arriving)
                if opened:
                    log.info("batch opened batch_id=%s camera_id=%s", batch.id, camera_id)
                else:
                    last_event = "read"  # that process may have opened an event too: read it again
            before = batch.version
            if not opened:  # a batch opened here was joined by the statement that opened it
                batch = await batches.add_images(conn, batch, arriving, now)
        if self._next_look is not None and self._due_at(batch) < self._next_look:
            # Before the commit: a look at the new due time comes too early at worst, never late.
            self._next_look = self._due_at(batch)
            self._look_sooner.set()
        self._follow(batch, before, seen, opened=opened)

        started = metrics.now()
        live = dict(Counter(d.label for d in latest.detections))
        opens = "confident detection" if any(self.is_fast(s.detections) for s in seen) else None
        if batch.event_id is None and opens is None:
            # Most images: the batch is judged as a whole when it closes. The camera's live risk
            # is the latest image alone in the context of its capture time (no history queries on
            # the hot path)...
            glances = [
                self.rules.assess_now(
                    Observation(
                        camera_id,
                        camera_name,
                        s.captured_at.astimezone(self.tz),
                        s.detections,
                        s.detection_zones,
                        zones,
                        context=household.context if household.set_at is not None else None,
                        context_set_late=_set_late(household, s.captured_at),
                        identities=s.identities,
                        enrolled_people=enrolled_people,
                    )
                )
                for s in seen
            ]
            assessment = glances[-1]
            if any(g.risk_score + self.rules.batch_headroom(g) >= self.alert_score for g in glances):
                # ...unless its history could lift it to the alert level: then the batch is judged
                # now, and an alert-worthy judgement opens the event at once, whatever the confidence.
                observed = await self.observe(conn, batch, camera_name, zones, (latest.captured_at, household))
                judged = self.judge(observed)
                assessment = judged.assessment
                if assessment.risk_score >= self.alert_score:
                    opens = f"judged {assessment.risk_level}"
            if opens is None:
                metrics.STAGE.labels("reason").observe((metrics.now() - started) / len(seen))
                state, sent = await self._state(conn, batch, camera_enabled, assessment, live, last_event)
                messages += state
                messages += await self._snapshots.messages(camera_id, latest.snapshot, always=False)
                return messages, sent
        else:
            judged = self.judge(await self.observe(conn, batch, camera_name, zones, (latest.captured_at, household)))
        metrics.STAGE.labels("reason").observe((metrics.now() - started) / len(seen))
        changed = True
        if batch.event_id is None:
            event = await self._open_event(conn, batch, judged, opened_by=opens, current=snapshots)
            messages.append(message_of(self.topics, event, "new"))
            last_event = _latest(last_event, event)
        else:
            rescored = await self._rescore(conn, batch, judged, snapshots)
            changed = rescored is not None
            if rescored is not None:
                messages.append(message_of(self.topics, rescored, "update"))
        state, sent = await self._state(conn, batch, camera_enabled, judged.assessment, live, last_event)
        messages += state
        shown = snapshots.get(judged.image_id, latest.snapshot) if changed else latest.snapshot
        messages += await self._snapshots.messages(camera_id, shown, always=changed)
        return messages, sent

    async def _state(
        self,
        conn: asyncpg.Connection,
        batch: batches.Batch,
        enabled: bool,
        assessment: Assessment,
        live: dict[str, int],
        last_event: tuple[uuid.UUID, datetime] | Literal["read"] | None,
    ) -> tuple[list[Message], batches.StateSent | None]:
        """The camera's state messages to queue (``camera_state``), and what its open ``batch``
        is to remember of them: none when they are what the last store of this batch queued (the
        broker retains those; a camera sending a picture a second of the same scene queued them
        every second, a statement and three MQTT messages a picture), else all of them."""
        state = await camera_state(
            conn, self.topics, batch.camera_id, enabled, assessment, live, previous=frozenset(), last_event=last_event
        )
        sent = digest(state)
        if batch.state_sent == sent:
            metrics.STATES_UNCHANGED.inc()
            return [], None
        return state, batches.StateSent(batch.id, sent)

    async def _rescore(
        self, conn: asyncpg.Connection, batch: batches.Batch, judged: Judged, current: Mapping[int, Snapshot]
    ) -> Event | None:
        """Rescore the open event; the event as stored when anything a consumer sees changed, else
        None. Its picture moves to the judged image when that image's snapshot exists or is drawn
        anyway (published now, or an earlier stored image's), or when the judgement changed;
        otherwise it stays, so an event's images are not each drawn."""
        assert batch.event_id is not None
        path = snapshot_file(self.settings, batch.camera_id, judged.image_id)
        moves = (
            judged.image_id not in current
            or self._snapshots.due(batch.camera_id, current[judged.image_id])
            or path.exists()
        )
        picture = await self._picture(conn, batch.camera_id, judged.image_id, current) if moves else None
        rescored = await events_store.rescore(
            conn,
            batch.event_id,
            judged.assessment,
            image_id=judged.image_id if moves else None,
            snapshot_path=picture,
        )
        if rescored is not None and not moves:
            # A new judgement is announced with the image it was made on (and that image's detections).
            picture = await self._picture(conn, batch.camera_id, judged.image_id, current)
            rescored = await events_store.set_picture(conn, batch.event_id, judged.image_id, picture)
        return rescored

    async def _picture(
        self, conn: asyncpg.Connection, camera_id: str, image_id: int, current: Mapping[int, Snapshot]
    ) -> str | None:
        return await snapshot_module.ensure(conn, self.settings, camera_id, image_id, current.get(image_id))

    # --- batch closing -------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Close due batches when they fall due. On the system's clock the loop sleeps until its
        next look (the first open batch's due time, or the beat at least every
        ``_LOOK_AT_LEAST_EVERY``), woken sooner by a batch the stage opens or extends; on another
        clock (tests) it looks every tick (a fraction of the idle time, at most a second)."""
        tick = max(0.05, min(1.0, self.settings.batch_idle_s / 4))
        delay, failures = tick, 0
        while not stop.is_set():
            self._look_sooner.clear()
            try:
                await self.close_due()
            except DB_ERRORS as err:
                # A database outage: back off (up to 10 s) and log the first failure, then every tenth.
                failures += 1
                delay = min(10.0, delay * 2)
                if failures == 1 or failures % 10 == 0:
                    log.error("closing batches failed failures=%d retry_in_s=%.1f error=%r", failures, delay, err)
            else:
                if failures:
                    log.info("closing batches works again after failures=%d", failures)
                delay, failures = tick, 0
            wait = self._until_next_look(tick) if delay == tick else delay
            if wait > 0:
                await wait_any(stop, self._look_sooner, timeout=wait)

    def _until_next_look(self, tick: float) -> float:
        """Seconds the closing loop sleeps after a look (see ``run``)."""
        if self._next_look is None or not follows_real_time(self.clock):
            return until_next(tick)
        until = (self._next_look - self.clock.now()).total_seconds()
        if until <= 0:
            # Due by its times and still open after the look: a batch whose clip frames are
            # awaited (or a wall clock stepped forward). Looked at again each tick, never in a spin.
            return until_next(tick)
        # (A wall clock set back makes this far off: the beat still comes.)
        return min(until, until_next(_LOOK_AT_LEAST_EVERY.total_seconds()))

    async def close_due(self) -> int:
        """Close the batches that are due. Most ticks send nothing: the last look found when the
        first open batch falls due, and the stage brings that forward when it opens or extends
        one; another process's batch is found by the look at least every
        ``_LOOK_AT_LEAST_EVERY`` (its own process closes it on time). A look is one statement
        without a transaction; the closing takes one only when something is due."""
        closed = 0
        s = self.settings
        now = self.clock.now()
        if self._next_look is not None and now < self._next_look <= now + _LOOK_AT_LEAST_EVERY:
            return closed  # (a clock set back makes the next look far off: then look now)
        any_due, next_due = await batches.any_due(self.pool, now, s.batch_window_s, s.batch_idle_s, s.event_max_s)
        latest = now + _LOOK_AT_LEAST_EVERY
        self._next_look = latest if next_due is None else min(next_due, latest)
        if not any_due:
            return closed
        self._next_look = None  # closing may open batches that continue the events: look again
        while True:
            async with self.pool.acquire() as conn, conn.transaction():
                now = self.clock.now()
                due = await batches.lock_due(
                    conn,
                    now,
                    self.settings.batch_window_s,
                    self.settings.batch_idle_s,
                    limit=1,
                    event_max_s=self.settings.event_max_s,
                )
                if not due:
                    return closed
                added = await outbox.add_many(conn, await self.close_guarded(conn, due[0], now))
            self.offer(added)
            closed += 1

    async def close_guarded(self, conn: asyncpg.Connection, batch: batches.Batch, now: datetime) -> list[Message]:
        """``close``, in a savepoint; if judging this one batch raises (a bug or a value its data
        triggers), it is closed unjudged instead: its event, if it has one, ends with the score it
        has. Otherwise the batch would stay due and fail again on every tick (and every restart),
        and the camera's next images, which close it on arrival, would fail with it.
        Database outages propagate (nothing is closed; the caller retries)."""
        try:
            async with conn.transaction():
                return await self.close(conn, batch, now)
        except Exception as err:
            if is_unavailable(err):
                raise
            log.exception(
                "closing batch failed, closing it unjudged batch_id=%s camera_id=%s", batch.id, batch.camera_id
            )
        messages: list[Message] = []
        if batch.event_id is not None:
            try:
                async with conn.transaction():
                    await events_store.end(conn, batch.event_id, batch.last_activity_at)
                    messages.append(await event_message(conn, self.topics, batch.event_id, "end"))
            except Exception as err:
                if is_unavailable(err):
                    raise
                log.exception("ending the event of an unjudged batch failed event_id=%s", batch.event_id)
                messages = []
        await batches.close(conn, batch.id, now)
        return messages

    async def close(self, conn: asyncpg.Connection, batch: batches.Batch, now: datetime) -> list[Message]:
        camera = await cameras.get_record(conn, batch.camera_id)
        messages: list[Message] = []
        if camera is None:  # deleted meanwhile: its events went with it
            await batches.close(conn, batch.id, now)
            return messages
        judged = self.judge(await self.observe(conn, batch, camera.name, camera.zones))
        continues = self._continues(batch, now)
        event_id = batch.event_id
        if event_id is None:
            event = await self._open_event(conn, batch, judged, opened_by=None)
            event_id = event.id
            messages.append(message_of(self.topics, event, "new"))
        else:
            rescored = await events_store.rescore(
                conn,
                event_id,
                judged.assessment,
                image_id=judged.image_id,
                snapshot_path=await self._picture(conn, batch.camera_id, judged.image_id, {}),
            )
            if rescored is not None and continues:
                messages.append(message_of(self.topics, rescored, "update"))
        if continues:
            # Only the window ran out: the activity goes on, and so does its event (no end, the
            # camera stays live). The next batch carries the event from the start.
            await batches.close(conn, batch.id, now)
            successor = await batches.open_continuation(conn, replace(batch, event_id=event_id), now)
            self._carry(batch, successor)
            log.info(
                "batch continued batch_id=%s camera_id=%s event_id=%s next_batch_id=%s risk_score=%s",
                batch.id,
                batch.camera_id,
                event_id,
                successor.id,
                judged.assessment.risk_score,
            )
            return messages
        last_seen = judged.observation.last_seen or batch.last_activity_at
        await events_store.end(conn, event_id, last_seen)
        await batches.close(conn, batch.id, now)
        messages.append(await event_message(conn, self.topics, event_id, "end"))
        quiet = Assessment(0, "low", "quiet", "no activity", [], "rules", self.rules.name)
        messages += await camera_state(
            conn, self.topics, batch.camera_id, camera.enabled, quiet, {}, previous=judged.labels
        )
        log.info(
            "batch closed batch_id=%s camera_id=%s event_id=%s risk_score=%s",
            batch.id,
            batch.camera_id,
            event_id,
            judged.assessment.risk_score,
        )
        return messages

    # --- judging -------------------------------------------------------------------------------
    def _follow(self, batch: batches.Batch, before: int, seen: Sequence[Seen], *, opened: bool) -> None:
        """Add the images that joined ``batch`` (version ``before`` until they did) to its kept
        summary, if that summary is the batch's as of ``before``; otherwise forget it, and the
        batch's detections are read again when it is next judged."""
        summary = ActivitySummary(batch.id, before) if opened else self._summaries.get(batch.camera_id)
        if (
            summary is None
            or not summary.describes(batch.id, before)
            or summary.holds_any(s.image_id for s in seen)
            or any(len(s.detection_ids) != len(s.detections) for s in seen)
        ):
            self._summaries.pop(batch.camera_id, None)
            return
        for s in seen:
            summary.add(s.rows())
        summary.version = batch.version
        self._summaries[batch.camera_id] = summary

    def _carry(self, closed: batches.Batch, successor: batches.Batch) -> None:
        """The summary of a batch that ``successor`` continues is the successor's as it opens: the
        activity of an event's batches is judged as one, and the closed batch takes no more images.
        Only a summary of ``closed`` at the version it was closed at (as just judged) is carried."""
        summary = self._summaries.get(closed.camera_id)
        if summary is not None and summary.describes(closed.id, closed.version):
            summary.batch_id, summary.version = successor.id, successor.version

    async def _summary(self, conn: asyncpg.Connection, batch: batches.Batch) -> ActivitySummary:
        """The batch's activity: the kept summary while the batch's row is at its version, else
        read (and kept)."""
        summary = self._summaries.get(batch.camera_id)
        if summary is not None and summary.describes(batch.id, batch.version):
            return summary
        summary = ActivitySummary.of(batch.id, batch.version, await batches.detections(conn, batch.id))
        self._summaries[batch.camera_id] = summary
        return summary

    def judge(self, observed: tuple[Observation, int]) -> Judged:
        """The rules' judgement of an observed batch (``observe``)."""
        observation, image_id = observed
        assessment = self.rules.assess_now(observation)
        labels = frozenset(d.label for d in observation.detections)
        return Judged(observation, assessment, image_id, labels)

    async def observe(
        self,
        conn: asyncpg.Connection,
        batch: batches.Batch,
        camera_name: str,
        zones: Sequence[Zone],
        household: tuple[datetime, ContextState] | None = None,
        *,
        every_detection: Sequence[batches.BatchDetection] | None = None,
    ) -> tuple[Observation, int]:
        """Everything the reasoners need about a batch, and the image that best shows it.
        ``household``: the context the caller read for a capture time, used when that is the
        batch's latest. The observation's detections are those that carry the rules' judgement,
        or ``every_detection``, all of the batch's as the caller read them (``batches.detections``:
        the LLM's prompt lists them, and its key frames are chosen from the same rows)."""
        # The rules are given the detections that carry their judgement (the same judgement as
        # all of them: pipeline/summary.py); the LLM phase every one.
        if every_detection is not None:
            rows = list(every_detection)
            summary = ActivitySummary.of(batch.id, batch.version, rows)
        else:
            summary = await self._summary(conn, batch)
            rows = summary.detections()
        if not summary.images:
            raise RuntimeError(f"batch {batch.id} has no detections")
        identified = [r.detection_id for r in summary.identified]
        known = await people.identities(conn, identified) if identified else {}
        if every_detection is None:
            summary.keep_identified(known)  # the next group reads these only, and its own
        top_category = summary.top_category()
        # The image showing the most of the top category (the latest on a tie) represents the event.
        image_id = summary.shown[top_category][1]
        assert summary.first_seen is not None and summary.last_seen is not None
        last_seen = summary.last_seen
        local = last_seen.astimezone(self.tz)
        # The household as it was when the batch's latest image was taken (a late upload is judged
        # with the context of its capture time, not today's); the LLM phase reads the same.
        if household is None or household[0] != last_seen:
            ctx_state = await context.for_capture(conn, last_seen)
        else:
            ctx_state = household[1]  # the caller read it for this very capture time
        top = summary.best[top_category]
        past = await self._history(conn, batch, local, zone=top.zones[0] if top.zones else "", label=top.label)
        observation = Observation(
            camera_id=batch.camera_id,
            camera_name=camera_name,
            captured_at=local,
            detections=[Detection(r.label, r.confidence, r.bbox) for r in rows],
            detection_zones=[r.zones for r in rows],
            zones=zones,
            context=ctx_state.context if ctx_state.set_at is not None else None,
            context_set_late=_set_late(ctx_state, last_seen),
            max_counts=dict(summary.max_counts),
            frames=summary.frames[top_category],
            first_seen=summary.first_seen,
            last_seen=last_seen,
            baseline=past.baseline,
            recent_visits=past.recent_visits,
            feedback=past.feedback,
            identities=[known.get(r.detection_id) for r in rows] if known else (),
            enrolled_people=await people.enrolled_count(conn) if known else 0,
        )
        return observation, image_id

    async def _history(
        self, conn: asyncpg.Connection, batch: batches.Batch, local: datetime, *, zone: str, label: str
    ) -> activity.History:
        """``activity.history`` for the batch's judgement, read once for a batch, a day and hour, a
        zone and label: while a camera's activity goes on (a picture a second) they stay the same,
        and so does what it reads. The baseline counts the days before ``local``'s; the other
        visits are the camera's batches other than this one and its event's (an event opened by
        this batch is new: no other batch has it), and while this batch is open the camera has
        no other open one; the feedback changes by a vote, after which
        this process reads it again (one in another process, an API role of a scale-out, is seen
        from the camera's next batch: within ``batch_window_s``). Stop 35: a statement a picture."""
        key = (batch.id, local.date(), local.hour, zone, label, activity.feedback_changes())
        kept = self._histories.get(batch.camera_id)
        if kept is not None and kept[0] == key:
            return kept[1]
        past = await activity.history(
            conn,
            batch.camera_id,
            local,
            batch_id=batch.id,
            visits_since=batch.opened_at - _VISIT_WINDOW,
            zone=zone,
            label=label,
        )
        self._histories[batch.camera_id] = (key, past)
        return past

    # --- events ----------------------------------------------------------------------------------
    async def _open_event(
        self,
        conn: asyncpg.Connection,
        batch: batches.Batch,
        judged: Judged,
        *,
        opened_by: str | None,
        current: Mapping[int, Snapshot] | None = None,
    ) -> Event:
        """``opened_by``: why the event opens while its batch is still open (a confident detection,
        an alert-worthy judgement: stored as ``is_fast_path``); None when the batch closes. The
        event is the batch's from now on; returned as stored (what ``hsi/events`` announces)."""
        obs = judged.observation
        event = await events_store.insert(
            conn,
            event_id=uuid.uuid4(),
            camera_id=batch.camera_id,
            image_id=judged.image_id,
            batch_id=batch.id,
            started_at=obs.first_seen or batch.opened_at,
            assessment=judged.assessment,
            is_fast_path=opened_by is not None,
            snapshot_path=await self._picture(conn, batch.camera_id, judged.image_id, current or {}),
            context=obs.context,
            llm_pending=self.llm_enabled,
        )
        a = judged.assessment
        metrics.EVENTS.labels(a.risk_level, a.analysis_source).inc()
        log.info(
            "event created event_id=%s camera_id=%s batch_id=%s opened_by=%s risk_score=%s risk_level=%s summary=%r",
            event.id,
            batch.camera_id,
            batch.id,
            opened_by or "batch closed",
            a.risk_score,
            a.risk_level,
            a.summary,
        )
        return event
