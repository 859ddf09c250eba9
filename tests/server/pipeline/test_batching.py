"""Batching. In the detect worker (dynamic batching): N jobs in, N results out, each to its own
job. In the batch stage (activity batches, issue 16.5): activity that goes on past a batch
window is one ongoing event that extends, up to ``event_max_s``; idleness ends it."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from PIL import Image

from inference_server import demo_assets
from inference_server.config import Settings
from inference_server.detection.detector import RgbPixels
from inference_server.detection.ultralytics_backend import UltralyticsDetector
from inference_server.domain import Detection
from inference_server.schemas import CameraCreate, HouseholdContext
from inference_server.server import Server
from inference_server.store import cameras, context
from tests.support.waiting import wait_until

from ..conftest import FakeClock, enqueue_stored, running

GOOD = ("bus.jpg", "zidane.jpg", "astronaut.png")


class RecordingDetector:
    """The real detector, recording the size of every batch it is handed (a spy, not a fake)."""

    name = "recording"

    def __init__(self, inner: UltralyticsDetector) -> None:
        self.inner = inner
        self.batches: list[int] = []
        self.releases = 0
        self._lock = threading.Lock()

    def prepare(self, image: Image.Image | RgbPixels) -> Any:
        return self.inner.prepare(image)

    def detect(self, images: Sequence[Any]) -> list[list[Detection]]:
        with self._lock:
            self.batches.append(len(images))
        return self.inner.detect(images)

    def warmup(self) -> None:
        return None

    def release_idle(self) -> None:
        self.releases += 1
        self.inner.release_idle()

    def describe(self) -> str:
        return "recording " + self.inner.describe()


def _corrupt_jpeg() -> bytes:
    data = bytearray(demo_assets.image("bus.jpg").read_bytes())
    dht = data.index(b"\xff\xc4")
    data[dht + 5 : dht + 21] = b"\xff" * 16  # passes the ingest checks, fails to decode in the worker
    return bytes(data)


def _jpeg(name: str) -> bytes:
    path = demo_assets.image(name)
    if path.suffix == ".jpg":
        return path.read_bytes()
    import io

    buf = io.BytesIO()
    with Image.open(path) as img:
        img.convert("RGB").save(buf, format="JPEG", quality=90)
    return buf.getvalue()


async def test_jobs_arriving_within_the_wait_share_one_inference_and_keep_their_own_results(
    make_settings: Callable[..., Settings], pose_detector: UltralyticsDetector
) -> None:
    spy = RecordingDetector(pose_detector)
    settings = make_settings(detector_batch_size=8, detector_batch_wait_ms=1000, fast_path={})
    async with running(settings, spy) as server:
        ingestor = server.ingestor
        assert ingestor is not None
        for i in range(len(GOOD)):
            await cameras.create(server.pool, CameraCreate(id=f"cam{i}", name=f"Camera {i}"))
        job_of: dict[str, int] = {}
        for i, name in enumerate(GOOD):
            result = await ingestor.ingest_bytes(f"cam{i}", _jpeg(name), captured_at=None, original_name=f"{name}")
            assert result.job_id is not None
            job_of[name] = result.job_id
        await wait_until(lambda: server.pool.fetchval("SELECT count(*) = 3 FROM jobs WHERE state = 'done'"), timeout=60)
        # One claim, topped up while the other two arrived: one inference for all three.
        assert spy.batches == [3]
        for name, job_id in job_of.items():
            stored = await server.pool.fetch(
                "SELECT d.label, d.confidence FROM detections d JOIN jobs j ON j.image_id = d.image_id"
                " WHERE j.id = $1 ORDER BY d.confidence DESC",
                job_id,
            )
            with Image.open(demo_assets.image(name)) as img:
                alone = pose_detector.detect([img.convert("RGB")])[0]
            assert [r["label"] for r in stored] == [d.label for d in alone], name
            assert all(abs(r["confidence"] - d.confidence) < 0.02 for r, d in zip(stored, alone, strict=True))


async def test_a_corrupt_image_in_a_batch_is_dead_lettered_and_the_others_complete(
    make_settings: Callable[..., Settings], pose_detector: UltralyticsDetector
) -> None:
    spy = RecordingDetector(pose_detector)
    settings = make_settings(detector_batch_size=8, detector_batch_wait_ms=1000, file_stable_s=0.05)
    async with running(settings, spy) as server:
        folder = settings.cameras_path / "porch"
        folder.mkdir(parents=True, exist_ok=True)
        for n, name in enumerate(("bus.jpg", "zidane.jpg")):
            tmp = folder / f".part{n}"
            tmp.write_bytes(_jpeg(name))
            tmp.rename(folder / f"MDAlarm_20261124-02000{n}.jpg")
        # The door decodes every file, so a corrupt one never becomes a job there: this one went
        # bad in the image store after it was accepted (a failing disk); only the worker finds it.
        stored = settings.images_path / "porch" / "damaged" / "MDAlarm_20261124-020002.jpg"
        await enqueue_stored(server.pool, "porch", stored, _corrupt_jpeg())
        await wait_until(
            lambda: server.pool.fetchval("SELECT count(*) = 3 FROM jobs WHERE state IN ('done', 'dead')"),
            timeout=60,
        )
        states = await server.pool.fetch(
            "SELECT i.original_name, j.state, j.last_error FROM jobs j JOIN images i ON i.id = j.image_id"
            " ORDER BY i.original_name"
        )
        outcome = {r["original_name"].rsplit("/", 1)[-1]: (r["state"], r["last_error"]) for r in states}
        assert outcome["MDAlarm_20261124-020000.jpg"][0] == "done"
        assert outcome["MDAlarm_20261124-020001.jpg"][0] == "done"
        state, error = outcome["MDAlarm_20261124-020002.jpg"]
        assert state == "dead" and error.startswith("corrupt_image")
        # The two good pictures went through the model together, without the broken one.
        assert spy.batches == [2]
        people = await server.pool.fetchval("SELECT count(*) FROM detections WHERE label = 'person'")
        assert people == 4 + 2


# --- activity batches: one ongoing event per continuing activity ---------------------------------

#: A resident in the early evening, the family at home: zidane.jpg's people (0.89, 0.84) are under
#: the 0.90 fast path, so events open at the close of the first batch window, not at once.
FAMILY_HOME = HouseholdContext(alarm_state="armed_home", people_home=["anna", "ben", "carl"], sun="above_horizon")
CAPTURED = datetime(2026, 11, 24, 17, 0, tzinfo=UTC)


def _frame(n: int) -> bytes:
    """zidane.jpg with a JPEG comment naming the frame: the same pixels (so the same detections),
    different bytes (so not a duplicate upload)."""
    data = demo_assets.image("zidane.jpg").read_bytes()
    note = f"frame {n}".encode()
    return data[:2] + b"\xff\xfe" + (len(note) + 2).to_bytes(2, "big") + note + data[2:]


class Porch:
    """A camera seen at given seconds after a start: the server's clock (batch timing) and the
    images' capture time move together."""

    def __init__(self, server: Server, clock: FakeClock) -> None:
        self.server = server
        self.clock = clock
        self.start = clock.now()
        self.frames = 0

    async def seen_at(self, seconds: Iterable[float]) -> None:
        ingestor = self.server.ingestor
        assert ingestor is not None
        for t in seconds:
            self.clock.current = self.start + timedelta(seconds=t)
            self.frames += 1
            result = await ingestor.ingest_bytes(
                "porch",
                _frame(self.frames),
                captured_at=CAPTURED + timedelta(seconds=t),
                original_name=f"porch/frame{self.frames}.jpg",
            )
            assert result.status == "queued" and result.job_id is not None
            await wait_until(
                lambda job=result.job_id: self.server.pool.fetchval(
                    "SELECT state = 'done' FROM jobs WHERE id = $1", job
                ),
                timeout=60,
            )

    async def quiet_until(self, t: float) -> None:
        """No detection until ``t``; the batch closer runs at that moment."""
        self.clock.current = self.start + timedelta(seconds=t)
        await self.server.batches.close_due()

    async def published(self) -> list[tuple[str, uuid.UUID]]:
        """(type, event id) of every hsi/events message, in order."""
        rows = await self.server.pool.fetch(
            "SELECT payload FROM outbox WHERE topic = $1 ORDER BY id", self.server.topics.events
        )
        return [(m["type"], uuid.UUID(m["id"])) for m in (json.loads(r["payload"]) for r in rows)]

    async def events(self) -> list[dict[str, Any]]:
        rows = await self.server.pool.fetch(
            "SELECT id, started_at, ended_at, risk_factors FROM events WHERE camera_id = 'porch' ORDER BY started_at"
        )
        return [dict(r) for r in rows]


