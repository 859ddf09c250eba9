"""Durable image-job queue on PostgreSQL; this module owns the ``jobs`` table's SQL.

- enqueue inside the caller's transaction (the image row and its job commit together);
- claim up to N ready jobs with ``FOR UPDATE SKIP LOCKED`` (a GPU batch in one query),
  each under a lease; a worker that dies loses its lease and the reaper requeues the job;
- completion is guarded by (worker, attempt), so a worker whose lease was taken over
  cannot also complete the job: each job's result is committed once;
- failures retry with capped exponential backoff and jitter, then go to the dead letters;
- a known camera's next image (a folder's or an upload's) is inserted already claimed by this
  process's idle detect worker (``JobTaker``) and handed to it: no notification, no claim
  (docs/decisions.md, "A picture handed to the idle worker").
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

import asyncpg

from inference_server.buffers import Lent
from inference_server.schemas import JobState, Zone
from inference_server.store import api_keys, images
from inference_server.store.db import Listener

log = logging.getLogger(__name__)

NOTIFY_CHANNEL = "hsi_jobs"
#: The job of the image inserted by a CTE named ``image`` (camera $1, attempts $14), and the
#: workers woken when it commits: the tail of the enqueue statements.
_JOB_AND_WAKE = (
    "job AS (INSERT INTO jobs (image_id, camera_id, max_attempts) SELECT id, $1, $14 FROM image RETURNING id),"
    f" woken AS (SELECT pg_notify('{NOTIFY_CHANNEL}', '') FROM job)"
)


class LeaseLost(RuntimeError):
    """The job's lease expired and another worker may own it now."""


@dataclass(frozen=True, slots=True)
class ClaimedJob:
    id: int
    image_id: int
    camera_id: str
    camera_name: str
    attempts: int
    max_attempts: int
    image_path: str
    captured_at: datetime
    #: The camera's zones at claim time (for tagging detections without another query).
    zones: tuple[Zone, ...] = ()
    #: When the image was accepted (file seen complete, or upload received).
    received_at: datetime | None = None
    camera_enabled: bool = True
    #: The stored picture's width and height, as ingest read them from its header.
    size: tuple[int, int] | None = None


@dataclass(frozen=True, slots=True)
class QueuePolicy:
    lease_s: float = 60.0
    max_attempts: int = 5
    backoff_base_s: float = 2.0
    backoff_max_s: float = 300.0

    def backoff(self, attempts: int) -> float:
        """Seconds to wait before the next attempt, after ``attempts`` failed ones (±10 % jitter)."""
        delay = min(self.backoff_base_s * (2 ** max(attempts - 1, 0)), self.backoff_max_s)
        return float(delay * random.uniform(0.9, 1.1))


def complete_sql(ids: str, attempts: str, worker: str) -> str:
    """The statement marking jobs done, for SQL parameters named by the arguments (job ids and
    their attempts, the worker id): only a job still held (running, same attempt, same worker) is
    marked; it returns their ids. Also a data-modifying CTE of the result stage's store statement
    (``pipeline/result.py``, ``_complete_and_insert``)."""
    return (
        "UPDATE jobs SET state = 'done', finished_at = now(), updated_at = now(), lease_until = NULL"
        f" FROM unnest({ids}::bigint[], {attempts}::int[]) AS held (id, attempts)"
        " WHERE jobs.id = held.id AND jobs.attempts = held.attempts AND jobs.state = 'running'"
        f" AND jobs.worker_id = {worker} RETURNING jobs.id"
    )


class JobTaker(Protocol):
    """This process's detect worker, taking jobs inserted already claimed for it."""

    def wants_job(self) -> bool:
        """Whether it waits for work with nothing in hand (the next job may be claimed for it)."""
        ...

    def picture_buffer(self, size: tuple[int, int]) -> Lent | None:
        """An array of its pool for a JPEG of ``size`` (width, height) decoded as RGBX as it
        decodes it (``pipeline/decode.py`` ``rgbx_shape``): the ingest door's check decodes the
        picture into it (``validate.check_pixels``) and the job takes it along. None while as many
        pictures as it takes in a batch are decoded ahead already (the door checks as before)."""
        ...

    async def take_job(self, job: ClaimedJob, picture: Lent | None = None) -> None:
        """A committed job, claimed for it (attempt 1, its lease running); with ``picture``, its
        picture decoded at the door into ``picture_buffer``'s array (taken from the holder)."""
        ...


