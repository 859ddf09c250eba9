"""The batch stage judges a growing activity from a summary kept image by image
(``pipeline/summary.py``), not by reading all its detections back for every stored group.

- The rules give the same judgement on the summary's detections as on all of them (any
  detections, zones, ties, identities and late frames: a property test against the reference,
  the aggregation ``BatchStage.observe`` did over every row).
- In PostgreSQL: an ongoing event's groups are judged without reading the event's detections back
  (a statement count: every group read them before), and the judgement is the one a stage that
  reads everything gives, also after another worker stored images of the camera, after a
  rolled-back transaction, and across a continued batch.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.roundtrips import RoundTrips
from bench.store_stage import store_pipeline
from inference_server import demo_assets
from inference_server.config import Settings
from inference_server.detection.ultralytics_backend import UltralyticsDetector
from inference_server.domain import Detection, Identity, Observation, category_of
from inference_server.pipeline import result as result_module
from inference_server.pipeline.batch import BatchStage
from inference_server.pipeline.decode import decode_picture
from inference_server.pipeline.detect import DetectWorker
from inference_server.pipeline.summary import ActivitySummary
from inference_server.reasoning.reasoner import LevelThresholds
from inference_server.reasoning.rules import RulesReasoner
from inference_server.schemas import CameraState, HouseholdContext, Zone, ZoneList
from inference_server.server import open_database
from inference_server.store import activity, batches, cameras
from inference_server.store.batches import BatchDetection
from tests.server.ingest.conftest import with_comment

from ..conftest import FakeClock

RULES = RulesReasoner(LevelThresholds(40, 70, 90))
NOON = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
ZONES = [
    Zone(name="door", polygon=[(0, 0), (0.5, 0), (0.5, 1), (0, 1)], sensitivity="high"),
    Zone(name="street", polygon=[(0.5, 0), (1, 0), (1, 1), (0.5, 1)], sensitivity="low"),
    Zone(name="lawn", polygon=[(0, 0.5), (1, 0.5), (1, 1), (0, 1)]),
]


# --- the rules' judgement: summary against every detection ---------------------------------------
IDENTITIES = [
    Identity("face", 1, "Anna", "person.anna", 0.81),
    Identity("face", 1, "Anna", "person.anna", 0.93),
    Identity("body", 2, "Ben", None, 0.71),
    Identity("face", None, visitor=1, stranger=7, visits=3, first_seen=NOON - timedelta(hours=2)),
    Identity("face", None, visitor=2, stranger=8, visits=3, first_seen=NOON - timedelta(hours=5)),
    Identity("body", None, visitor=3),
    # Stranger 7 again in a later batch of the event: another visitor, the same person.
    Identity("face", None, visitor=4, stranger=7, visits=3, first_seen=NOON - timedelta(hours=2)),
    Identity("body", None, visitor=4, stranger=7, visits=3, first_seen=NOON - timedelta(hours=2)),
    Identity("face", 1, "Anna", "person.anna", 0.93),  # a tie with the most similar
]

detection_rows = st.builds(
    lambda label, confidence, zones, who: (label, confidence, zones, who),
    st.sampled_from(["person", "person", "car", "dog", "backpack", "bicycle"]),
    st.sampled_from([0.31, 0.55, 0.55, 0.74, 0.9, 0.9, 0.97]),  # repeated values: ties
    st.sampled_from([(), ("door",), ("street",), ("door", "lawn"), ("street", "lawn")]),
    st.one_of(st.none(), st.sampled_from(IDENTITIES)),
)
# Images: (seconds after noon, detections); equal seconds and late frames (an earlier capture
# stored later) included.
images = st.lists(
    st.tuples(st.integers(0, 40), st.lists(detection_rows, min_size=1, max_size=5)), min_size=1, max_size=14
)


def _rows(
    drawn: Sequence[tuple[int, list[tuple[str, float, tuple[str, ...], Identity | None]]]],
) -> tuple[list[list[BatchDetection]], dict[int, Identity]]:
    """Each image's rows, in storing order, with ids as PostgreSQL gives them (rising)."""
    per_image, known, next_id = [], {}, 100
    for n, (second, found) in enumerate(drawn):
        rows = []
        for label, confidence, zones, who in found:
            next_id += 1
            if who is not None and label != "person":
                who = None  # recognition embeds people only
            if who is not None:
                known[next_id] = who
            box = (0.1, 0.2, 0.3, 0.9)
            captured = NOON + timedelta(seconds=second)
            rows.append(BatchDetection(1000 + n, label, confidence, box, zones, captured, next_id, who is not None))
        per_image.append(rows)
    return per_image, known


