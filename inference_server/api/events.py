"""/events: list, detail, review, snapshot."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from aiohttp import web

from inference_server.api.deps import ctx
from inference_server.api.errors import ApiError, found, not_found
from inference_server.api.params import EventPath, EventQuery, SummaryQuery
from inference_server.api.registry import API
from inference_server.schemas import Event, EventList, EventMessage, EventPatch, EventSummary
from inference_server.store import activity, outbox
from inference_server.store import events as events_store
from inference_server.timerange import query_time_problem


@API.route(
    "GET",
    "/events",
    summary="List events: newest first, or best match first with q (full-text search)",
    tag="events",
    params=EventQuery,
    response=EventList,
)
async def list_events(request: web.Request, q: EventQuery, _: None) -> EventList:
    if q.since is not None and q.until is not None and q.since >= q.until:
        raise ApiError(400, "bad_parameter", "since must be before until")
    if q.sort == "relevance" and q.q is None:
        raise ApiError(400, "bad_parameter", "sort=relevance needs a search text q")
    sort = q.sort or ("relevance" if q.q is not None else "time")
    flt = events_store.EventFilter(
        camera_id=q.camera,
        since=q.since,
        until=q.until,
        min_risk=q.min_risk,
        level=q.level,
        min_level=q.min_level,
        reviewed=q.reviewed,
        text=q.q,
        has_clip=q.has_clip,
    )
    try:
        # A cursor holds a time and an id: its time is held to the range of since and until.
        if q.cursor is not None and (problem := query_time_problem(events_store.cursor_time(q.cursor))):
            raise events_store.BadCursor(f"invalid cursor: {problem}")
        page, cursor = await events_store.list_page(ctx(request).pool, flt, q.limit, q.cursor, sort)
    except events_store.BadCursor as err:
        raise ApiError(400, "bad_cursor", str(err)) from err
    except events_store.EmptySearch as err:
        raise ApiError(400, "bad_parameter", f"q: {err}") from err
    return EventList(events=page, next_cursor=cursor)


# Declared before /events/{event_id}, which would otherwise take "summary" for an event id.
@API.route(
    "GET",
    "/events/summary",
    summary="Counts of a period's events by level, camera and hour, and the most important ones",
    tag="events",
    params=SummaryQuery,
    response=EventSummary,
)
async def events_summary(request: web.Request, q: SummaryQuery, _: None) -> EventSummary:
    context = ctx(request)
    until = q.until or datetime.now(UTC)
    since = q.since or until - timedelta(hours=24)
    if since >= until:
        raise ApiError(400, "bad_parameter", "since must be before until")
    return await events_store.summarize(context.pool, since, until, q.camera, context.settings.camera_timezone, q.top)


@API.route(
    "GET", "/events/{event_id}", summary="One event", tag="events", params=EventPath, response=Event, errors=[404]
)
async def get_event(request: web.Request, p: EventPath, _: None) -> Event:
    return found(await events_store.get(ctx(request).pool, p.event_id), f"event {p.event_id}")


@API.route(
    "PATCH",
    "/events/{event_id}",
    summary="Mark reviewed, add notes or feedback; publishes an `update` on hsi/events",
    tag="events",
    params=EventPath,
    body=EventPatch,
    response=Event,
    errors=[404],
)
async def patch_event(request: web.Request, p: EventPath, change: EventPatch) -> Event:
    context = ctx(request)
    async with context.pool.acquire() as conn, conn.transaction():
        before = await events_store.get(conn, p.event_id)
        event = await events_store.patch(conn, p.event_id, change)
        if before is None or event is None:
            raise not_found(f"event {p.event_id}")
        if "feedback" in change.model_fields_set and before.detections:
            # Feedback teaches the rules about this camera, zone, class and hour (docs/risk.md).
            top = before.detections[0]
            hour = before.started_at.astimezone(ZoneInfo(context.settings.camera_timezone)).hour
            zone = top.zone.split(",")[0] if top.zone else ""
            await activity.change_feedback(
                conn, before.camera_id, zone, top.label, hour, before.feedback, change.feedback
            )
        # A review is no new judgement: the update tells readers, it never alerts.
        message = EventMessage(type="update", alert=False, **event.model_dump())
        await outbox.add(conn, context.topics.events, message.model_dump_json().encode())
    return event


@API.route(
    "GET",
    "/events/{event_id}/snapshot.jpg",
    summary="The event's annotated snapshot",
    tag="events",
    params=EventPath,
    response="image/jpeg",
    errors=[404],
)
async def event_snapshot(request: web.Request, p: EventPath, _: None) -> web.Response:
    exists, path = await events_store.snapshot_path(ctx(request).pool, p.event_id)
    if not exists:
        raise not_found(f"event {p.event_id}")
    if path is None:
        raise ApiError(404, "not_found", "this event's snapshot was removed by retention")
    try:
        data = await asyncio.to_thread(Path(path).read_bytes)
    except FileNotFoundError as err:
        raise ApiError(404, "not_found", "snapshot file is missing") from err
    return web.Response(body=data, content_type="image/jpeg")
