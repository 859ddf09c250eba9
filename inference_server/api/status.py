"""The system's status: ``GET /system/status`` (JSON) and ``GET /metrics`` (Prometheus text)."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from inference_server.api.deps import ctx
from inference_server.api.registry import API
from inference_server.schemas import SystemStatus
from inference_server.telemetry.metrics import REGISTRY


@API.route(
    "GET", "/system/status", summary="Queue, throughput, latency, models, GPU", tag="system", response=SystemStatus
)
async def system_status(request: web.Request, _: None, __: None) -> SystemStatus:
    return await ctx(request).status.current()


@API.route("GET", "/metrics", summary="Prometheus metrics", tag="system", response="text/plain")
async def prometheus_metrics(request: web.Request, _: None, __: None) -> web.Response:
    await ctx(request).status.current()  # refreshes the queue and GPU gauges
    return web.Response(body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST})
