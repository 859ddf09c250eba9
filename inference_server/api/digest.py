"""/digest: a summary of a period, made on demand (Home Assistant's ``summarize`` service)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from aiohttp import web

from inference_server.api.deps import ctx
from inference_server.api.errors import ApiError
from inference_server.api.params import DigestRequest
from inference_server.api.registry import API
from inference_server.reports.scheduler import latest_period
from inference_server.schemas import Digest


@API.route(
    "POST",
    "/digest",
    summary="Make a digest of a period now (default: the latest scheduled period); publish it on hsi/digest"
    " when asked. The LLM writes its prose when configured; else, or when it fails, the rules text is shown,"
    " labelled as such",
    tag="events",
    body=DigestRequest,
    response=Digest,
    errors=[503],
)
async def make_digest(request: web.Request, _: None, body: DigestRequest) -> Digest:
    context = ctx(request)
    service = context.digests
    if service is None:
        raise ApiError(503, "unavailable", "digests are not set up on this server")
    now = datetime.now(UTC)
    since, until = body.since, body.until
    if since is None and until is None:
        since, until = latest_period(now, context.settings.digest_from, context.settings.digest_at, service.tz)
    elif until is None:
        until = now
    elif since is None:
        since = until - timedelta(hours=24)
    assert since is not None and until is not None
    if since >= until:
        raise ApiError(400, "bad_parameter", "since must be before until")
    zone = ZoneInfo(body.timezone) if body.timezone is not None else None
    digest = await service.compose(since, until, kind="on_demand", camera=body.camera, now=now, timezone=zone)
    stored = await service.send(digest, publish=body.publish)
    assert stored is not None  # only scheduled periods are unique
    return stored