#: The job of the image inserted by a CTE named ``image``, claimed at once for the worker $16 with
#: a lease of $17 seconds (camera $1, attempts $14): what ``JobQueue.claim`` would make of it.
_JOB_CLAIMED = (
    "job AS (INSERT INTO jobs (image_id, camera_id, max_attempts, state, attempts, lease_until, worker_id)"
    " SELECT id, $1, $14, 'running', 1, now() + make_interval(secs => $17), $16 FROM image RETURNING id)"
)


#: The camera $1 (with a folder $15 given: while it is still that folder's camera), as the
#: enqueue statements of a known camera's image read it.
_CAMERA = "camera AS (SELECT enabled, name, zones FROM cameras WHERE id = $1 AND ($15::text IS NULL OR folder = $15))"
#: Whether the image may be inserted: its camera enabled and, for an upload authorised by a key
#: verified earlier (``api_keys.StillActive``), that key still active.
_MAY_INSERT = "(SELECT enabled FROM camera) AND (SELECT active FROM key)"


def _key_args(key: api_keys.StillActive | None) -> tuple[str | None, bool]:
    return (None, False) if key is None else (key.key_id, key.mark)


def _key_still_active(row: asyncpg.Record, key: api_keys.StillActive | None) -> None:
    """Raise ``KeyRevoked`` when the enqueue statement's ``key`` CTE found the key inactive."""
    if not row["key_active"]:
        raise api_keys.KeyRevoked(key)


