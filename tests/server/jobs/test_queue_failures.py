"""A failure about one job is recorded against that job and nothing else (issue 13, item 1)."""

from __future__ import annotations

from datetime import UTC, datetime

import asyncpg

from inference_server.jobs.queue import JobQueue, QueuePolicy


async def _enqueue(pool: asyncpg.Pool, queue: JobQueue, camera_id: str, n: int) -> int:
    async with pool.acquire() as conn, conn.transaction():
        image_id = await conn.fetchval(
            "INSERT INTO images (camera_id, sha256, path, source, media_type, width, height, size_bytes,"
            " captured_at, captured_at_source) VALUES ($1, $2, '/x.jpg', 'folder', 'image/jpeg', 10, 10, 1,"
            " $3, 'mtime') RETURNING id",
            camera_id,
            bytes([n]) * 32,
            datetime.now(UTC),
        )
        return await queue.enqueue(conn, image_id, camera_id)


async def test_an_error_text_with_nul_is_recorded(pool: asyncpg.Pool) -> None:
    """A decoder's message may quote the file; PostgreSQL text cannot hold NUL, and a failure that
    cannot be recorded would stop the stage and come back after every restart."""
    queue = JobQueue(pool, QueuePolicy(max_attempts=1), "w")
    job_id = await _enqueue(pool, queue, "cam", 1)
    [job] = await queue.claim(1)
    assert await queue.fail(job, "decode: bad byte \x00 here", retryable=True) == "dead"
    row = await pool.fetchrow("SELECT state, last_error FROM jobs WHERE id = $1", job_id)
    assert row is not None and dict(row) == {"state": "dead", "last_error": "decode: bad byte \\0 here"}


async def test_a_job_whose_row_cannot_be_read_fails_alone(pool: asyncpg.Pool) -> None:
    """Zones written before they were validated (or by hand): the claim hands out the other jobs
    and fails that one, retried and then dead-lettered as any failure."""
    await pool.execute("""UPDATE cameras SET zones = '[{"name": "x", "polygon": [[5, 5]]}]' WHERE id = 'odd'""")
    queue = JobQueue(pool, QueuePolicy(max_attempts=2, backoff_base_s=0.01), "w")
    good = await _enqueue(pool, queue, "cam", 1)
    odd = await _enqueue(pool, queue, "odd", 2)
    claimed = await queue.claim(10)
    assert [j.id for j in claimed] == [good]
    row = await pool.fetchrow("SELECT state, attempts, last_error FROM jobs WHERE id = $1", odd)
    assert row is not None and row["state"] == "queued" and row["attempts"] == 1
    assert row["last_error"].startswith("claim: 1 validation error for Zone")
    await pool.execute("UPDATE jobs SET run_after = now() WHERE id = $1", odd)
    assert await queue.claim(10) == []
    assert await pool.fetchval("SELECT state FROM jobs WHERE id = $1", odd) == "dead"
