"""Request dependencies: what route handlers get (the pool, settings, ingest, status), one object per app."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import asyncpg
from aiohttp import web

from inference_server.comms.topics import Topics
from inference_server.config import Settings
from inference_server.ingest.ingestor import Ingestor
from inference_server.schemas import DependencyHealth
from inference_server.status import StatusReporter

ReadinessCheck = Callable[[], Awaitable[DependencyHealth]]


@dataclass(slots=True)
class ApiContext:
    pool: asyncpg.Pool
    settings: Settings
    ingestor: Ingestor
    status: StatusReporter
    topics: Topics
    checks: dict[str, ReadinessCheck]


CTX: web.AppKey[ApiContext] = web.AppKey("ctx", ApiContext)
#: Who made the request: an API key's name, or "ingress" for a trusted proxy.
PRINCIPAL: web.RequestKey[str] = web.RequestKey("principal", str)


def ctx(request: web.Request) -> ApiContext:
    return request.app[CTX]
