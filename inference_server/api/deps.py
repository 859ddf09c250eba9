"""Request dependencies: what route handlers get (the pool, settings, ingest, status), one object per app."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal, Protocol

import asyncpg
from aiohttp import web

from inference_server.comms.topics import Topics
from inference_server.config import Settings
from inference_server.ingest.ingestor import Ingestor
from inference_server.reports.digest import DigestService
from inference_server.schemas import DependencyHealth
from inference_server.status import StatusReporter
from inference_server.store import api_keys
from inference_server.store.people import Vector

ReadinessCheck = Callable[[], Awaitable[DependencyHealth]]


class PhotoEmbedder(Protocol):
    """What enrolment from a photo needs (``pipeline.identify.PhotoEnroller``, wired by the server)."""

    async def vectors(self, data: bytes) -> list[tuple[Literal["face", "body"], str, Vector]]:
        """(source, model, vector) of the photo's one person; ``ValueError`` when there is not one."""
        ...


@dataclass(slots=True)
class ApiContext:
    pool: asyncpg.Pool
    settings: Settings
    ingestor: Ingestor
    status: StatusReporter
    topics: Topics
    checks: dict[str, ReadinessCheck]
    #: Makes digests (POST /digest); the wiring sets it, an LLM's prose writer included.
    digests: DigestService | None = None
    #: Embeds the one person of an enrolment photo; None when recognition is off.
    enroller: PhotoEmbedder | None = None


CTX: web.AppKey[ApiContext] = web.AppKey("ctx", ApiContext)
#: Who made the request: an API key's name, or "ingress" for a trusted proxy.
PRINCIPAL: web.RequestKey[str] = web.RequestKey("principal", str)
#: A key verified by this process earlier, which the request's own statement checks again
#: (``Route.key_in_statement``): set by ``auth_middleware`` instead of looking the key up.
STILL_ACTIVE: web.RequestKey[api_keys.StillActive] = web.RequestKey("still_active", api_keys.StillActive)


def ctx(request: web.Request) -> ApiContext:
    return request.app[CTX]
