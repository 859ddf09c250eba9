"""A camera's retained state (``hsi/cameras/<id>/state`` and its object counts) is queued when it
changes, not again with every picture of the same scene (stop 40: a camera sending a picture a
second queued three identical retained messages a second, and the outbox insert that carried
them). What the broker retains stays what the server computes: after a camera is patched over
REST and after the republish that follows an MQTT (re)connection, whose states are the
database's (quiet), the next picture queues the camera's live state again, however unchanged.

Real PostgreSQL and Mosquitto; the result stage as the server wires it, or the server itself.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import asyncpg
import pytest

from bench.roundtrips import RoundTrips
from bench.store_stage import store_pipeline
from inference_server import demo_assets
from inference_server.config import Settings
from inference_server.detection.ultralytics_backend import UltralyticsDetector
from inference_server.domain import Detection
from inference_server.ingest.ingestor import Ingestor
from inference_server.jobs.queue import JobQueue
from inference_server.pipeline.decode import Picture, decode_picture
from inference_server.pipeline.detect import DetectWorker
from inference_server.schemas import CameraCreate
from inference_server.server import Server, open_database
from inference_server.store import cameras, outbox
from tests.server.ingest.conftest import with_comment
from tests.support.mosquitto import RestartableMosquitto
from tests.support.mqtt import Subscriber
from tests.support.waiting import wait_until

from ..conftest import FakeClock, auth_headers, running

NOON = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
PERSON = Detection("person", 0.62, (0.1, 0.2, 0.3, 0.9))
CAR = Detection("car", 0.7, (0.6, 0.6, 0.9, 0.9))
STATE = "hsi/cameras/porch/state"


class _Porch:
    """One camera's pictures stored one at a time, each with the detections a test gives it."""

    def __init__(self, worker: DetectWorker, ingestor: Ingestor, queue: JobQueue, pool: asyncpg.Pool) -> None:
        self.worker, self.ingestor, self.queue, self.pool = worker, ingestor, queue, pool
        self.picture: Picture = decode_picture(demo_assets.image("bus.jpg"), 640)
        self.raw = demo_assets.image("bus.jpg").read_bytes()
        self.sent = 0

    async def store(self, found: Sequence[Detection]) -> list[str]:
        """The picture's result stored: the topics it queued, in order."""
        n = self.sent
        self.sent += 1
        await self.ingestor.ingest_bytes(
            "porch", with_comment(self.raw, f"state {n}"), captured_at=NOON + timedelta(seconds=n), original_name=None
        )
        [job] = await self.queue.claim(1)
        before = await self.pool.fetchval("SELECT coalesce(max(id), 0) FROM outbox")
        assert await self.worker.result.finish_many([(job, self.picture, found)]) == []
        rows = await self.pool.fetch("SELECT topic FROM outbox WHERE id > $1 ORDER BY id", before)
        return [r["topic"] for r in rows]


@asynccontextmanager
async def _porch(settings: Settings, detector: UltralyticsDetector) -> AsyncIterator[_Porch]:
    pool, _ = await open_database(settings)
    worker, ingestor, queue = await store_pipeline(settings, pool, detector, ["porch"], clock=FakeClock(NOON))
    try:
        yield _Porch(worker, ingestor, queue, pool)
    finally:
        worker._infer_pool.shutdown()
        worker._decode_pool.shutdown()
        await pool.close()


@pytest.fixture
async def porch(make_settings: Callable[..., Settings], pose_detector: UltralyticsDetector) -> AsyncIterator[_Porch]:
    # No fast path, a long batch, snapshots at most hourly for the same objects: people and cars
    # at noon open no event, so only the camera's state and its snapshot on a change are queued.
    settings = make_settings(
        fast_path={}, batch_window_s=300, batch_idle_s=120, tamper_enabled=False, snapshot_publish_interval_s=3600
    )
    async with _porch(settings, pose_detector) as camera:
        yield camera


async def test_the_same_scene_again_queues_no_camera_state_and_no_outbox_statement(porch: _Porch) -> None:
    first = await porch.store([PERSON])
    assert first[:2] == [STATE, "hsi/cameras/porch/objects/person"], first
    await porch.store([PERSON])  # seen again: the rules' live risk of someone still there

    with RoundTrips() as trips:
        again = await porch.store([PERSON])
    # The broker retains the last picture's state, which this one's is: nothing to queue, and
    # with the snapshot not due either, no outbox insert at all (it was a statement a picture).
    assert again == []
    assert not any("INSERT INTO outbox" in text for text in trips.by_statement), trips.by_statement

    # Another scene: its state (and the snapshot of other objects); then back to the first one.
    changed = await porch.store([PERSON, CAR])
    assert changed[:3] == [STATE, "hsi/cameras/porch/objects/car", "hsi/cameras/porch/objects/person"], changed
    back = await porch.store([PERSON])
    assert back[:2] == [STATE, "hsi/cameras/porch/objects/person"], back
    assert await porch.store([PERSON]) == []

    # Every state queued differs from the one queued before it, and the last is the broker's.
    rows = await porch.pool.fetch("SELECT payload FROM outbox WHERE topic = $1 ORDER BY id", STATE)
    payloads = [json.loads(r["payload"]) for r in rows]
    assert len(payloads) >= 3
    assert all(a != b for a, b in itertools.pairwise(payloads))
    assert payloads[-1]["objects"] == {"person": 1}


