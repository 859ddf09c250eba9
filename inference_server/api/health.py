"""Liveness and readiness: ``GET /health/live``, ``GET /health/ready``."""

from __future__ import annotations

from aiohttp import web

from inference_server.api.deps import ctx
from inference_server.api.registry import API
from inference_server.schemas import Health, Readiness


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
