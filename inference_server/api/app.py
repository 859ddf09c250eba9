"""The aiohttp application of ``/api/v1``."""

from __future__ import annotations

from aiohttp import web

# Route modules register their routes on API when imported.
from inference_server.api import (  # noqa: F401
    audit,
    cameras,
    clips,
    context,
    detections,
    digest,
    dlq,
    events,
    health,
    images,
    openapi,
    people,
    status,
    tamper,
    ui,
)
from inference_server.api.auth import (
    KEY_IDS,
    LIMITER,
    USE_MARKS,
    VERIFIED_KEYS,
    FailureLimiter,
    KeyIds,
    UseMarks,
    VerifiedKeys,
    audit_middleware,
    auth_middleware,
)
from inference_server.api.deadlines import DeadlineAppRunner, body_deadline_middleware
from inference_server.api.deps import CTX, ApiContext
from inference_server.api.errors import error_middleware
from inference_server.api.registry import API

#: Multipart framing on top of the largest upload.
_BODY_SLACK = 64 * 1024


def build_app(deps: ApiContext) -> web.Application:
    settings = deps.settings
    # The body deadline sits inside the error middleware (which would make its timeout a 500) and
    # before authentication (the body arrives while the key is checked).
    body_deadline = body_deadline_middleware(settings.api_body_timeout_s, settings.api_body_min_rate)
    app = web.Application(
        middlewares=[error_middleware, body_deadline, auth_middleware, audit_middleware],
        client_max_size=deps.settings.upload_max_bytes + _BODY_SLACK,
    )
    app[CTX] = deps
    app[LIMITER] = FailureLimiter(deps.settings.auth_failures_per_minute)
    app[KEY_IDS] = KeyIds()
    app[USE_MARKS] = UseMarks()
    app[VERIFIED_KEYS] = VerifiedKeys()
    API.add_to(app)
    return app


def build_runner(app: web.Application) -> web.AppRunner:
    """The runner serving ``app``: request headers and bodies under read deadlines, no access log."""
    return DeadlineAppRunner(app, header_timeout_s=app[CTX].settings.api_header_timeout_s, access_log=None)
