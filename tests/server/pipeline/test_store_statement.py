"""A camera's group of results is stored with its jobs' completion, its detections and the
camera's hourly counts in one statement (stop 34: the completion was a round trip of its own),
and a job whose lease was lost meanwhile still leaves nothing of itself behind.

Real PostgreSQL, the result stage as the server wires it (``bench.store_stage.store_pipeline``).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime, timedelta

import asyncpg
import numpy as np
import pytest

from bench.roundtrips import RoundTrips
from bench.store_stage import store_pipeline
from inference_server import demo_assets
from inference_server.comms.topics import Topics
from inference_server.config import Settings
from inference_server.detection.ultralytics_backend import UltralyticsDetector
from inference_server.domain import Assessment, Detection
from inference_server.jobs.queue import ClaimedJob, JobQueue
from inference_server.pipeline.decode import Picture, decode_picture
from inference_server.pipeline.detect import DetectWorker
from inference_server.pipeline.messages import message_of
from inference_server.pipeline.tamper import TamperStage
from inference_server.server import open_database
from inference_server.store import batches as batches_store
from inference_server.store import events as events_store
from inference_server.store import tamper as tamper_store
from inference_server.store.batches import Batch
from tests.server.ingest.conftest import with_comment

from ..conftest import FakeClock

NOON = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
PERSON = Detection("person", 0.62, (0.1, 0.2, 0.3, 0.9))
CAR = Detection("car", 0.7, (0.6, 0.6, 0.9, 0.9))
DONE = "UPDATE jobs SET state = 'done'"


class _Porch:
    def __init__(self, worker: DetectWorker, queue: JobQueue, pool: asyncpg.Pool, picture: Picture) -> None:
        self.worker, self.queue, self.pool, self.picture = worker, queue, pool, picture

    async def claim(self, ingestor: object, count: int) -> list[ClaimedJob]:
        raw = demo_assets.image("bus.jpg").read_bytes()
        for n in range(count):
            await ingestor.ingest_bytes(  # type: ignore[attr-defined]
                "porch", with_comment(raw, f"store {n}"), captured_at=NOON + timedelta(seconds=n), original_name=None
            )
        return sorted(await self.queue.claim(count), key=lambda j: j.id)

    async def finish(self, jobs: Sequence[ClaimedJob], found: Sequence[Sequence[Detection]]) -> list[ClaimedJob]:
        return await self.worker.result.finish_many([(j, self.picture, d) for j, d in zip(jobs, found, strict=True)])

    async def stored(self) -> tuple[dict[int, list[str]], dict[str, int], dict[int, str]]:
        """Each image's detection labels (in id order), the camera's hourly counts, each job's state."""
        labels: dict[int, list[str]] = {}
        for r in await self.pool.fetch("SELECT image_id, label FROM detections ORDER BY id"):
            labels.setdefault(r["image_id"], []).append(r["label"])
        hourly = {r["label"]: r["images"] for r in await self.pool.fetch("SELECT label, images FROM activity_hourly")}
        states = {r["image_id"]: r["state"] for r in await self.pool.fetch("SELECT image_id, state FROM jobs")}
        return labels, hourly, states


@pytest.fixture
async def porch(
    make_settings: Callable[..., Settings], pose_detector: UltralyticsDetector
) -> AsyncIterator[tuple[_Porch, object]]:
    # No fast path and a long batch: the group opens no event, so only the store's own work runs.
    async for camera in _porch(make_settings(fast_path={}), pose_detector):
        yield camera


@pytest.fixture
async def alerting_porch(
    make_settings: Callable[..., Settings], pose_detector: UltralyticsDetector
) -> AsyncIterator[tuple[_Porch, object]]:
    """A porch whose confident person opens the batch's event at once (the fast path)."""
    async for camera in _porch(make_settings(fast_path={"person": 0.0}), pose_detector):
        yield camera


