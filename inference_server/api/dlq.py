"""Dead letters: jobs that failed every attempt (or could never succeed)."""

from __future__ import annotations

from aiohttp import web

from inference_server.api.deps import ctx
from inference_server.api.errors import not_found
from inference_server.api.params import DlqQuery, JobPath
from inference_server.api.registry import API
from inference_server.jobs import queue
from inference_server.schemas import JobList, JobState


@API.route("GET", "/dlq", summary="Dead-lettered jobs, newest first", tag="dlq", params=DlqQuery, response=JobList)
async def list_dlq(request: web.Request, q: DlqQuery, _: None) -> JobList:
    jobs, cursor = await queue.dead_letters(ctx(request).pool, q.limit, q.cursor, q.camera)
    return JobList(jobs=jobs, next_cursor=str(cursor) if cursor is not None else None)


@API.route(
    "POST",
    "/dlq/{job_id}/requeue",
    summary="Try a dead job again with fresh attempts",
    tag="dlq",
    params=JobPath,
    response=JobState,
    errors=[404],
)
async def requeue_dlq(request: web.Request, p: JobPath, _: None) -> JobState:
    pool = ctx(request).pool
    if not await queue.requeue_dead(pool, p.job_id):
        raise not_found(f"dead job {p.job_id}")
    job = await queue.get_state(pool, p.job_id)
    assert job is not None
    return job


@API.route("DELETE", "/dlq/{job_id}", summary="Forget a dead job", tag="dlq", params=JobPath, status=204, errors=[404])
async def delete_dlq(request: web.Request, p: JobPath, _: None) -> None:
    if not await queue.delete_dead(ctx(request).pool, p.job_id):
        raise not_found(f"dead job {p.job_id}")