class JobQueue:
    def __init__(self, pool: asyncpg.Pool, policy: QueuePolicy, worker_id: str) -> None:
        self.pool = pool
        self.policy = policy
        self.worker_id = worker_id
        self._wakeup = asyncio.Event()
        self._listener = Listener(pool, NOTIFY_CHANNEL, self._on_notify)
        #: This process's detect worker (it sets itself): a known camera's next image (a folder's
        #: or an upload's) goes to it in hand while it waits for work.
        self.taker: JobTaker | None = None

    # --- producer side -------------------------------------------------------------------
    async def enqueue(self, conn: asyncpg.Connection, image_id: int, camera_id: str) -> int:
        """Add a job in the caller's transaction; workers are woken when it commits."""
        job_id: int = await conn.fetchval(
            "INSERT INTO jobs (image_id, camera_id, max_attempts) VALUES ($1, $2, $3) RETURNING id",
            image_id,
            camera_id,
            self.policy.max_attempts,
        )
        await conn.execute(f"NOTIFY {NOTIFY_CHANNEL}")
        return job_id

    async def enqueue_camera_image(
        self,
        pool: asyncpg.Pool,
        image: images.NewImage,
        folder: str | None,
        key: api_keys.StillActive | None = None,
        picture: Lent | None = None,
    ) -> tuple[bool | None, int | None, int | None]:
        """A known camera's next image in one statement (no transaction around it): inserted
        with its job, and the workers woken, only while ``image.camera_id`` is a camera (with
        ``folder`` given: still that folder's camera) and enabled. (enabled, image id, job id):
        enabled None when there is no such camera (nothing inserted), False when it is switched
        off (nothing inserted), True with (None, None) for bytes the camera already has.

        ``key``: an upload's API key, verified by this process earlier, is checked by the same
        statement (and marked used when it asks): ``api_keys.KeyRevoked`` when it was revoked or
        deleted since (nothing inserted).

        While this process's detect worker waits for work with nothing in hand, the job is
        inserted claimed for it and handed over once committed: the worker skips the claim and
        nobody else is woken (the statement is the same round trip); ``picture``, the picture
        the door decoded for it (``idle_taker``), goes along (else it stays the caller's)."""
        taker = self.idle_taker()
        if taker is not None:
            return await self._enqueue_camera_image_for(taker, pool, image, folder, key, picture)
        row = await pool.fetchrow(
            f"WITH {_CAMERA}, {api_keys.still_active_ctes('$16', '$17')},"
            f" image AS ({images.insert_if(_MAY_INSERT)}), {_JOB_AND_WAKE}"
            " SELECT (SELECT enabled FROM camera) AS enabled, (SELECT active FROM key) AS key_active,"
            " (SELECT id FROM image) AS image_id, (SELECT id FROM job) AS job_id,"
            " (SELECT count(*) FROM woken) AS woken",
            *images.insert_args(image),
            self.policy.max_attempts,
            folder,
            *_key_args(key),
        )
        assert row is not None
        _key_still_active(row, key)
        return row["enabled"], row["image_id"], row["job_id"]

    async def _enqueue_camera_image_for(
        self,
        taker: JobTaker,
        pool: asyncpg.Pool,
        image: images.NewImage,
        folder: str | None,
        key: api_keys.StillActive | None,
        picture: Lent | None,
    ) -> tuple[bool | None, int | None, int | None]:
        """``enqueue_camera_image`` with the job claimed for this process's worker and handed to
        it, with ``picture`` when given."""
        row = await pool.fetchrow(
            f"WITH {_CAMERA}, {api_keys.still_active_ctes('$18', '$19')},"
            f" image AS ({images.insert_if(_MAY_INSERT)}), {_JOB_CLAIMED}"
            " SELECT camera.enabled, camera.name, camera.zones, (SELECT active FROM key) AS key_active,"
            " (SELECT id FROM image) AS image_id, (SELECT id FROM job) AS job_id, now() AS received_at"
            " FROM (SELECT 1) AS one LEFT JOIN camera ON true",
            *images.insert_args(image),
            self.policy.max_attempts,
            folder,
            self.worker_id,
            self.policy.lease_s,
            *_key_args(key),
        )
        assert row is not None
        _key_still_active(row, key)
        if row["job_id"] is None:
            return row["enabled"], row["image_id"], row["job_id"]
        try:
            job = ClaimedJob(
                row["job_id"],
                row["image_id"],
                image.camera_id,
                row["name"],
                1,
                self.policy.max_attempts,
                image.path,
                image.captured_at,
                tuple(Zone.model_validate(z) for z in row["zones"]),
                row["received_at"],
                row["enabled"],
                (image.width, image.height),
            )
        except Exception as err:  # as in ``claim``: an odd camera row fails this job's attempt only
            log.exception("claimed job unreadable job_id=%s camera_id=%s", row["job_id"], image.camera_id)
            await self._record_failure(
                row["job_id"], image.camera_id, 1, self.policy.max_attempts, f"claim: {err!r}", retryable=True
            )
        else:
            await taker.take_job(job, picture)
        return row["enabled"], row["image_id"], row["job_id"]

    def idle_taker(self) -> JobTaker | None:
        """This process's detect worker while it waits for work with nothing in hand: a known
        camera's next image is inserted claimed for it, and the ingest door may decode the
        picture for it (``JobTaker.picture_buffer``)."""
        taker = self.taker
        return taker if taker is not None and taker.wants_job() else None

    def wake(self) -> None:
        """Wake ``wait_for_work`` (a job handed to this process's worker)."""
        self._wakeup.set()

    # --- consumer side -------------------------------------------------------------------
    async def listen(self) -> None:
        """Wake ``wait_for_work`` as soon as a job is committed (LISTEN/NOTIFY)."""
        await self._listener.ensure()

    def _on_notify(self, *_: object) -> None:
        self._wakeup.set()

    async def close(self) -> None:
        await self._listener.close()

    async def _relisten(self) -> None:
        """After a database restart the LISTEN connection is gone: open a new one (or try later)."""
        if await self._listener.ensure():
            log.info("listening for new jobs again")
            self._wakeup.set()  # jobs committed while nobody listened

    async def wait_for_work(self, timeout: float) -> bool:
        """Until a job is committed (or was while nobody waited), at most ``timeout`` seconds;
        whether one was."""
        await self._relisten()
        try:
            await asyncio.wait_for(self._wakeup.wait(), timeout)
        except TimeoutError:
            return False
        finally:
            self._wakeup.clear()
        return True

    async def claim(self, limit: int) -> list[ClaimedJob]:
        rows = await self.pool.fetch(
            "WITH picked AS ("
            "  SELECT id FROM jobs WHERE state = 'queued' AND run_after <= now()"
            "  ORDER BY run_after, id LIMIT $1 FOR UPDATE SKIP LOCKED)"
            " UPDATE jobs j SET state = 'running', attempts = j.attempts + 1,"
            "   lease_until = now() + make_interval(secs => $2), worker_id = $3, updated_at = now()"
            " FROM picked, images i, cameras c"
            " WHERE j.id = picked.id AND i.id = j.image_id AND c.id = j.camera_id"
            " RETURNING j.id, j.image_id, j.camera_id, c.name AS camera_name, j.attempts, j.max_attempts,"
            "   i.path, i.captured_at, c.zones, i.received_at, c.enabled, i.width, i.height",
            limit,
            self.policy.lease_s,
            self.worker_id,
        )
        jobs: list[ClaimedJob] = []
        for r in rows:
            try:
                jobs.append(
                    ClaimedJob(
                        r["id"],
                        r["image_id"],
                        r["camera_id"],
                        r["camera_name"],
                        r["attempts"],
                        r["max_attempts"],
                        r["path"],
                        r["captured_at"],
                        tuple(Zone.model_validate(z) for z in r["zones"]),
                        r["received_at"],
                        r["enabled"],
                        (r["width"], r["height"]),
                    )
                )
            except Exception as err:  # one job's odd row must not fail the claim of the others
                log.exception("claimed job unreadable job_id=%s camera_id=%s", r["id"], r["camera_id"])
                await self._record_failure(
                    r["id"], r["camera_id"], r["attempts"], r["max_attempts"], f"claim: {err!r}", retryable=True
                )
        jobs.sort(key=lambda j: j.id)
        return jobs

    async def complete(self, conn: asyncpg.Connection, job: ClaimedJob) -> None:
        """Mark done inside the caller's transaction; raise ``LeaseLost`` if no longer ours."""
        if job.id not in await self.complete_many(conn, [job]):
            raise LeaseLost(f"job {job.id} attempt {job.attempts} is no longer held by {self.worker_id}")

    async def complete_many(self, conn: asyncpg.Connection | asyncpg.Pool, jobs: Sequence[ClaimedJob]) -> set[int]:
        """Mark ``jobs`` done in one statement (in the caller's transaction, if any); return the ids
        of those still ours (the others' leases were lost: their results must be discarded)."""
        if not jobs:
            return set()
        rows = await conn.fetch(complete_sql("$1", "$2", "$3"), *self.completing(jobs))
        return {r["id"] for r in rows}

    def completing(self, jobs: Sequence[ClaimedJob]) -> tuple[list[int], list[int], str]:
        """The parameters of :func:`complete_sql` for ``jobs`` held by this worker."""
        return [j.id for j in jobs], [j.attempts for j in jobs], self.worker_id

    async def fail(self, job: ClaimedJob, error: str, *, retryable: bool) -> str:
        """Record a failed attempt; return the job's new state (``queued`` or ``dead``, or ``lost``
        if the lease was lost). A retryable failure is retried after the backoff until the job's
        attempts are used up; then, or at once when not retryable, the job is dead-lettered with
        ``error`` as its ``last_error``."""
        return await self._record_failure(
            job.id, job.camera_id, job.attempts, job.max_attempts, error, retryable=retryable
        )

    async def _record_failure(
        self, job_id: int, camera_id: str, attempts: int, max_attempts: int, error: str, *, retryable: bool
    ) -> str:
        dead = not retryable or attempts >= max_attempts
        state = "dead" if dead else "queued"
        delay = 0.0 if dead else self.policy.backoff(attempts)
        # The error text may quote the input (a decoder's message, a file name): PostgreSQL text
        # cannot hold NUL, and a failure that cannot be recorded would come back forever.
        error = error[:2000].replace("\x00", "\\0")
        updated = await self.pool.fetchval(
            "UPDATE jobs SET state = $4, last_error = $5, lease_until = NULL, updated_at = now(),"
            "  run_after = now() + make_interval(secs => $6),"
            "  finished_at = CASE WHEN $4 = 'dead' THEN now() END"
            " WHERE id = $1 AND state = 'running' AND worker_id = $2 AND attempts = $3 RETURNING id",
            job_id,
            self.worker_id,
            attempts,
            state,
            error,
            delay,
        )
        if updated is None:
            log.warning("job failure not recorded: lease lost job_id=%s error=%s", job_id, error)
            return "lost"
        if not dead:
            # Claimable again once its delay has run out: wake this process's worker then (the
            # poll, ``job_poll_interval_s``, is only the safety net for a notification missed).
            asyncio.get_running_loop().call_later(delay, self._wakeup.set)
        log.warning(
            "job failed job_id=%s camera_id=%s attempt=%s/%s state=%s retry_in_s=%.1f error=%s",
            job_id,
            camera_id,
            attempts,
            max_attempts,
            state,
            delay,
            error,
        )
        return state

    async def release(self, jobs: Sequence[ClaimedJob], *, tried: bool) -> set[int]:
        """Give jobs this worker still holds back to the queue at once, as a worker that stops
        does: no lease to wait out, and the workers are woken. An untried job (claimed, never
        handed to the model) gets its attempt back; a tried one (cut off while it ran) keeps it,
        as a reaped lease does, so an image that hangs the model still reaches the dead letters.
        Returns the ids released (a job completed or taken over meanwhile is left alone)."""
        if not jobs:
            return set()
        rows = await self.pool.fetch(
            "WITH released AS ("
            " UPDATE jobs SET"
            "   attempts = CASE WHEN $4 THEN jobs.attempts ELSE jobs.attempts - 1 END,"
            "   state = CASE WHEN $4 AND jobs.attempts >= jobs.max_attempts THEN 'dead' ELSE 'queued' END,"
            "   last_error = CASE WHEN $4 THEN 'stopped while it ran on worker ' || $3 ELSE jobs.last_error END,"
            "   finished_at = CASE WHEN $4 AND jobs.attempts >= jobs.max_attempts THEN now() END,"
            "   run_after = now(), lease_until = NULL, updated_at = now()"
            " FROM unnest($1::bigint[], $2::int[]) AS held (id, attempts)"
            " WHERE jobs.id = held.id AND jobs.attempts = held.attempts AND jobs.state = 'running'"
            " AND jobs.worker_id = $3 RETURNING jobs.id, jobs.state),"
            f" woken AS (SELECT pg_notify('{NOTIFY_CHANNEL}', '') FROM released WHERE state = 'queued' LIMIT 1)"
            " SELECT id FROM released, (SELECT count(*) FROM woken) AS w",
            [j.id for j in jobs],
            [j.attempts for j in jobs],
            self.worker_id,
            tried,
        )
        return {r["id"] for r in rows}

    async def reap_expired(self) -> tuple[int, int]:
        """Requeue jobs whose worker lost its lease; dead-letter those out of attempts.

        Returns (requeued, dead)."""
        rows = await self.pool.fetch(
            "WITH expired AS ("
            "  SELECT id FROM jobs WHERE state = 'running' AND lease_until < now()"
            "  FOR UPDATE SKIP LOCKED)"
            " UPDATE jobs j SET"
            "   state = CASE WHEN j.attempts >= j.max_attempts THEN 'dead' ELSE 'queued' END,"
            "   last_error = 'lease expired on worker ' || coalesce(j.worker_id, '?'),"
            "   run_after = now(), lease_until = NULL, updated_at = now(),"
            "   finished_at = CASE WHEN j.attempts >= j.max_attempts THEN now() END"
            " FROM expired WHERE j.id = expired.id RETURNING j.id, j.state",
        )
        requeued = sum(1 for r in rows if r["state"] == "queued")
        dead = len(rows) - requeued
        if rows:
            log.warning("expired leases reaped requeued=%d dead=%d", requeued, dead)
            self._wakeup.set()
        if requeued:
            await self.pool.execute(f"NOTIFY {NOTIFY_CHANNEL}")  # and the workers of other processes
        return requeued, dead

    async def counts(self) -> dict[str, int]:
        return await state_counts(self.pool)