async def _porch(settings: Settings, pose_detector: UltralyticsDetector) -> AsyncIterator[tuple[_Porch, object]]:
    settings = settings.model_copy(update={"batch_window_s": 300, "batch_idle_s": 120, "tamper_enabled": False})
    pool, _ = await open_database(settings)
    worker, ingestor, queue = await store_pipeline(settings, pool, pose_detector, ["porch"], clock=FakeClock(NOON))
    picture = decode_picture(demo_assets.image("bus.jpg"), settings.detector_imgsz)
    try:
        yield _Porch(worker, queue, pool, picture), ingestor
    finally:
        worker._infer_pool.shutdown()
        worker._decode_pool.shutdown()
        await pool.close()


async def test_a_picture_that_opens_an_event_links_reads_and_announces_it_in_one_statement(
    alerting_porch: tuple[_Porch, object],
) -> None:
    """A confident person opens the batch's event at once. Opening it took four statements of
    its own: the insert, the batch's link, the read of what ``hsi/events`` announces and the
    camera's latest event for its state (which is the new one, unless one started later). Now
    one (stop 49), and what it announces is what the event reads once committed; the same for
    the update a second person brings (its read was a statement of its own too)."""
    camera, ingestor = alerting_porch
    pool = camera.pool
    first, second = await camera.claim(ingestor, 2)
    with RoundTrips() as trips:
        assert await camera.finish([first], [[PERSON]]) == []

    texts = list(trips.by_statement)
    [opening] = [t for t in texts if "INSERT INTO events" in t]
    assert "UPDATE batches SET event_id" in opening and "jsonb_agg" in opening
    apart = ("UPDATE batches SET event_id", "SELECT e.*", "SELECT id, started_at FROM events")
    assert not [t for t in texts if t.startswith(apart)], texts
    event_id = await pool.fetchval("SELECT id FROM events")
    event = await events_store.get(pool, event_id)
    assert event is not None
    rows = await pool.fetch("SELECT topic, payload FROM outbox ORDER BY id")
    announced = [json.loads(r["payload"]) for r in rows if r["topic"] == "hsi/events"]
    assert announced == [json.loads(message_of(Topics("hsi"), event, "new")[1])]
    [state] = [json.loads(r["payload"]) for r in rows if r["topic"] == "hsi/cameras/porch/state"]
    assert state["last_event_id"] == str(event_id)

    # A second person: the event is rescored, and its update read back by the same statement.
    with RoundTrips() as trips:
        assert await camera.finish([second], [[PERSON, Detection("person", 0.8, (0.5, 0.2, 0.7, 0.9))]]) == []
    assert not [t for t in trips.by_statement if t.startswith(apart)], list(trips.by_statement)
    event = await events_store.get(pool, event_id)
    assert event is not None and event.objects == {"person": 2}
    rows = await pool.fetch("SELECT topic, payload FROM outbox ORDER BY id")
    announced = [json.loads(r["payload"]) for r in rows if r["topic"] == "hsi/events"]
    assert announced[1:] == [json.loads(message_of(Topics("hsi"), event, "update")[1])]


async def test_an_event_opened_for_late_pictures_leaves_the_camera_state_on_the_later_event(
    alerting_porch: tuple[_Porch, object],
) -> None:
    """The camera's state names its latest event (the latest to start). Pictures uploaded late
    open an event that started before the camera's last: the state keeps naming the last one,
    now taken from what the store's lock read rather than read again after the insert."""
    camera, ingestor = alerting_porch
    later = uuid.uuid4()
    async with camera.pool.acquire() as conn:
        await events_store.insert(
            conn,
            event_id=later,
            camera_id="porch",
            image_id=None,  # type: ignore[arg-type]  # an event whose picture is gone
            batch_id=None,
            started_at=NOON + timedelta(hours=1),
            assessment=Assessment(70, "high", "someone", "why", [], "rules", "rules-v2"),
            is_fast_path=True,
            snapshot_path=None,
            context=None,
            llm_pending=False,
        )
    [job] = await camera.claim(ingestor, 1)

    assert await camera.finish([job], [[PERSON]]) == []

    opened = await camera.pool.fetchval("SELECT id FROM events WHERE id <> $1", later)
    assert opened is not None
    rows = await camera.pool.fetch("SELECT topic, payload FROM outbox ORDER BY id")
    [state] = [json.loads(r["payload"]) for r in rows if r["topic"] == "hsi/cameras/porch/state"]
    assert state["last_event_id"] == str(later)


