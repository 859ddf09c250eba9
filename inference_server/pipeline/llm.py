"""LLM stage, phase two of an alert: the LLM's description and adjusted score for an event the
rules already published, sent as ``type: update`` on the same event id (the headline summary
stays the rules'; the LLM may raise the score, and lower it only for a reason the server checked).

Events wait in the database (``llm_state = 'pending'``) and are claimed with a lease, so
several workers share them and a crashed worker's event is taken up again. An LLM that is
down, slow or wrong leaves the rules judgement in place, labelled ``rules``, with the reason.

When the model sees (``llm.vision``), the event's key frames (``pipeline.frames``: the best
images of its batches, at most ``max_images``, scaled to ``image_max_px``) go with the prompt;
the event records their image ids. A model that cannot see gets no frames and none are encoded.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Sequence
from dataclasses import replace

import asyncpg

from inference_server.comms.topics import Topics
from inference_server.domain import Assessment, Observation
from inference_server.pipeline import frames as key_frames
from inference_server.pipeline.batch import BatchStage
from inference_server.reasoning.llm import LOWERING_GROUNDS, LOWERING_REFUSED, RULES_CAP, LlmReasoner, settle_score
from inference_server.reasoning.reasoner import LevelThresholds
from inference_server.schemas import EventMessage, RiskFactor, Zone
from inference_server.store import batches, cameras, images, outbox
from inference_server.store import events as events_store
from inference_server.store.db import DB_ERRORS
from inference_server.telemetry import metrics

log = logging.getLogger(__name__)


def zones_text(observation: Observation, zones: Sequence[Zone]) -> str | None:
    if not zones:
        return None
    where: dict[str, list[str]] = {z.name: [] for z in zones}
    for det, names in zip(observation.detections, observation.detection_zones, strict=False):
        for name in names:
            if name in where:
                where[name].append(f"{det.label} {det.confidence:.2f}")
    return "; ".join(
        f"{z.name} ({z.sensitivity} sensitivity): {', '.join(sorted(set(where[z.name]))) or 'nothing'}" for z in zones
    )


def baseline_text(observation: Observation) -> str:
    hour = observation.captured_at.strftime("%H:00")
    if observation.baseline is None:
        return "not learned yet (fewer than 3 days of history)"
    labels = sorted({d.label for d in observation.detections})
    usual = ", ".join(f"{label} {observation.baseline.get(label, 0.0):.1f} images/hour" for label in labels)
    return f"usually at {hour} on this camera: {usual}; {observation.recent_visits} other visit(s) in the last hour"


def bound_adjustment(llm: Assessment, rules: Assessment, max_adjust: int, thresholds: LevelThresholds) -> Assessment:
    """The stage's net under the reasoner's own policy (``reasoning.llm.settle_score``): the LLM's
    score at most ``max_adjust`` points above the rules', and not below them unless the reasoner
    recorded a verified reason (an ``llm_lowering_grounds`` factor); the level recomputed and the
    reasoning saying so. The LLM explains and nudges; the rules set the floor and the ceiling."""
    grounds = next((f.detail for f in llm.factors if f.name == LOWERING_GROUNDS), None)
    capped = next((f.detail for f in rules.factors if f.name == RULES_CAP and f.points < 0), None)
    bounded, note = settle_score(llm.risk_score, rules.risk_score, max_adjust, grounds, capped=capped)
    if bounded == llm.risk_score:
        return llm
    # The factors keep adding up to the score: the LLM's adjustment factor takes the cut.
    factors = [
        f.model_copy(update={"points": f.points + bounded - llm.risk_score}) if f.name == "llm_adjustment" else f
        for f in llm.factors
    ]
    if bounded > llm.risk_score and grounds is None:
        factors.append(RiskFactor(name=LOWERING_REFUSED, points=0, detail=str(note)))
    return replace(
        llm,
        risk_score=bounded,
        risk_level=thresholds.level(bounded),
        reasoning=f"{llm.reasoning} [{note}.]",
        factors=factors,
    )


class LlmStage:
    def __init__(
        self,
        pool: asyncpg.Pool,
        batch_stage: BatchStage,
        reasoner: LlmReasoner,
        topics: Topics,
        *,
        lease_s: float,
        max_adjust: int = 25,
        poll_s: float = 1.0,
        max_images: int = 3,
        image_max_px: int = 768,
    ) -> None:
        self.max_adjust = max_adjust
        self.max_images = max_images
        self.image_max_px = image_max_px
        self.pool = pool
        self.batch_stage = batch_stage
        self.reasoner = reasoner
        self.topics = topics
        self.lease_s = lease_s
        self.poll_s = poll_s
        self._wakeup = asyncio.Event()

    def _on_notify(self, *_: object) -> None:
        self._wakeup.set()

    async def run(self, stop: asyncio.Event) -> None:
        listener = await self.pool.acquire()
        await listener.add_listener(events_store.LLM_CHANNEL, self._on_notify)
        await self.reasoner.start()
        try:
            while not stop.is_set():
                self._wakeup.clear()
                try:
                    claim = await events_store.claim_llm(self.pool, self.lease_s)
                    if claim is not None:
                        await self._process_unless_stopped(claim, stop)
                        continue
                except DB_ERRORS as err:
                    log.error("llm stage database error, will retry error=%r", err)
                waiters = [asyncio.ensure_future(self._wakeup.wait()), asyncio.ensure_future(stop.wait())]
                await asyncio.wait(waiters, timeout=self.poll_s, return_when=asyncio.FIRST_COMPLETED)
                for waiter in waiters:
                    waiter.cancel()
        finally:
            await listener.remove_listener(events_store.LLM_CHANNEL, self._on_notify)
            await self.pool.release(listener)
            await self.reasoner.close()

    async def _process_unless_stopped(self, claim: events_store.LlmClaim, stop: asyncio.Event) -> None:
        """The claimed event's phase two, given up when the server stops meanwhile (a model on a
        CPU can take a minute): the event goes back to the queue at once, so the next start
        takes it up without waiting out the lease, and the stop waits for no model."""
        work = asyncio.ensure_future(self.process(claim.event_id))
        stopping = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait((work, stopping), return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            if not work.done():
                work.cancel()
                # The call ends at its next await (llama.cpp's at its next token: backends/llamacpp.py).
                await asyncio.wait((work,))
                if await events_store.release_llm(self.pool, claim):
                    log.info("llm phase given up at stop, event queued again event_id=%s", claim.event_id)
        if not work.cancelled():
            work.result()  # its errors are the stage's, as when it was awaited directly

    async def _frames(
        self, conn: asyncpg.Connection, rows: Sequence[batches.BatchDetection], event_id: uuid.UUID
    ) -> list[key_frames.Frame]:
        """The event's key frames, best first (encoded in a worker thread), chosen from its batch's
        detections ``rows``."""
        chosen = key_frames.choose(rows, self.max_images)
        frames = await key_frames.load(chosen, await images.paths(conn, chosen), self.image_max_px)
        log.info(
            "llm key frames event_id=%s image_ids=%s bytes=%d encode_s=%.3f",
            event_id,
            [f.image_id for f in frames],
            sum(len(f.jpeg) for f in frames),
            sum(f.encode_s for f in frames),
        )
        return frames

    async def process(self, event_id: uuid.UUID) -> None:
        # Asked before a connection is taken: "auto" may ask the LLM server once.
        sees = await self.reasoner.sees()
        async with self.pool.acquire() as conn:
            batch_id = await events_store.batch_of(conn, event_id)
            batch = await batches.get(conn, batch_id) if batch_id is not None else None
            camera = await cameras.get_record(conn, batch.camera_id) if batch is not None else None
            if batch is None or camera is None:
                log.warning("llm phase skipped: event has no batch event_id=%s", event_id)
                await events_store.finish_llm(conn, event_id, None, failure="no batch to judge")
                return
            # Every detection, read once: the prompt lists them and the key frames come from them.
            rows = await batches.detections(conn, batch.id)
            observation, _ = await self.batch_stage.observe(
                conn, batch, camera.name, camera.zones, every_detection=rows
            )
            frames = await self._frames(conn, rows, event_id) if sees else []
        rules = self.batch_stage.rules.assess_now(observation)
        started = metrics.now()
        result = await self.reasoner.refine(
            observation,
            rules,
            context=observation.context.model_dump(mode="json") if observation.context is not None else None,
            zones=zones_text(observation, camera.zones),
            baseline=baseline_text(observation),
            images={frame.image_id: frame.jpeg for frame in frames},
        )
        metrics.STAGE.labels("llm").observe(metrics.now() - started)
        failure = None if result.analysis_source == "llm" else result.reasoning.rpartition("LLM fallback: ")[2]
        metrics.LLM_CALLS.labels("ok" if failure is None else failure.split(" (")[0]).inc()
        if failure is None:
            result = bound_adjustment(result, rules, self.max_adjust, self.reasoner.thresholds)
        async with self.pool.acquire() as conn, conn.transaction():
            await events_store.finish_llm(conn, event_id, result, failure=failure)
            event = await events_store.get(conn, event_id)
            assert event is not None
            # A failure leaves the rules' judgement, already told by `new`: the update records the
            # fallback for readers but alerts nobody (docs/integration.md).
            message = EventMessage(type="update", alert=failure is None, **event.model_dump())
            await outbox.add(conn, self.topics.events, message.model_dump_json().encode())
        log.info(
            "llm phase done event_id=%s source=%s risk_score=%s risk_level=%s failure=%s",
            event_id,
            result.analysis_source,
            event.risk_score,
            event.risk_level,
            failure,
        )