def _lifecycle(published: list[tuple[str, uuid.UUID]], event_id: uuid.UUID) -> list[str]:
    """The event's own messages, ``update``s folded: the shape of its life."""
    kinds = [kind for kind, eid in published if eid == event_id]
    return [k for i, k in enumerate(kinds) if k != "update" or (i and kinds[i - 1] != "update")]


async def _porch(server: Server) -> None:
    await cameras.create(server.pool, CameraCreate(id="porch", name="Porch"))
    await context.put(server.pool, FAMILY_HOME, "test")


async def test_a_resident_milling_about_for_five_minutes_is_one_event_that_ends_when_idle(
    make_settings: Callable[..., Settings], pose_detector: UltralyticsDetector
) -> None:
    """Issue 16.5: seen every 20 s for 5 minutes with the default 90 s window and 30 s idle time,
    one event (was: a new event, and an end, every window); ``new`` once, no ``end`` while the
    activity goes on, one ``end`` when it goes idle, and no repeat visit counted against itself."""
    clock = FakeClock()
    settings = make_settings(batch_idle_s=30, batch_window_s=90)
    async with running(settings, pose_detector, clock) as server:
        await _porch(server)
        porch = Porch(server, clock)
        await porch.seen_at(range(0, 301, 20))
        await porch.quiet_until(320)  # 20 s after the last detection: not idle yet

        events = await porch.events()
        assert len(events) == 1 and events[0]["ended_at"] is None
        event_id = events[0]["id"]
        published = await porch.published()
        assert {eid for _, eid in published} == {event_id}
        assert [k for k, _ in published if k != "update"] == ["new"]
        # The activity ran through four batch windows, one chain carrying the event.
        chain = await server.pool.fetch("SELECT event_id, closed_at FROM batches ORDER BY opened_at")
        assert len(chain) == 4 and {r["event_id"] for r in chain} == {event_id}
        assert [r["closed_at"] is None for r in chain] == [False, False, False, True]

        await porch.quiet_until(331)  # 31 s without a detection: idle
        events = await porch.events()
        published = await porch.published()
        assert await server.pool.fetchval("SELECT count(*) FROM batches WHERE closed_at IS NULL") == 0
    assert len(events) == 1
    assert [k for k, _ in published if k != "update"] == ["new", "end"]
    assert published[-1] == ("end", event_id)
    assert events[0]["started_at"] == CAPTURED and events[0]["ended_at"] == CAPTURED + timedelta(seconds=300)
    # Its own earlier windows are not other visits.
    assert "repeat_visit" not in {f["name"] for f in events[0]["risk_factors"]}