async def test_a_groups_jobs_detections_and_counts_are_one_statement(porch: tuple[_Porch, object]) -> None:
    camera, ingestor = porch
    jobs = await camera.claim(ingestor, 3)

    with RoundTrips() as trips:
        lost = await camera.finish(jobs, [[PERSON, CAR], [], [PERSON]])

    assert lost == []
    completing = {text: n for text, n in trips.by_statement.items() if DONE in text}
    assert list(completing.values()) == [1], f"the jobs were completed in {completing}"
    [statement] = completing
    assert "INSERT INTO detections" in statement and "INSERT INTO activity_hourly" in statement
    assert not any("INSERT INTO detections" in text for text in trips.by_statement if text != statement)
    labels, hourly, states = await camera.stored()
    assert labels == {jobs[0].image_id: ["person", "car"], jobs[2].image_id: ["person"]}
    assert hourly == {"person": 2, "car": 1}
    assert set(states.values()) == {"done"}


async def test_a_job_whose_lease_was_lost_leaves_nothing_and_the_others_are_stored(
    porch: tuple[_Porch, object],
) -> None:
    """Another worker took the middle job over (its lease had run out): its result is dropped
    whole, detections and counts, and the job stays the other worker's; the rest of the group is
    stored as if it had come alone."""
    camera, ingestor = porch
    jobs = await camera.claim(ingestor, 3)
    await camera.pool.execute("UPDATE jobs SET worker_id = 'other', attempts = attempts + 1 WHERE id = $1", jobs[1].id)

    lost = await camera.finish(jobs, [[PERSON], [PERSON, CAR], [CAR]])

    assert [j.id for j in lost] == [jobs[1].id]
    labels, hourly, states = await camera.stored()
    assert labels == {jobs[0].image_id: ["person"], jobs[2].image_id: ["car"]}
    assert hourly == {"person": 1, "car": 1}
    assert states == {jobs[0].image_id: "done", jobs[1].image_id: "running", jobs[2].image_id: "done"}


async def test_a_group_whose_every_lease_was_lost_stores_nothing(porch: tuple[_Porch, object]) -> None:
    camera, ingestor = porch
    jobs = await camera.claim(ingestor, 2)
    await camera.pool.execute("UPDATE jobs SET worker_id = 'other'")

    lost = await camera.finish(jobs, [[PERSON], [CAR]])

    assert {j.id for j in lost} == {j.id for j in jobs}
    labels, hourly, states = await camera.stored()
    assert (labels, hourly, set(states.values())) == ({}, {}, {"running"})
    assert await camera.pool.fetchval("SELECT count(*) FROM batches") == 0


async def test_a_group_that_opens_the_batch_joins_it_in_the_statement_that_opens_it(
    porch: tuple[_Porch, object],
) -> None:
    """No batch open: the one the group opens is joined (its images linked) by the statement that
    opens it; the join was a round trip of its own (stop 49)."""
    camera, ingestor = porch
    jobs = await camera.claim(ingestor, 2)

    with RoundTrips() as trips:
        assert await camera.finish(jobs, [[PERSON], [CAR]]) == []

    [opening] = [text for text in trips.by_statement if "INSERT INTO batches" in text]
    assert "INSERT INTO batch_images" in opening
    assert not [text for text in trips.by_statement if text.startswith("WITH linked AS")], list(trips.by_statement)
    rows = await camera.pool.fetch("SELECT batch_id, image_id FROM batch_images ORDER BY image_id")
    assert [r["image_id"] for r in rows] == [j.image_id for j in jobs]
    assert len({r["batch_id"] for r in rows}) == 1
    assert await camera.pool.fetchval("SELECT last_activity_at FROM batches") == NOON