async def state_counts(conn: asyncpg.Connection | asyncpg.Pool) -> dict[str, int]:
    """Jobs by state, every state present (0 when none)."""
    row = await conn.fetchrow(f"SELECT {_STATE_COUNTS}")
    assert row is not None
    return {state: row[state] for state in _STATES}


_STATES = ("queued", "running", "done", "dead")
#: Each state counted on its own partial index (``jobs_ready``, ``jobs_leased``, ``jobs_finished``,
#: ``jobs_dead``): a ``GROUP BY state`` read the whole table, every status (10 s) all day.
_STATE_COUNTS = ", ".join(f"(SELECT count(*) FROM jobs WHERE state = '{state}') AS {state}" for state in _STATES)
#: ``throughput`` in one statement, each part on an index (``jobs_finished``, migration 0010): it
#: read the whole jobs table three times, every status (10 s) all day.
THROUGHPUT = (
    f"SELECT {_STATE_COUNTS},"
    " (SELECT count(*) FROM jobs WHERE state = 'done' AND finished_at > now() - make_interval(secs => $1)) AS recent,"
    " (SELECT percentile_cont(ARRAY[0.5, 0.95]) WITHIN GROUP (ORDER BY ms) FROM ("
    "   SELECT extract(epoch FROM j.finished_at - i.received_at) * 1000 AS ms"
    "   FROM jobs j JOIN images i ON i.id = j.image_id WHERE j.state = 'done'"
    "   ORDER BY j.finished_at DESC LIMIT 500) t) AS pcts"
)