async def test_activity_past_event_max_s_starts_a_second_event(
    make_settings: Callable[..., Settings], pose_detector: UltralyticsDetector
) -> None:
    """An event is bounded: the chain that reaches ``event_max_s`` (200 s here) ends its event,
    and the activity that goes on is a second event."""
    clock = FakeClock()
    settings = make_settings(batch_idle_s=30, batch_window_s=90, event_max_s=200)
    async with running(settings, pose_detector, clock) as server:
        await _porch(server)
        porch = Porch(server, clock)
        await porch.seen_at(range(0, 301, 20))
        await porch.quiet_until(331)
        events = await porch.events()
        published = await porch.published()
    assert len(events) == 2
    first, second = events
    # The first event ended at the last frame before its 200 s were up; the second began at the next.
    assert first["started_at"] == CAPTURED and first["ended_at"] == CAPTURED + timedelta(seconds=180)
    assert second["started_at"] == CAPTURED + timedelta(seconds=200)
    assert second["ended_at"] == CAPTURED + timedelta(seconds=300)
    assert _lifecycle(published, first["id"]) == ["new", "end"]
    assert _lifecycle(published, second["id"])[0] == "new" and _lifecycle(published, second["id"])[-1] == "end"
    assert [k for k, _ in published if k != "update"] == ["new", "end", "new", "end"]
    # The second event counts the first as one earlier visit, not its two batch windows.
    assert "repeat_visit" not in {f["name"] for f in second["risk_factors"]}


