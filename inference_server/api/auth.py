"""Bearer API keys, trusted ingress, rate-limited failures, and the audit of every write."""

from __future__ import annotations

import logging
import time
from collections import defaultdict, deque

from aiohttp import web

from inference_server.api.context import CTX, PRINCIPAL
from inference_server.api.errors import ApiError, Handler
from inference_server.api.registry import route_of
from inference_server.store import api_keys, audit
from inference_server.telemetry import metrics

log = logging.getLogger(__name__)

_WINDOW_S = 60.0


class FailureLimiter:
    """At most ``limit`` failed authentications per client address per minute."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._failures: dict[str, deque[float]] = defaultdict(deque)

    def _recent(self, client: str, now: float) -> deque[float]:
        times = self._failures[client]
        while times and now - times[0] > _WINDOW_S:
            times.popleft()
        return times

    def blocked_for(self, client: str) -> float:
        now = time.monotonic()
        times = self._recent(client, now)
        if len(times) < self.limit:
            if not times:
                self._failures.pop(client, None)
            return 0.0
        return _WINDOW_S - (now - times[0])

    def failed(self, client: str) -> None:
        self._recent(client, time.monotonic()).append(time.monotonic())


LIMITER: web.AppKey[FailureLimiter] = web.AppKey("auth_limiter", FailureLimiter)


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    route = route_of(request)
    if route is None or not route.auth:
        return await handler(request)
    context = request.app[CTX]
    client = request.remote or "?"
    if client in context.settings.trusted_proxies:
        request[PRINCIPAL] = "ingress"
        return await handler(request)
    limiter = request.app[LIMITER]
    wait = limiter.blocked_for(client)
    if wait > 0:
        raise ApiError(429, "too_many_failures", f"too many failed authentications; retry in {wait:.0f} s")
    header = request.headers.get("Authorization", "")
    scheme, _, key = header.partition(" ")
    name = await api_keys.verify(context.pool, key.strip()) if scheme.lower() == "bearer" and key else None
    if name is None:
        limiter.failed(client)
        metrics.AUTH_FAILURES.inc()
        log.warning("auth failed client=%s path=%s", client, request.path)
        raise ApiError(401, "unauthorized", "missing or wrong API key (Authorization: Bearer <key>)")
    request[PRINCIPAL] = name
    return await handler(request)


@web.middleware
async def audit_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    response = await handler(request)
    route = route_of(request)
    if route is not None and route.writes and response.status < 400:
        target = next((request.match_info[p] for p in route.path_params), None)
        await audit.record(
            request.app[CTX].pool,
            who=request.get(PRINCIPAL, "anonymous"),
            action=f"{route.method} {route.path}",
            target_id=target,
            status=response.status,
        )
    return response