# --- read side for the API and status ----------------------------------------------------------
_STATE = (
    "SELECT j.id, j.image_id, j.camera_id, j.state, j.attempts, j.max_attempts, j.last_error, j.created_at,"
    " j.updated_at, j.finished_at,"
    # The event of the image's activity batch (None until the batch has produced one).
    " (SELECT b.event_id FROM batch_images bi JOIN batches b ON b.id = bi.batch_id"
    "   WHERE bi.image_id = j.image_id LIMIT 1) AS event_id"
    " FROM jobs j"
)


async def get_state(conn: asyncpg.Connection | asyncpg.Pool, job_id: int) -> JobState | None:
    row = await conn.fetchrow(_STATE + " WHERE j.id = $1", job_id)
    return JobState.model_validate(dict(row)) if row is not None else None


async def dead_letters(
    conn: asyncpg.Connection | asyncpg.Pool, limit: int, before_id: int | None, camera_id: str | None = None
) -> tuple[list[JobState], int | None]:
    rows = await conn.fetch(
        _STATE + " WHERE j.state = 'dead' AND ($2::bigint IS NULL OR j.id < $2)"
        " AND ($3::text IS NULL OR j.camera_id = $3) ORDER BY j.id DESC LIMIT $1",
        limit + 1,
        before_id,
        camera_id,
    )
    jobs = [JobState.model_validate(dict(r)) for r in rows[:limit]]
    return jobs, (jobs[-1].id if len(rows) > limit else None)


