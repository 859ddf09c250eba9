"""The durable job queue on real PostgreSQL: claims, leases, retries, dead letters."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import asyncpg
import pytest

from inference_server.buffers import Lent
from inference_server.jobs.queue import THROUGHPUT, ClaimedJob, JobQueue, LeaseLost, QueuePolicy, throughput
from inference_server.store import api_keys, images


async def _enqueue(pool: asyncpg.Pool, queue: JobQueue, n: int) -> list[int]:
    ids = []
    async with pool.acquire() as conn, conn.transaction():
        for i in range(n):
            image_id = await conn.fetchval(
                "INSERT INTO images (camera_id, sha256, path, source, media_type, width, height, size_bytes,"
                " captured_at, captured_at_source) VALUES ('cam', $1, '/x.jpg', 'folder', 'image/jpeg', 10, 10, 1,"
                " $2, 'mtime') RETURNING id",
                bytes([i]) * 32,
                datetime.now(UTC),
            )
            ids.append(await queue.enqueue(conn, image_id, "cam"))
    return ids


async def test_two_workers_never_claim_the_same_job(pool: asyncpg.Pool) -> None:
    a = JobQueue(pool, QueuePolicy(), "worker-a")
    b = JobQueue(pool, QueuePolicy(), "worker-b")
    ids = await _enqueue(pool, a, 10)
    got_a = await a.claim(6)
    got_b = await b.claim(6)
    assert len(got_a) == 6 and len(got_b) == 4
    assert sorted(j.id for j in got_a + got_b) == sorted(ids)
    assert await a.claim(5) == []


async def test_failed_job_backs_off_then_dead_letters_after_max_attempts(pool: asyncpg.Pool) -> None:
    queue = JobQueue(pool, QueuePolicy(max_attempts=2, backoff_base_s=30), "w")
    [job_id] = await _enqueue(pool, queue, 1)
    [job] = await queue.claim(1)
    assert await queue.fail(job, "boom", retryable=True) == "queued"
    delay = await pool.fetchval("SELECT extract(epoch FROM run_after - now()) FROM jobs WHERE id = $1", job_id)
    assert 25 < delay <= 33  # 30 s ± 10 % jitter: not claimable yet
    assert await queue.claim(1) == []
    await pool.execute("UPDATE jobs SET run_after = now() WHERE id = $1", job_id)
    [job] = await queue.claim(1)
    assert job.attempts == 2
    assert await queue.fail(job, "boom again", retryable=True) == "dead"
    row = await pool.fetchrow("SELECT state, last_error, attempts FROM jobs WHERE id = $1", job_id)
    assert dict(row) == {"state": "dead", "last_error": "boom again", "attempts": 2}


async def test_permanent_failure_dead_letters_at_once(pool: asyncpg.Pool) -> None:
    queue = JobQueue(pool, QueuePolicy(max_attempts=5), "w")
    await _enqueue(pool, queue, 1)
    [job] = await queue.claim(1)
    assert await queue.fail(job, "corrupt_image: broken", retryable=False) == "dead"
    assert (await queue.counts())["dead"] == 1


async def test_job_is_reclaimed_after_lease_expires_and_old_worker_cannot_complete(pool: asyncpg.Pool) -> None:
    crashed = JobQueue(pool, QueuePolicy(lease_s=0.2), "crashed")
    rescuer = JobQueue(pool, QueuePolicy(lease_s=30), "rescuer")
    [job_id] = await _enqueue(pool, crashed, 1)
    [stale] = await crashed.claim(1)
    assert await rescuer.reap_expired() == (0, 0)  # lease still valid
    await pool.execute("SELECT pg_sleep(0.3)")
    assert await rescuer.reap_expired() == (1, 0)
    [fresh] = await rescuer.claim(1)
    assert fresh.id == job_id and fresh.attempts == 2
    async with pool.acquire() as conn:
        with pytest.raises(LeaseLost):
            async with conn.transaction():
                await crashed.complete(conn, stale)
        async with conn.transaction():
            await rescuer.complete(conn, fresh)
    assert (await rescuer.counts())["done"] == 1


async def test_expired_lease_on_last_attempt_goes_to_dead_letters(pool: asyncpg.Pool) -> None:
    queue = JobQueue(pool, QueuePolicy(lease_s=0.1, max_attempts=1), "w")
    [job_id] = await _enqueue(pool, queue, 1)
    await queue.claim(1)
    await pool.execute("SELECT pg_sleep(0.2)")
    assert await queue.reap_expired() == (0, 1)
    error = await pool.fetchval("SELECT last_error FROM jobs WHERE id = $1", job_id)
    assert error == "lease expired on worker w"


def test_backoff_doubles_and_is_capped() -> None:
    policy = QueuePolicy(backoff_base_s=2, backoff_max_s=10)
    assert [round(policy.backoff(n) / d, 1) <= 1.1 for n, d in ((1, 2), (2, 4), (3, 8), (4, 10), (9, 10))] == [True] * 5
    assert 9 <= policy.backoff(9) <= 11
    assert 1.8 <= policy.backoff(1) <= 2.2


async def test_completing_several_jobs_leaves_out_the_one_whose_lease_was_lost(pool: asyncpg.Pool) -> None:
    crashed = JobQueue(pool, QueuePolicy(lease_s=0.2), "crashed")
    rescuer = JobQueue(pool, QueuePolicy(lease_s=30), "rescuer")
    await _enqueue(pool, crashed, 3)
    held = await crashed.claim(3)
    await pool.execute("UPDATE jobs SET lease_until = now() - interval '1 second' WHERE id = $1", held[1].id)
    assert await rescuer.reap_expired() == (1, 0)
    [taken] = await rescuer.claim(1)
    assert taken.id == held[1].id

    async with pool.acquire() as conn, conn.transaction():
        owned = await crashed.complete_many(conn, held)

    assert owned == {held[0].id, held[2].id}
    states = dict(await pool.fetch("SELECT id, state FROM jobs ORDER BY id"))
    assert states == {held[0].id: "done", held[1].id: "running", held[2].id: "done"}
    assert await pool.fetchval("SELECT worker_id FROM jobs WHERE id = $1", held[1].id) == "rescuer"


async def test_a_retry_wakes_its_worker_when_its_delay_runs_out_not_at_the_next_poll(pool: asyncpg.Pool) -> None:
    """The worker's poll is 10 s (stop 34; it was 1 s, a statement a second all day): a retry
    must not wait for it. Before, nothing woke the worker when the delay ran out."""
    queue = JobQueue(pool, QueuePolicy(backoff_base_s=0.3), "w")
    await queue.listen()
    try:
        await _enqueue(pool, queue, 1)
        [job] = await queue.claim(1)
        await queue.wait_for_work(0.5)  # the job's own announcement, consumed
        assert await queue.fail(job, "boom", retryable=True) == "queued"
        loop = asyncio.get_running_loop()
        started = loop.time()

        assert await queue.wait_for_work(5)

        assert 0.2 <= loop.time() - started < 2
        [again] = await queue.claim(1)
        assert again.id == job.id and again.attempts == 2
    finally:
        await queue.close()


async def test_reaped_leases_wake_the_workers_of_other_processes(pool: asyncpg.Pool) -> None:
    crashed = JobQueue(pool, QueuePolicy(lease_s=30), "crashed")
    reaper = JobQueue(pool, QueuePolicy(), "reaper")
    elsewhere = JobQueue(pool, QueuePolicy(), "elsewhere")
    await elsewhere.listen()
    try:
        await _enqueue(pool, crashed, 2)
        await crashed.claim(2)
        await elsewhere.wait_for_work(0.5)  # the jobs' announcement, consumed
        await pool.execute("UPDATE jobs SET lease_until = now() - interval '1 second'")

        assert await reaper.reap_expired() == (2, 0)

        assert await elsewhere.wait_for_work(2)
        assert len(await elsewhere.claim(5)) == 2
    finally:
        await elsewhere.close()


async def test_the_status_reads_the_jobs_only_through_indexes(pool: asyncpg.Pool) -> None:
    """The status (every 10 s) counted jobs by state with a GROUP BY and found the last minute's
    and the last 500 done jobs without an index: three reads of the whole table, which holds every
    image of the retention period. With sequential scans priced out, the planner must find an
    index for every part (migration 0010); before, it could not."""
    queue = JobQueue(pool, QueuePolicy(), "w")
    await _enqueue(pool, queue, 4)
    held = await queue.claim(2)
    async with pool.acquire() as conn, conn.transaction():
        await queue.complete_many(conn, held)
        await conn.execute("SET LOCAL enable_seqscan = off")
        plan = "\n".join(r[0] for r in await conn.fetch(f"EXPLAIN {THROUGHPUT}", 60.0))
    assert "Seq Scan on jobs" not in plan, plan
    assert (await throughput(pool)).counts == {"queued": 2, "running": 0, "done": 2, "dead": 0}


class _WaitingWorker:
    """A ``JobTaker`` that always waits for work: the enqueue claims its job for it."""

    def __init__(self) -> None:
        self.taken: list[ClaimedJob] = []

    def wants_job(self) -> bool:
        return True

    def picture_buffer(self, size: tuple[int, int]) -> Lent | None:
        raise AssertionError("the queue asks for no picture")

    async def take_job(self, job: ClaimedJob, picture: Lent | None = None) -> None:
        self.taken.append(job)


@pytest.mark.parametrize("handed_over", [False, True])
async def test_an_upload_authorised_by_a_key_verified_before_is_inserted_only_while_the_key_is_active(
    pool: asyncpg.Pool, handed_over: bool
) -> None:
    """Both enqueue statements of a known camera's upload (queued, or claimed for the waiting
    worker) check the key verified before: inserted, and the key marked used when asked, while it
    is active; nothing inserted (``KeyRevoked``) once it is revoked or deleted."""
    queue = JobQueue(pool, QueuePolicy(), "worker-a")
    worker = _WaitingWorker()
    if handed_over:
        queue.taker = worker
    key = await api_keys.create(pool, "ha")
    key_id = api_keys.key_id_of(key)
    assert key_id is not None

    def image(n: int) -> images.NewImage:
        return images.NewImage(
            camera_id="cam",
            sha256=bytes([n]) * 32,
            path=f"/x{n}.jpg",
            source="upload",
            original_name="upload",
            media_type="image/jpeg",
            width=10,
            height=10,
            size_bytes=1,
            captured_at=datetime.now(UTC),
            captured_at_source="received",
        )

    enabled, image_id, job_id = await queue.enqueue_camera_image(
        pool, image(1), None, api_keys.StillActive(key_id, mark=False)
    )
    assert enabled is True and image_id is not None and job_id is not None
    assert await pool.fetchval("SELECT last_used_at FROM api_keys WHERE key_id = $1", key_id) is None
    enabled, image_id, job_id = await queue.enqueue_camera_image(
        pool, image(2), None, api_keys.StillActive(key_id, mark=True)
    )
    assert enabled is True and image_id is not None
    assert await pool.fetchval("SELECT last_used_at FROM api_keys WHERE key_id = $1", key_id) is not None
    assert [j.id for j in worker.taken] == ([job_id - 1, job_id] if handed_over else [])
    await api_keys.revoke(pool, "ha")
    with pytest.raises(api_keys.KeyRevoked):
        await queue.enqueue_camera_image(pool, image(3), None, api_keys.StillActive(key_id, mark=True))
    await pool.execute("DELETE FROM api_keys")
    with pytest.raises(api_keys.KeyRevoked):
        await queue.enqueue_camera_image(pool, image(4), None, api_keys.StillActive(key_id, mark=False))
    # Without a key (a folder's picture, an MQTT upload) nothing about keys is checked.
    enabled, image_id, _ = await queue.enqueue_camera_image(pool, image(5), None)
    assert enabled is True and image_id is not None
    assert await pool.fetchval("SELECT array_agg(path ORDER BY id) FROM images") == ["/x1.jpg", "/x2.jpg", "/x5.jpg"]