def _observation(rows: Sequence[BatchDetection], known: dict[int, Identity], **batch: object) -> Observation:
    return Observation(
        "front",
        "Front door",
        NOON + timedelta(minutes=1),
        [Detection(r.label, r.confidence, r.bbox) for r in rows],
        [r.zones for r in rows],
        ZONES,
        context=HouseholdContext(alarm_state="armed_away", people_home=["Anna"]),
        identities=[known.get(r.detection_id) for r in rows] if known else (),
        enrolled_people=2 if known else 0,
        **batch,  # type: ignore[arg-type]
    )


@settings(max_examples=300, deadline=None)
@given(images, st.randoms(use_true_random=False))
def test_the_rules_judge_the_summary_as_they_judge_every_detection(drawn: list, random: object) -> None:
    per_image, known = _rows(drawn)
    summary = ActivitySummary(uuid.uuid4())
    stored: list[list[BatchDetection]] = []
    groups = list(per_image)
    while groups:  # images join a few at a time, as groups of one camera are stored
        take = random.randint(1, 3)  # type: ignore[attr-defined]
        group, groups = groups[:take], groups[take:]
        summary.add(r for rows in group for r in rows)
        stored += group
        # As the batch stage does once it read their identities: two sightings per person kept.
        summary.keep_identified({d.detection_id: known[d.detection_id] for d in summary.identified})

    # The reference: what observe computed from every row, in the order it read them.
    every = sorted((r for rows in stored for r in rows), key=lambda r: (r.captured_at, r.detection_id))
    per_image_counts: dict[int, Counter[str]] = {}
    for r in every:
        per_image_counts.setdefault(r.image_id, Counter())[r.label] += 1
    top = min((category_of(r.label) for r in every), key=("person", "vehicle", "object", "animal").index)
    image_id = max(
        per_image_counts,
        key=lambda i: (sum(n for lbl, n in per_image_counts[i].items() if category_of(lbl) == top), i),
    )
    max_counts: dict[str, int] = {}
    for counts in per_image_counts.values():
        for label, n in counts.items():
            max_counts[label] = max(max_counts.get(label, 0), n)
    frames = sum(any(category_of(lbl) == top for lbl in c) for c in per_image_counts.values())
    top_detection = max((r for r in every if category_of(r.label) == top), key=lambda r: r.confidence)

    assert summary.top_category() == top
    assert summary.shown[top][1] == image_id
    assert summary.max_counts == max_counts
    assert summary.frames[top] == frames
    assert summary.best[top] is top_detection
    assert (summary.first_seen, summary.last_seen) == (every[0].captured_at, max(r.captured_at for r in every))
    condensed = summary.detections()
    assert len(condensed) <= len(every)
    assert len(summary.identified) <= 2 * len({i.who for i in known.values()})
    batch = {
        "max_counts": max_counts,
        "frames": frames,
        "first_seen": every[0].captured_at,
        "last_seen": max(r.captured_at for r in every),
        "recent_visits": 2,
    }
    full = RULES.assess_now(_observation(every, known, **batch))
    kept = RULES.assess_now(_observation(condensed, known, **batch))
    assert kept == full
    assert {r.label for r in condensed} == {r.label for r in every}


