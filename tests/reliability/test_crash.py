"""SIGKILL the real server (a subprocess) again and again while a few hundred real camera images
arrive, and restart it each time. Kill moments are chosen by watching the database so that each
phase is hit: a job claimed (claim and inference), the result transaction open (the detections
table held by this test, so the worker's transaction is provably in flight), outbox rows pending
(the relay publishing). The order of phases and the delays are random with a printed seed
(``HSI_RELIABILITY_SEED`` replays a run).

At the end: every accepted image has exactly one job in a terminal state, no detection or event
is duplicated, every image's people reached an event, and every event reached a persistent-session
QoS 1 subscriber with its id.

Size: 300 images (bus.jpg and zidane.jpg from the ultralytics wheel, made unique by trailing
bytes), 3 cameras, 6 kills, yolo11n-pose at imgsz 320 (the fastest real model here; 320 keeps
the test near two minutes on two CPU cores and still finds the people in both images).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg
import pytest

from inference_server import demo_assets
from tests.support.mqtt import PersistentSubscriber
from tests.support.waiting import wait_until

from .conftest import ServerProcess, put_file, server_env, unique_jpeg

IMAGES_PER_ROUND = 50
PHASES = ["claim", "inference", "transaction", "publish", "claim", "publish"]
CAMERAS = ["front", "garden", "hall"]

pytestmark = pytest.mark.slow


async def _drop_round(cameras: Path, first: int, count: int, sources: list[Path]) -> None:
    """``count`` images arriving over about a second, spread over the cameras."""
    for n in range(first, first + count):
        camera = CAMERAS[n % len(CAMERAS)]
        # Distinct capture times in the camera's file name (Foscam style), one second apart.
        name = f"MDAlarm_20261124-{(n // 3600) % 24:02d}{(n // 60) % 60:02d}{n % 60:02d}.jpg"
        put_file(cameras / camera / name, unique_jpeg(sources[n % len(sources)], n))
        await asyncio.sleep(0.02)


async def _kill_during(
    phase: str, rng: random.Random, db: asyncpg.Connection, server: ServerProcess
) -> Callable[[], Awaitable[None]]:
    """Wait for ``phase`` to be under way, SIGKILL the server; return what undoes the test's own hold."""

    async def nothing() -> None:
        return None

    assert server.proc is not None
    worker = f"%:{server.proc.pid}"  # rows left by the killed process do not count: this process's own
    if phase in ("claim", "inference"):
        await wait_until(
            lambda: db.fetchval("SELECT count(*) > 0 FROM jobs WHERE state = 'running' AND worker_id LIKE $1", worker),
            90,
            0.005,
        )
        if phase == "inference":
            await asyncio.sleep(rng.uniform(0.02, 0.3))
        server.kill()
        return nothing
    if phase == "transaction":
        hold = db.transaction()
        await hold.start()
        await db.execute("LOCK TABLE detections IN ACCESS EXCLUSIVE MODE")
        # A worker's result transaction now waits on this lock: that is the moment to kill.
        await wait_until(
            lambda: db.fetchval(
                "SELECT count(*) > 0 FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
                "WHERE c.relname = 'detections' AND NOT l.granted"
            ),
            90,
            0.01,
        )
        await asyncio.sleep(rng.uniform(0, 0.2))
        server.kill()
        rollback: Callable[[], Awaitable[None]] = hold.rollback
        return rollback
    assert phase == "publish"
    # Outbox rows written by this process (after one of its jobs is done), not yet acknowledged.
    first_done = await wait_until(
        lambda: db.fetchval("SELECT min(finished_at) FROM jobs WHERE state = 'done' AND worker_id LIKE $1", worker),
        90,
        0.005,
    )
    await wait_until(
        lambda: db.fetchval("SELECT count(*) > 0 FROM outbox WHERE sent_at IS NULL AND created_at >= $1", first_done),
        90,
        0.002,
    )
    await asyncio.sleep(rng.uniform(0, 0.05))
    server.kill()
    return nothing