async def test_a_group_joins_the_open_batch_in_the_statement_that_locks_it(porch: tuple[_Porch, object]) -> None:
    """The camera's open batch, not due, is locked and joined (the links and its activity time)
    by the statement that completes the jobs and inserts the detections: the lock was a round
    trip of its own, and the join another (stop 35)."""
    camera, ingestor = porch
    first, *later = await camera.claim(ingestor, 3)
    assert await camera.finish([first], [[PERSON]]) == []  # opens the batch

    with RoundTrips() as trips:
        assert await camera.finish(later, [[PERSON], [CAR]]) == []

    linking = [text for text in trips.by_statement if "INSERT INTO batch_images" in text]
    assert len(linking) == 1 and "FOR UPDATE" in linking[0] and DONE in linking[0], trips.by_statement
    assert not [text for text in trips.by_statement if "FOR UPDATE" in text and text not in linking], trips.by_statement
    assert not any(text.startswith("UPDATE batches") for text in trips.by_statement), trips.by_statement
    rows = await camera.pool.fetch("SELECT batch_id, image_id FROM batch_images ORDER BY image_id")
    assert [r["image_id"] for r in rows] == [first.image_id] + [j.image_id for j in later]
    assert len({r["batch_id"] for r in rows}) == 1
    assert await camera.pool.fetchval("SELECT last_activity_at FROM batches") == NOON


async def test_a_group_with_nothing_detected_is_one_statement_without_a_transaction(
    porch: tuple[_Porch, object],
) -> None:
    """Nothing detected and no tamper check due: the jobs' completion is all a group stores, one
    statement that is its own transaction (BEGIN and COMMIT around it were two round trips more,
    for most pictures of a quiet camera); a lost lease is still told apart."""
    camera, ingestor = porch
    jobs = await camera.claim(ingestor, 3)
    await camera.pool.execute("UPDATE jobs SET worker_id = 'someone else' WHERE id = $1", jobs[1].id)

    with RoundTrips() as trips:
        lost = await camera.finish(jobs, [[], [], []])

    assert lost == [jobs[1]]
    # (A connection the pool opens on the way sets itself up: not the store's statements.)
    stored = {text: n for text, n in trips.by_statement.items() if "jobs" in text or text in ("BEGIN;", "COMMIT;")}
    assert list(stored.values()) == [1] and DONE in next(iter(stored)), trips.by_statement
    _, _, states = await camera.stored()
    assert states == {jobs[0].image_id: "done", jobs[1].image_id: "running", jobs[2].image_id: "done"}


async def test_a_quiet_cameras_picture_with_nothing_detected_is_one_statement_with_its_tamper_check(
    make_settings: Callable[..., Settings], pose_detector: UltralyticsDetector
) -> None:
    """A learned, quiet camera's picture with nothing detected and its tamper check due: the
    check changes nothing the database must see now (its row is written once a minute), so the
    store is the jobs' completion alone, without BEGIN and COMMIT (it was those, the completion,
    and nothing else); the check is kept in memory as a transaction's would be. A check that must
    be written (learning the scene) still goes through the transaction."""
    settings = make_settings(fast_path={}, tamper_learn_frames=2, tamper_check_interval_s=1.0)
    pool, _ = await open_database(settings)
    worker, ingestor, queue = await store_pipeline(settings, pool, pose_detector, ["porch"], clock=FakeClock(NOON))
    worker.result.tamper = stage = TamperStage(settings, Topics())
    camera = _Porch(worker, queue, pool, decode_picture(demo_assets.image("bus.jpg"), settings.detector_imgsz))
    try:
        jobs = await camera.claim(ingestor, 5)
        for job in jobs[:3]:  # learning, then learned: written
            assert await camera.finish([job], [[]]) == []
        stored = await tamper_store.state(pool, "porch")
        assert stored is not None and stored.learned_images == 2
        before = stage._rows["porch"]

        with RoundTrips() as trips:
            assert await camera.finish(jobs[3:4], [[]]) == []
        ours = ("BEGIN;", "COMMIT;")
        mine = {t: n for t, n in trips.by_statement.items() if "jobs" in t or "tamper" in t or t in ours}
        assert list(mine.values()) == [1] and DONE in next(iter(mine)), trips.by_statement
        after = stage._rows["porch"]  # checked: the running mean moved, in memory
        assert after.version == before.version and not np.array_equal(after.baseline.layout, before.baseline.layout)

        _, _, states = await camera.stored()
        assert [states[j.image_id] for j in jobs] == ["done"] * 4 + ["running"]
    finally:
        worker._infer_pool.shutdown()
        worker._decode_pool.shutdown()
        await pool.close()


