"""The aiohttp application of ``/api/v1``."""

from __future__ import annotations

from aiohttp import web

# Route modules register their routes on API when imported.
from inference_server.api import cameras, dlq, events, images, system  # noqa: F401
from inference_server.api.auth import LIMITER, FailureLimiter, audit_middleware, auth_middleware
from inference_server.api.context import CTX, ApiContext
from inference_server.api.errors import error_middleware
from inference_server.api.registry import API

#: Multipart framing on top of the largest upload.
_BODY_SLACK = 64 * 1024


def build_app(context: ApiContext) -> web.Application:
    app = web.Application(
        middlewares=[error_middleware, auth_middleware, audit_middleware],
        client_max_size=context.settings.upload_max_bytes + _BODY_SLACK,
    )
    app[CTX] = context
    app[LIMITER] = FailureLimiter(context.settings.auth_failures_per_minute)
    API.add_to(app)
    return app
