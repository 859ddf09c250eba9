"""One JSON error shape for every failure: ``{"error": {"code", "message"}}``."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from aiohttp import web
from pydantic import ValidationError

from inference_server.store.db import is_unavailable

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

T = TypeVar("T")


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def not_found(what: str) -> ApiError:
    """The 404 for a resource that does not exist: code ``not_found``, message ``no {what}``."""
    return ApiError(404, "not_found", f"no {what}")


def found(value: T | None, what: str) -> T:
    """``value`` when the store found it; `not_found` for ``what`` when it is None."""
    if value is None:
        raise not_found(what)
    return value


def error_response(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as err:
        return error_response(err.status, err.code, err.message)
    except ValidationError as err:
        details = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        return error_response(422, "validation_error", details)
    except json.JSONDecodeError as err:
        return error_response(400, "bad_json", f"body is not valid JSON: {err}")
    except web.HTTPException as err:
        if err.status < 400:
            raise
        code = err.reason.lower().replace(" ", "_")
        response = error_response(err.status, code, err.text or err.reason)
        if "Allow" in err.headers:  # a 405 must say which methods the path takes (RFC 9110 §15.5.6)
            response.headers["Allow"] = err.headers["Allow"]
        return response
    except Exception as err:
        if is_unavailable(err):
            # PostgreSQL is down or restarting: the client should retry, nothing was accepted.
            log.warning("database unavailable method=%s path=%s error=%r", request.method, request.path, err)
            response = error_response(503, "database_unavailable", "the database is unavailable; retry later")
            response.headers["Retry-After"] = "5"
            return response
        log.exception("unhandled error method=%s path=%s", request.method, request.path)
        return error_response(500, "internal_error", "internal server error (logged)")
