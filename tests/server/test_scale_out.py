"""Scale-out: two worker processes and an API process on one PostgreSQL and one broker share
the work with every job done exactly once (jobs are claimed with SKIP LOCKED)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import asyncpg
import pytest

from bench.scale_out import cluster

IMAGES = 40
#: bench.scale_out drops bus.jpg (4 people) and zidane.jpg (2) in turn.
PEOPLE = (4, 2)


def _drop_index(name: str) -> int:
    """``cam1/burst_MDAlarm_20261124-000005.jpg`` → 5 (the drop order encoded as HHMMSS)."""
    stamp = name.rsplit("-", 1)[-1].removesuffix(".jpg")
    return int(stamp[:2]) * 3600 + int(stamp[2:4]) * 60 + int(stamp[4:])


@pytest.mark.slow
async def test_two_worker_processes_do_every_job_exactly_once(
    tmp_path: Path, database_url: str, mosquitto_url: str
) -> None:
    # Batches close on idle time as the workers see it. On a loaded machine, one camera's images can
    # be processed seconds apart, so the idle limit must be well above that. Otherwise a burst is split
    # into several events, and this test is about exactly-once, not timing.
    quick_batches = {"HSI_BATCH_IDLE_S": "4", "HSI_BATCH_WINDOW_S": "120"}
    async with cluster(tmp_path, database_url, mosquitto_url, workers=2, extra_env=quick_batches) as c:
        pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
        try:
            names = c.drop(IMAGES, "burst")
            await c.wait_done(pool, IMAGES, timeout=240)
            deadline = time.monotonic() + 60
            while await pool.fetchval("SELECT count(*) FROM batches WHERE closed_at IS NULL") > 0:
                assert time.monotonic() < deadline, "activity batches did not close"
                await asyncio.sleep(0.2)
            jobs = await pool.fetch(
                "SELECT j.state, j.attempts, j.worker_id, i.original_name, i.id AS image_id"
                " FROM jobs j JOIN images i ON i.id = j.image_id"
            )
            detections = await pool.fetch("SELECT image_id, count(*) AS n FROM detections GROUP BY image_id")
            events = await pool.fetch("SELECT id, camera_id FROM events")
        finally:
            await pool.close()
    assert sorted(j["original_name"] for j in jobs) == sorted(names)
    assert {j["state"] for j in jobs} == {"done"}
    assert all(j["attempts"] == 1 for j in jobs), "a job was claimed twice"
    by_worker: dict[str, int] = {}
    for job in jobs:
        by_worker[job["worker_id"]] = by_worker.get(job["worker_id"], 0) + 1
    assert len(by_worker) == 2, f"both worker processes should take jobs: {by_worker}"
    # Each image's detections were stored exactly once.
    expected = {j["image_id"]: PEOPLE[_drop_index(j["original_name"]) % 2] for j in jobs}
    assert {r["image_id"]: r["n"] for r in detections} == expected
    # Each camera's burst is one activity batch and one event, whichever worker saw its images.
    assert sorted(e["camera_id"] for e in events) == ["cam0", "cam1", "cam2", "cam3"]
