"""Health, status, metrics, context, detections, audit, and the OpenAPI document."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from inference_server import __version__
from inference_server.api.context import PRINCIPAL, ctx
from inference_server.api.params import DetectionQuery, IdPage
from inference_server.api.registry import API, openapi_document
from inference_server.schemas import (
    AuditList,
    ContextState,
    DetectionList,
    Health,
    HouseholdContext,
    Readiness,
    SystemStatus,
)
from inference_server.store import audit, context, detections
from inference_server.telemetry.metrics import REGISTRY


@API.route("GET", "/health/live", summary="The process is up", tag="system", response=Health, auth=False)
async def health_live(request: web.Request, _: None, __: None) -> Health:
    return Health(status="alive")


@API.route(
    "GET",
    "/health/ready",
    summary="Every dependency is reachable (503 if not)",
    tag="system",
    response=Readiness,
    also=[503],
)
async def health_ready(request: web.Request, _: None, __: None) -> web.Response:
    checks = {name: await check() for name, check in ctx(request).checks.items()}
    ready = Readiness(ready=all(c.ok for c in checks.values()), checks=checks)
    return web.Response(
        text=ready.model_dump_json(), status=200 if ready.ready else 503, content_type="application/json"
    )


@API.route(
    "GET", "/system/status", summary="Queue, throughput, latency, models, GPU", tag="system", response=SystemStatus
)
async def system_status(request: web.Request, _: None, __: None) -> SystemStatus:
    return await ctx(request).status.current()


@API.route("GET", "/metrics", summary="Prometheus metrics", tag="system", response="text/plain")
async def prometheus_metrics(request: web.Request, _: None, __: None) -> web.Response:
    await ctx(request).status.current()  # refreshes the queue and GPU gauges
    return web.Response(body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST})


@API.route(
    "PUT",
    "/context",
    summary="Household context from Home Assistant (alarm, presence, open doors, sun)",
    tag="context",
    body=HouseholdContext,
    response=ContextState,
)
async def put_context(request: web.Request, _: None, new: HouseholdContext) -> ContextState:
    return await context.put(ctx(request).pool, new, request.get(PRINCIPAL, "anonymous"))


@API.route("GET", "/context", summary="The current household context", tag="context", response=ContextState)
async def get_context(request: web.Request, _: None, __: None) -> ContextState:
    return await context.current(ctx(request).pool)


@API.route(
    "GET",
    "/detections",
    summary="Detections, newest first",
    tag="events",
    params=DetectionQuery,
    response=DetectionList,
)
async def list_detections(request: web.Request, q: DetectionQuery, _: None) -> DetectionList:
    found, cursor = await detections.page(
        ctx(request).pool,
        camera_id=q.camera,
        label=q.label,
        since=q.since,
        until=q.until,
        min_confidence=q.min_confidence,
        limit=q.limit,
        before_id=q.cursor,
    )
    return DetectionList(detections=found, next_cursor=str(cursor) if cursor is not None else None)


@API.route("GET", "/audit", summary="Who changed what, newest first", tag="system", params=IdPage, response=AuditList)
async def list_audit(request: web.Request, q: IdPage, _: None) -> AuditList:
    entries, cursor = await audit.page(ctx(request).pool, q.limit, q.cursor)
    return AuditList(entries=entries, next_cursor=str(cursor) if cursor is not None else None)


def openapi(*, base: str = "") -> dict[str, Any]:
    return openapi_document(
        API,
        title="Home Security Intelligence API",
        version=__version__,
        description='Local AI security events for Home Assistant. Errors are {"error": {"code", "message"}}.',
    )


@API.route("GET", "/openapi.json", summary="This document", tag="system", auth=False)
async def openapi_json(request: web.Request, _: None, __: None) -> web.Response:
    return web.json_response(openapi())
