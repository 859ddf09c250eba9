"""The OpenAPI document of every registered route: ``GET /openapi.json``."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from inference_server import __version__
from inference_server.api.registry import API, openapi_document


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