async def _lock_waits(pool: asyncpg.Pool, count: int) -> None:
    """Until ``count`` of this database's sessions wait for a lock another transaction holds."""
    for _ in range(500):
        waiting = await pool.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        if waiting >= count:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{count} session(s) never came to wait for a lock")


async def test_two_workers_storing_a_camera_as_its_batch_opens_do_not_deadlock(
    make_settings: Callable[..., Settings], pose_detector: UltralyticsDetector, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two worker processes store one camera's pictures while a third transaction opens its batch
    (the CI failure of stop 38: ``DeadlockDetectedError``, a job's attempt lost). Worker B's
    statement started before the batch was committed: it took the camera's hourly counts row
    and, seeing no batch, went on to open one; worker A's statement, after the commit, locked
    the batch and waited for the counts row B held, while B waited for A's batch lock. Every
    store now takes the camera's counts row before its batch: A waits for B, B finishes."""
    settings = make_settings(fast_path={}, batch_window_s=300, batch_idle_s=120, tamper_enabled=False)
    pool, _ = await open_database(settings)
    one, ingestor, queue = await store_pipeline(settings, pool, pose_detector, ["porch"], clock=FakeClock(NOON))
    two, _, _ = await store_pipeline(settings, pool, pose_detector, [], clock=FakeClock(NOON))
    picture = decode_picture(demo_assets.image("bus.jpg"), settings.detector_imgsz)
    camera = _Porch(one, queue, pool, picture)
    opening = await pool.acquire()
    try:
        first, a, b = await camera.claim(ingestor, 3)
        # A third worker's transaction opens the camera's batch with the first picture; not committed yet.
        transaction = opening.transaction()
        await transaction.start()
        await one.result._store(opening, [await one.result._prepare(first, picture, [PERSON])])
        # B, once its statement is done, holds on before opening a batch of its own.
        go_on, held = asyncio.Event(), asyncio.Event()
        open_or_lock = batches_store.open_or_lock

        async def holding_on(
            conn: asyncpg.Connection, camera_id: str, now: datetime, joining: Sequence[int] = ()
        ) -> tuple[Batch, bool]:
            held.set()
            await go_on.wait()
            return await open_or_lock(conn, camera_id, now, joining)

        monkeypatch.setattr(batches_store, "open_or_lock", holding_on)
        store_b = asyncio.create_task(two.result.finish_many([(b, picture, [PERSON])]))
        await _lock_waits(pool, 1)  # B's statement waits for the opening transaction
        await transaction.commit()
        await asyncio.wait_for(held.wait(), 30)  # B saw no batch open when its statement began
        store_a = asyncio.create_task(one.result.finish_many([(a, picture, [PERSON])]))
        await _lock_waits(pool, 1)  # A waits for B
        go_on.set()

        assert await asyncio.wait_for(asyncio.gather(store_a, store_b), 30) == [[], []]
    finally:
        await pool.release(opening)
        for worker in (one, two):
            worker._infer_pool.shutdown()
            worker._decode_pool.shutdown()
    try:
        _, hourly, states = await camera.stored()
        assert hourly == {"person": 3} and set(states.values()) == {"done"}
        rows = await pool.fetch("SELECT batch_id, image_id FROM batch_images ORDER BY image_id")
        assert [r["image_id"] for r in rows] == [first.image_id, a.image_id, b.image_id]
        assert len({r["batch_id"] for r in rows}) == 1
    finally:
        await pool.close()