def test_a_summary_refuses_an_image_it_holds() -> None:
    row = BatchDetection(1, "person", 0.9, (0.1, 0.1, 0.2, 0.2), (), NOON, 5)
    summary = ActivitySummary.of(uuid.uuid4(), 1, [row])
    assert summary.holds_any([1])
    with pytest.raises(ValueError, match="in the activity already"):
        summary.add([row])


# --- in the batch stage, with PostgreSQL --------------------------------------------------------
CHAIN_READ = "SELECT d.id, d.image_id, d.label, d.confidence"  # batches.detections


class _Camera:
    """One camera's images stored through the result stage (the detect worker's store step)."""

    def __init__(self, worker: DetectWorker, ingestor: object, queue: object, picture: object, clock: FakeClock):
        self.worker, self.ingestor, self.queue, self.picture, self.clock = worker, ingestor, queue, picture, clock
        self.raw = demo_assets.image("bus.jpg").read_bytes()
        self.n = 0

    async def store(self, found: Sequence[Sequence[Detection]], *, late_s: float = 0) -> None:
        jobs = []
        for dets in found:
            self.n += 1
            self.clock.advance(0.5)
            captured = self.clock.now() - timedelta(seconds=late_s)
            image = with_comment(self.raw, f"summary {self.n}")
            await self.ingestor.ingest_bytes("porch", image, captured_at=captured, original_name=None)  # type: ignore[attr-defined]
            jobs.append(list(dets))
        claimed = sorted(await self.queue.claim(len(found)), key=lambda j: j.id)  # type: ignore[attr-defined]
        lost = await self.worker.result.finish_many([(j, self.picture, d) for j, d in zip(claimed, jobs, strict=True)])
        assert not lost


def _group(k: int) -> list[list[Detection]]:
    """Two images of a varying scene: a person (confidence rising and falling, moving from the
    door to the street), sometimes a second one, a car, a dog."""
    first = [
        Detection("person", 0.5 + (k * 7 % 5) / 10, (0.1, 0.2, 0.3, 0.9)),
        Detection("car", 0.6, (0.6, 0.6, 0.9, 0.9)),
    ]
    second = [Detection("person", 0.62, (0.6 + k % 3 / 10, 0.2, 0.7 + k % 3 / 10, 0.9))]
    if k % 3 == 0:
        second += [Detection("person", 0.55, (0.2, 0.6, 0.3, 0.95)), Detection("dog", 0.7, (0.1, 0.7, 0.2, 0.8))]
    return [first, second]


async def _judgements(stage: BatchStage, pool: object) -> tuple[tuple[object, int], tuple[object, int]]:
    """The stage's judgement of the camera's open batch, and that of a stage that remembers
    nothing (it reads every detection back), in one transaction."""
    fresh = BatchStage(stage.settings, stage.pool, stage.rules, stage.topics, stage.clock, llm_enabled=False)
    async with stage.pool.acquire() as conn, conn.transaction():
        batch = await batches.lock_open(conn, "porch")
        assert batch is not None
        camera = await cameras.get_record(conn, "porch")
        assert camera is not None
        kept_obs, kept_image = await stage.observe(conn, batch, camera.name, camera.zones)
        full_obs, full_image = await fresh.observe(conn, batch, camera.name, camera.zones)
        assert len(full_obs.detections) >= len(kept_obs.detections)
        return (stage.judge((kept_obs, kept_image)).assessment, kept_image), (
            fresh.judge((full_obs, full_image)).assessment,
            full_image,
        )