async def test_sigkill_at_random_points_loses_and_duplicates_nothing(
    tmp_path: Path, database_url: str, mosquitto_url: str, server_process: list[ServerProcess]
) -> None:
    seed = int(os.environ.get("HSI_RELIABILITY_SEED", time.time_ns() % 1_000_000))
    print(f"test_crash seed={seed} (HSI_RELIABILITY_SEED={seed} replays the phase order and delays)")
    rng = random.Random(seed)
    phases = rng.sample(PHASES, len(PHASES))
    data = tmp_path / "data"
    cameras = data / "cameras"
    sources = [demo_assets.image("bus.jpg"), demo_assets.image("zidane.jpg")]
    server = ServerProcess(
        server_env(data, database_url, mosquitto_url, HSI_DETECTOR_IMGSZ="320"), tmp_path / "server.log"
    )
    server_process.append(server)
    subscriber = PersistentSubscriber(mosquitto_url, "hsi/events").wait_subscribed()
    db = await asyncpg.connect(database_url)
    total = IMAGES_PER_ROUND * len(phases)
    started = time.monotonic()
    try:
        server.start()
        await wait_until(lambda: db.fetchval("SELECT to_regclass('outbox') IS NOT NULL"), 90)
        for round_no, phase in enumerate(phases):
            arrivals = asyncio.create_task(_drop_round(cameras, round_no * IMAGES_PER_ROUND, IMAGES_PER_ROUND, sources))
            release = await _kill_during(phase, rng, db, server)
            print(f"round {round_no}: killed during {phase} at {time.monotonic() - started:.1f}s")
            await arrivals
            server.start()
            await release()

        # Everything settles: all images ingested, all jobs terminal, batches closed, outbox sent.
        async def settled() -> bool:
            row = await db.fetchrow(
                "SELECT (SELECT count(*) FROM images) AS images,"
                " (SELECT count(*) FROM jobs WHERE state IN ('queued', 'running')) AS open_jobs,"
                " (SELECT count(*) FROM batches WHERE closed_at IS NULL) AS open_batches,"
                " (SELECT count(*) FROM outbox WHERE sent_at IS NULL) AS unsent"
            )
            assert row is not None
            return bool(row["images"] == total and row["open_jobs"] == row["open_batches"] == row["unsent"] == 0)

        await wait_until(settled, timeout=180, interval=0.5)
        assert server.stop() == 0, server.tail()

        # Every accepted image: exactly one job, terminal; nothing left in the camera folders.
        assert sorted(p.name for p in cameras.rglob("*.jpg")) == []
        assert await db.fetchval("SELECT count(*) FROM quarantine") == 0
        jobs = await db.fetch(
            "SELECT i.id, count(j.id) AS n, min(j.state) AS state"
            " FROM images i LEFT JOIN jobs j ON j.image_id = i.id GROUP BY i.id"
        )
        assert len(jobs) == total
        assert [r["id"] for r in jobs if r["n"] != 1] == []
        assert [r["id"] for r in jobs if r["state"] not in ("done", "dead")] == []
        dead = [r["id"] for r in jobs if r["state"] == "dead"]
        # No detection stored twice (the result transaction is atomic and guarded by the lease).
        dup_detections = await db.fetch(
            "SELECT image_id FROM detections GROUP BY image_id, label, x1, y1, x2, y2 HAVING count(*) > 1"
        )
        assert dup_detections == []
        # Both pictures show people: every processed image has detections, is in exactly one batch,
        # and that batch belongs to exactly one event (a continuing activity's batches share theirs).
        lost = await db.fetch(
            "SELECT j.image_id FROM jobs j WHERE j.state = 'done' AND NOT EXISTS "
            "(SELECT 1 FROM batch_images b JOIN batches bt ON bt.id = b.batch_id JOIN events e ON e.id = bt.event_id"
            " WHERE b.image_id = j.image_id)"
        )
        assert lost == []
        assert await db.fetch("SELECT image_id FROM batch_images GROUP BY image_id HAVING count(*) > 1") == []
        assert await db.fetch("SELECT batch_id FROM events GROUP BY batch_id HAVING count(*) > 1") == []
        events = {str(r["id"]) for r in await db.fetch("SELECT id FROM events")}
        assert events

        # Every event reached the subscriber, with its id, at least once ("new" first).
        def received_new() -> set[str]:
            found = set()
            for topic, payload, _ in subscriber.messages():
                message = json.loads(payload)
                if topic == "hsi/events" and message["type"] == "new":
                    found.add(message["id"])
            return found

        await wait_until(lambda: events <= received_new(), timeout=30)
        assert received_new() == events
        print(
            f"test_crash: {total} images, {len(events)} events, {len(dead)} dead-lettered, "
            f"{server.starts} starts, {len(subscriber.messages())} event messages, "
            f"{time.monotonic() - started:.0f}s"
        )
    finally:
        await db.close()
        subscriber.close()
