"""Routes of ``/api/v1``: health and events (the rest arrives with the full API)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import get_args
from uuid import UUID

import asyncpg
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from inference_server.api.errors import ApiError, error_middleware
from inference_server.schemas import DependencyHealth, EventList, Readiness, RiskLevel
from inference_server.store import events as events_store
from inference_server.telemetry.metrics import REGISTRY

ReadinessCheck = Callable[[], Awaitable[DependencyHealth]]


@dataclass(slots=True)
class ApiContext:
    pool: asyncpg.Pool
    checks: dict[str, ReadinessCheck]


CTX: web.AppKey[ApiContext] = web.AppKey("ctx", ApiContext)


def _json(model: EventList | Readiness | object, status: int = 200) -> web.Response:
    from pydantic import BaseModel

    assert isinstance(model, BaseModel)
    return web.Response(text=model.model_dump_json(), status=status, content_type="application/json")


async def health_live(request: web.Request) -> web.Response:
    return web.json_response({"status": "alive"})


async def health_ready(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    checks = {name: await check() for name, check in ctx.checks.items()}
    ready = Readiness(ready=all(c.ok for c in checks.values()), checks=checks)
    return _json(ready, 200 if ready.ready else 503)


def _int(request: web.Request, name: str, default: int | None, lo: int, hi: int) -> int | None:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, "bad_parameter", f"{name} must be an integer") from None
    if not lo <= value <= hi:
        raise ApiError(400, "bad_parameter", f"{name} must be between {lo} and {hi}")
    return value


def _time(request: web.Request, name: str) -> datetime | None:
    raw = request.query.get(name)
    if raw is None:
        return None
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        raise ApiError(400, "bad_parameter", f"{name} must be an ISO 8601 date-time") from None
    if value.tzinfo is None:
        raise ApiError(400, "bad_parameter", f"{name} needs a time zone (e.g. Z or +01:00)")
    return value


async def list_events(request: web.Request) -> web.Response:
    q = request.query
    level = q.get("level")
    if level is not None and level not in get_args(RiskLevel):
        raise ApiError(400, "bad_parameter", f"level must be one of {list(get_args(RiskLevel))}")
    reviewed_raw = q.get("reviewed")
    if reviewed_raw is not None and reviewed_raw not in ("true", "false"):
        raise ApiError(400, "bad_parameter", "reviewed must be true or false")
    flt = events_store.EventFilter(
        camera_id=q.get("camera"),
        since=_time(request, "since"),
        until=_time(request, "until"),
        min_risk=_int(request, "min_risk", None, 0, 100),
        level=level,  # type: ignore[arg-type]
        reviewed=None if reviewed_raw is None else reviewed_raw == "true",
    )
    limit = _int(request, "limit", 50, 1, 500)
    assert limit is not None
    try:
        page, cursor = await events_store.list_page(request.app[CTX].pool, flt, limit, q.get("cursor"))
    except events_store.BadCursor as err:
        raise ApiError(400, "bad_cursor", str(err)) from err
    return _json(EventList(events=page, next_cursor=cursor))


async def get_event(request: web.Request) -> web.Response:
    try:
        event_id = UUID(request.match_info["event_id"])
    except ValueError:
        raise ApiError(404, "not_found", "no such event") from None
    event = await events_store.get(request.app[CTX].pool, event_id)
    if event is None:
        raise ApiError(404, "not_found", f"no event {event_id}")
    return _json(event)


async def metrics_text(request: web.Request) -> web.Response:
    return web.Response(body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST})


def build_app(ctx: ApiContext) -> web.Application:
    app = web.Application(middlewares=[error_middleware], client_max_size=32 * 1024 * 1024)
    app[CTX] = ctx
    app.router.add_get("/api/v1/health/live", health_live)
    app.router.add_get("/api/v1/health/ready", health_ready)
    app.router.add_get("/api/v1/events", list_events)
    app.router.add_get("/api/v1/events/{event_id}", get_event)
    app.router.add_get("/api/v1/metrics", metrics_text)
    return app