@pytest.fixture
async def porch(make_settings: Callable[..., Settings], pose_detector: UltralyticsDetector):  # type: ignore[no-untyped-def]
    settings = make_settings(fast_path={"person": 0.5}, batch_window_s=30, batch_idle_s=20, event_max_s=600)
    pool, _ = await open_database(settings)
    clock = FakeClock(NOON)
    worker, ingestor, queue = await store_pipeline(settings, pool, pose_detector, ["porch"], clock=clock)
    await cameras.set_zones(pool, "porch", ZoneList(zones=ZONES))
    picture = decode_picture(demo_assets.image("bus.jpg"), settings.detector_imgsz)
    try:
        yield _Camera(worker, ingestor, queue, picture, clock), worker, pool, (settings, ingestor, queue, clock)
    finally:
        worker._infer_pool.shutdown()
        worker._decode_pool.shutdown()
        await pool.close()


async def test_an_ongoing_event_is_judged_without_reading_its_detections_back(porch) -> None:  # type: ignore[no-untyped-def]
    camera, worker, pool, _ = porch
    await camera.store(_group(0))
    with RoundTrips() as trips:
        for k in range(1, 12):
            await camera.store(_group(k), late_s=3 if k == 7 else 0)  # one group of late frames
    reads = sum(n for text, n in trips.by_statement.items() if CHAIN_READ in text)
    assert reads == 0, f"the event's detections were read back {reads} times in 11 groups"
    assert await pool.fetchval("SELECT count(*) FROM events") == 1
    kept, full = await _judgements(worker.result.batches, pool)
    assert kept == full
    stored = await pool.fetchrow("SELECT risk_score, reasoning, image_id FROM events")
    assert (stored["risk_score"], stored["reasoning"]) == (full[0].risk_score, full[0].reasoning)  # type: ignore[attr-defined]
    assert "seen in 24 images" in stored["reasoning"]


HISTORY_READ = "SELECT (SELECT count(DISTINCT day) FROM activity_hourly"  # activity.history


async def test_an_ongoing_events_history_is_read_once_and_again_after_a_vote(porch) -> None:  # type: ignore[no-untyped-def]
    """The history an ongoing event is judged with (baseline, other visits, feedback) was read for
    every stored group: a statement a picture for a camera sending one a second. It is read once
    for a batch, an hour, a zone and a label, and again after a feedback vote; the judgement is
    the one a stage that reads everything gives (stop 35)."""
    camera, worker, pool, _ = porch
    at_the_door = [[Detection("person", 0.8, (0.1, 0.2, 0.3, 0.9))], [Detection("person", 0.82, (0.1, 0.2, 0.3, 0.9))]]
    await camera.store(at_the_door)
    with RoundTrips() as trips:
        for _ in range(10):
            await camera.store(at_the_door)
    assert sum(n for text, n in trips.by_statement.items() if HISTORY_READ in text) == 0
    assert await pool.fetchval("SELECT count(*) FROM events") == 1
    kept, full = await _judgements(worker.result.batches, pool)
    assert kept == full

    # Someone says the event is a false alarm: the next group is judged with that vote.
    async with pool.acquire() as conn, conn.transaction():
        await activity.change_feedback(conn, "porch", "door", "person", NOON.hour, None, "false_alarm")
    before = kept[0].risk_score  # type: ignore[attr-defined]
    with RoundTrips() as trips:
        await camera.store(at_the_door)
    assert sum(n for text, n in trips.by_statement.items() if HISTORY_READ in text) == 1
    kept, full = await _judgements(worker.result.batches, pool)
    assert kept == full
    assert kept[0].risk_score < before  # type: ignore[attr-defined]