async def requeue_dead(conn: asyncpg.Connection | asyncpg.Pool, job_id: int) -> bool:
    """Give a dead job a fresh set of attempts; False if it is not dead (or absent)."""
    done = await conn.fetchval(
        "UPDATE jobs SET state = 'queued', attempts = 0, run_after = now(), updated_at = now(),"
        " finished_at = NULL, worker_id = NULL WHERE id = $1 AND state = 'dead' RETURNING id",
        job_id,
    )
    if done is not None:
        await conn.execute(f"NOTIFY {NOTIFY_CHANNEL}")
    return done is not None


async def delete_dead(conn: asyncpg.Connection | asyncpg.Pool, job_id: int) -> bool:
    status: str = await conn.execute("DELETE FROM jobs WHERE id = $1 AND state = 'dead'", job_id)
    return status != "DELETE 0"


@dataclass(frozen=True, slots=True)
class Throughput:
    counts: dict[str, int]
    images_per_s: float
    latency_ms_p50: float | None
    latency_ms_p95: float | None


#: The window ``throughput`` counts finished jobs over (images per second).
THROUGHPUT_WINDOW_S = 60.0


async def throughput(conn: asyncpg.Connection | asyncpg.Pool, window_s: float = THROUGHPUT_WINDOW_S) -> Throughput:
    """Queue depth by state, jobs finished per second over the window, and their latency
    from image received to job finished (p50/p95 of the last 500 finished jobs)."""
    row = await conn.fetchrow(THROUGHPUT, window_s)
    assert row is not None
    return throughput_of(row, window_s)


def throughput_of(row: asyncpg.Record, window_s: float = THROUGHPUT_WINDOW_S) -> Throughput:
    """``Throughput`` from a row of ``THROUGHPUT`` (with more columns, as the status reads it)."""
    pcts = row["pcts"]
    return Throughput(
        counts={state: row[state] for state in _STATES},
        images_per_s=round(row["recent"] / window_s, 3),
        latency_ms_p50=round(pcts[0], 1) if pcts else None,
        latency_ms_p95=round(pcts[1], 1) if pcts else None,
    )