async def test_an_idle_gap_ends_the_event_and_the_next_activity_is_a_new_event(
    make_settings: Callable[..., Settings], pose_detector: UltralyticsDetector
) -> None:
    """Seen for two minutes (past a 90 s window: one event), then nobody for a minute (more than
    the 30 s idle time: the event ends), then seen again: a second event."""
    clock = FakeClock()
    settings = make_settings(batch_idle_s=30, batch_window_s=90)
    async with running(settings, pose_detector, clock) as server:
        await _porch(server)
        porch = Porch(server, clock)
        await porch.seen_at(range(0, 121, 20))
        await porch.quiet_until(151)
        first_only = await porch.events()
        assert len(first_only) == 1 and first_only[0]["ended_at"] == CAPTURED + timedelta(seconds=120)
        await porch.seen_at((180, 200, 220))
        await porch.quiet_until(251)
        events = await porch.events()
        published = await porch.published()
    assert len(events) == 2
    assert events[1]["started_at"] == CAPTURED + timedelta(seconds=180)
    assert events[1]["ended_at"] == CAPTURED + timedelta(seconds=220)
    assert [(k, eid) for k, eid in published if k != "update"] == [
        ("new", events[0]["id"]),
        ("end", events[0]["id"]),
        ("new", events[1]["id"]),
        ("end", events[1]["id"]),
    ]


async def test_a_continuing_event_survives_a_restart(
    make_settings: Callable[..., Settings], pose_detector: UltralyticsDetector
) -> None:
    """The chain is rows in PostgreSQL: a restart between two windows of one activity continues
    the same event."""
    clock = FakeClock()
    settings = make_settings(batch_idle_s=30, batch_window_s=90)
    async with running(settings, pose_detector, clock) as server:
        await _porch(server)
        porch = Porch(server, clock)
        await porch.seen_at(range(0, 101, 20))  # the first window closed at 90: the event is open
        start = porch.start
    async with running(settings, pose_detector, clock) as server:
        porch = Porch(server, clock)
        porch.start, porch.frames = start, 100
        await porch.seen_at((120, 140))
        await porch.quiet_until(171)
        events = await porch.events()
        published = await porch.published()
    assert len(events) == 1
    assert events[0]["ended_at"] == CAPTURED + timedelta(seconds=140)
    assert [k for k, _ in published if k != "update"] == ["new", "end"]


class _ReleaseFails(RecordingDetector):
    def release_idle(self) -> None:
        self.releases += 1
        raise RuntimeError("made to fail by the test")


@pytest.mark.parametrize("fails", [False, True], ids=["gives it back", "cannot give it back"])
async def test_the_detector_gives_its_memory_back_once_each_time_the_queue_stays_dry(
    make_settings: Callable[..., Settings],
    pose_detector: UltralyticsDetector,
    caplog: pytest.LogCaptureFixture,
    fails: bool,
) -> None:
    """Once the queue has been dry for ``buffers_idle_s`` the worker lets go of what it keeps for
    the next batch, the detector's runtime memory included, once (not at every poll while idle),
    and again after the next picture and the next dry spell. A detector that fails to is logged
    and goes on detecting."""
    spy = _ReleaseFails(pose_detector) if fails else RecordingDetector(pose_detector)
    settings = make_settings(buffers_idle_s=0.3, job_poll_interval_s=0.1, fast_path={})
    async with running(settings, spy) as server:
        ingestor = server.ingestor
        assert ingestor is not None
        await cameras.create(server.pool, CameraCreate(id="cam", name="Camera"))
        # The queue has been dry since the start: that spell's release first (whether it came
        # before the first picture depended on how fast the server started: CI of 33a3dcd).
        await wait_until(lambda: spy.releases >= 1, timeout=10, what="the start's release")
        await asyncio.sleep(1.0)
        start = spy.releases
        assert start == 1
        for done, name in ((1, "bus.jpg"), (2, "zidane.jpg")):
            await ingestor.ingest_bytes("cam", _jpeg(name), captured_at=None, original_name=name)
            await wait_until(
                lambda n=done: server.pool.fetchval("SELECT count(*) = $1 FROM jobs WHERE state = 'done'", n),
                timeout=60,
            )
            await wait_until(lambda n=done: spy.releases >= start + n, timeout=10, what=f"release {done}")
            await asyncio.sleep(1.0)  # ten polls of a dry queue
            assert spy.releases == start + done
        assert server.failure is None
    failures = [r for r in caplog.records if r.getMessage() == "the detector's idle memory could not be given back"]
    assert len(failures) == (3 if fails else 0) and all(r.exc_info for r in failures)