async def test_while_an_event_is_open_its_camera_state_is_queued_on_a_change_too(
    make_settings: Callable[..., Settings], pose_detector: UltralyticsDetector
) -> None:
    """A confident person opens an event at once; the same scene again rescores it with every
    picture (an ``update`` when the judgement changed), and the camera's state goes out only when
    it differs from the last one queued."""
    settings = make_settings(
        fast_path={"person": 0.9},
        batch_window_s=300,
        batch_idle_s=120,
        tamper_enabled=False,
        snapshot_publish_interval_s=3600,
    )
    confident = Detection("person", 0.95, (0.1, 0.2, 0.3, 0.9))
    async with _porch(settings, pose_detector) as camera:
        queued = [await camera.store([confident]) for _ in range(6)]
        assert await camera.pool.fetchval("SELECT count(*) FROM events") == 1
        rows = await camera.pool.fetch("SELECT payload FROM outbox WHERE topic = $1 ORDER BY id", STATE)
    states = [json.loads(r["payload"]) for r in rows]
    assert states[0]["last_event_id"] is not None  # the first picture's, with its event
    assert all(a != b for a, b in itertools.pairwise(states)), states
    assert [STATE in topics for topics in queued].count(False) >= 3, queued


async def test_a_store_that_rolls_back_leaves_its_state_to_the_next_one(
    porch: _Porch, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batch remembers a state only with the transaction that queued it: a store that failed
    after queueing it (the rows rolled back) makes the next store of the same scene queue it."""
    assert (await porch.store([PERSON]))[0] == STATE
    assert await porch.store([CAR]) != []  # the batch now remembers the car's state

    real_add_many = outbox.add_many

    async def add_then_fail(*args: object, **kwargs: object) -> list[outbox.OutboxMessage]:
        await real_add_many(*args, **kwargs)  # type: ignore[arg-type]
        raise asyncpg.PostgresError("failing after the outbox insert (fake)")

    monkeypatch.setattr(outbox, "add_many", add_then_fail)
    await porch.ingestor.ingest_bytes(
        "porch", with_comment(porch.raw, "rolled back"), captured_at=NOON + timedelta(seconds=30), original_name=None
    )
    [job] = await porch.queue.claim(1)
    with pytest.raises(asyncpg.PostgresError):
        await porch.worker.result.finish_many([(job, porch.picture, [PERSON])])
    monkeypatch.setattr(outbox, "add_many", real_add_many)
    assert (await porch.store([PERSON]))[0] == STATE


def _last_noon() -> datetime:
    now = datetime.now(UTC)
    noon = now.replace(hour=12, minute=0, second=0, microsecond=0)
    return noon if noon <= now else noon - timedelta(days=1)


async def _picture(server: Server, n: int) -> None:
    """bus.jpg again (four people), captured around the last noon, stored."""
    assert server.ingestor is not None
    raw = with_comment(demo_assets.image("bus.jpg").read_bytes(), f"scene {n}")
    result = await server.ingestor.ingest_bytes(
        "porch", raw, captured_at=_last_noon() + timedelta(seconds=n), original_name=None
    )
    await wait_until(lambda: server.pool.fetchval("SELECT state = 'done' FROM jobs WHERE id = $1", result.job_id), 60)


async def _retained_state(url: str) -> dict[str, Any]:
    """What a subscriber arriving now finds retained on the porch's state."""
    subscriber = Subscriber(url, STATE)
    try:
        await subscriber.ready()
        await subscriber.caught_up()
        [state] = [json.loads(m.payload) for m in subscriber.drain() if m.retain and m.payload]
        return state
    finally:
        subscriber.close()


async def _states_queued(server: Server) -> int:
    return int(await server.pool.fetchval("SELECT count(*) FROM outbox WHERE topic = $1", STATE))


async def test_after_a_patch_and_a_broker_restart_the_next_picture_queues_the_live_state_again(
    forgetful_broker: RestartableMosquitto, make_settings: Callable[..., Settings], pose_detector: UltralyticsDetector
) -> None:
    broker = forgetful_broker
    settings = make_settings(mqtt_url=broker.url, fast_path={}, batch_window_s=300, batch_idle_s=120)
    async with running(settings, pose_detector) as server:
        await cameras.create(server.pool, CameraCreate(id="porch", name="Porch"))
        await _picture(server, 0)
        await _picture(server, 1)  # seen again: the rules' live risk of people still there
        await wait_until(lambda: _none_pending(server), 30)
        live = await _retained_state(broker.url)
        assert live["objects"] == {"person": 4} and int(live["risk_score"]) > 0, live
        queued = await _states_queued(server)
        await _picture(server, 2)
        assert await _states_queued(server) == queued  # the same scene: nothing queued
        assert await server.pool.fetchval("SELECT count(*) FROM events") == 0

        # A rename over REST queues the camera's state as the database has it: quiet.
        headers = await auth_headers(server)
        async with aiohttp.ClientSession(base_url=server.api_url, headers=headers) as http:
            resp = await http.patch("/api/v1/cameras/porch", json={"name": "Front porch"})
            assert resp.status == 200, await resp.text()
        await wait_until(lambda: _none_pending(server), 30)
        assert (await _retained_state(broker.url))["risk_score"] == 0
        await _picture(server, 3)
        await wait_until(lambda: _none_pending(server), 30)
        assert await _retained_state(broker.url) == live

        # A broker that lost its retained messages gets the database's states again...
        broker.stop()
        broker.start()
        await wait_until(lambda: _retained_risk_is(broker.url, 0), 30)
        # ...and the next picture of the same scene its live state.
        await _picture(server, 4)
        await wait_until(lambda: _none_pending(server), 30)
        assert await _retained_state(broker.url) == live
        assert await server.pool.fetchval("SELECT count(*) FROM events") == 0


async def _none_pending(server: Server) -> bool:
    return not await outbox.pending_count(server.pool)


async def _retained_risk_is(url: str, risk: int) -> bool:
    try:
        return (await _retained_state(url))["risk_score"] == risk
    except ValueError:  # nothing retained yet
        return False