async def test_the_kept_summary_is_not_trusted_after_another_worker_or_a_rollback(  # type: ignore[no-untyped-def]
    porch, pose_detector: UltralyticsDetector, monkeypatch: pytest.MonkeyPatch
) -> None:
    camera, worker, pool, (settings, ingestor, queue, clock) = porch
    for k in range(3):
        await camera.store(_group(k))
    # Another worker (another server process on the same database) stores images of the camera.
    other_worker, _, _ = await store_pipeline(settings, pool, pose_detector, [], clock=clock)
    other = _Camera(other_worker, ingestor, queue, camera.picture, clock)
    other.n = 1000
    await other.store(
        [[Detection("person", 0.99, (0.1, 0.2, 0.3, 0.9))], [Detection("bicycle", 0.8, (0.5, 0.5, 0.7, 0.9))]]
    )
    other_worker._infer_pool.shutdown()
    other_worker._decode_pool.shutdown()
    await camera.store(_group(3))
    kept, full = await _judgements(worker.result.batches, pool)
    assert kept == full
    assert "confidence 0.99" in kept[0].reasoning and "seen in 9 images" in kept[0].reasoning  # type: ignore[attr-defined]

    # A transaction that fails after the batch stage took its images in: nothing of it stays.
    real_add_many = result_module.outbox.add_many

    async def failing(*args: object, **kwargs: object) -> None:
        raise RuntimeError("the outbox write failed")

    monkeypatch.setattr(result_module.outbox, "add_many", failing)
    with pytest.raises(RuntimeError, match="outbox write failed"):
        await camera.store([[Detection("person", 0.995, (0.1, 0.2, 0.3, 0.9)), Detection("truck", 0.9, (0, 0, 1, 1))]])
    monkeypatch.setattr(result_module.outbox, "add_many", real_add_many)
    # (its job stays leased to the failed attempt, as after any failed store)
    await camera.store(_group(4))
    kept, full = await _judgements(worker.result.batches, pool)
    assert kept == full
    assert "truck" not in kept[0].summary and "0.995" not in kept[0].reasoning  # type: ignore[attr-defined]


async def test_a_continued_batch_is_judged_with_the_whole_event(porch) -> None:  # type: ignore[no-untyped-def]
    camera, worker, pool, _ = porch
    await camera.store(_group(0))
    with RoundTrips() as trips:
        for k in range(1, 40):  # 80 images, half a second apart: the 30 s window runs out, the activity goes on
            await camera.store(_group(k))
    # The continuing batch starts from the summary of the one it continues (stop 29).
    assert not [text for text in trips.by_statement if CHAIN_READ in text]
    assert await pool.fetchval("SELECT count(*) FROM batches") >= 2
    assert await pool.fetchval("SELECT count(*) FROM events") == 1
    kept, full = await _judgements(worker.result.batches, pool)
    assert kept == full
    assert "seen in 80 images" in kept[0].reasoning  # type: ignore[attr-defined]


async def _last_state(pool: object) -> CameraState:
    payload = await pool.fetchval(  # type: ignore[attr-defined]
        "SELECT payload FROM outbox WHERE topic = 'hsi/cameras/porch/state' ORDER BY id DESC LIMIT 1"
    )
    return CameraState.model_validate_json(payload)


async def test_the_camera_state_names_the_latest_event_read_with_the_lock(porch) -> None:  # type: ignore[no-untyped-def]
    """The lock's statement reads the camera's latest event too (no statement of its own on the
    common path), and an event the same transaction makes is named: here the one the closing of
    the camera's previous (low-risk) batch opens as the next image arrives."""
    camera, _, pool, (*_, clock) = porch
    dog = [[Detection("dog", 0.8, (0.1, 0.6, 0.3, 0.9))]]
    await camera.store(dog)
    assert await pool.fetchval("SELECT count(*) FROM events") == 0
    assert (await _last_state(pool)).last_event_id is None
    clock.advance(31)  # past the 30 s window: the next image closes the batch, which opens its event
    await camera.store(dog)
    event_id = await pool.fetchval("SELECT id FROM events")
    assert event_id is not None
    assert (await _last_state(pool)).last_event_id == event_id
    with RoundTrips() as trips:
        await camera.store(dog)  # the common path: joins the new batch, no event change
    assert not [t for t in trips.by_statement if t.startswith("SELECT id, started_at FROM events")]
    assert (await _last_state(pool)).last_event_id == event_id
