"""Routes declared once, with the pydantic models that validate them and document them.

Each route names its parameter model (path + query), its body model and its response
model; the same declarations build the aiohttp router *and* ``GET /openapi.json``, so the
document cannot drift from what the server accepts and returns. (Why not a library:
docs/decisions.md.)
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ValidationError
from pydantic.json_schema import models_json_schema

from inference_server.api.errors import ApiError
from inference_server.schemas import ErrorBody

Handler = Callable[..., Awaitable[BaseModel | web.StreamResponse | None]]
BodyKind = type[BaseModel] | Literal["image", "clip"] | None
ResponseKind = type[BaseModel] | Literal["image/jpeg", "text/plain", "text/html", "video"] | None

_PATH_PARAM = re.compile(r"{(\w+)}")
_ERROR_TEXT = {
    400: "Bad request",
    401: "Missing or wrong API key",
    403: "Forbidden",
    404: "Not found",
    409: "Conflict with the current state",
    413: "Body too large",
    415: "Unsupported media type",
    422: "Body failed validation",
    429: "Too many failed authentications",
}
IMAGE_TYPES = ("image/jpeg", "image/png")
#: Media types of the clips cameras upload (``ingest/clips.py``), as sent and as served.
CLIP_TYPES = ("video/mp4", "video/quicktime", "video/x-matroska", "video/x-msvideo")


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    path: str
    handler: Handler
    summary: str
    tag: str
    params: type[BaseModel] | None
    body: BodyKind
    response: ResponseKind
    status: int
    errors: tuple[int, ...]
    #: Other statuses that return the same body as success (e.g. 503 from readiness).
    also: tuple[int, ...]
    auth: bool
    #: A successful request is written to the audit log (``audit_middleware``).
    audited: bool
    #: The handler's statement checks a key this process verified before (``deps.STILL_ACTIVE``),
    #: so ``auth_middleware`` does not look it up again: a camera's picture a second over REST.
    key_in_statement: bool = False

    @property
    def path_params(self) -> list[str]:
        return _PATH_PARAM.findall(self.path)

    @property
    def operation_id(self) -> str:
        return self.handler.__name__


@dataclass
class RouteTable:
    prefix: str = "/api/v1"
    routes: list[Route] = field(default_factory=list)

    def route(
        self,
        method: str,
        path: str,
        *,
        summary: str,
        tag: str,
        params: type[BaseModel] | None = None,
        body: BodyKind = None,
        response: ResponseKind = None,
        status: int = 200,
        errors: Sequence[int] = (),
        also: Sequence[int] = (),
        auth: bool = True,
        audited: bool = True,
        key_in_statement: bool = False,
    ) -> Callable[[Handler], Handler]:
        """Declare a route. The handler is called as ``handler(request, params, body)``. A write
        (POST, PUT, PATCH, DELETE) is audited unless ``audited`` is False."""

        def register(handler: Handler) -> Handler:
            extra = {400} if params is not None else set()
            if body is not None:
                extra |= {400, 413, 415, 422}  # 415: a JSON body sent as anything but application/json
            if auth:
                extra |= {401, 429}
            self.routes.append(
                Route(
                    method,
                    path,
                    handler,
                    summary,
                    tag,
                    params,
                    body,
                    response,
                    status,
                    tuple(sorted(set(errors) | extra)),
                    tuple(also),
                    auth,
                    audited and method in ("POST", "PUT", "PATCH", "DELETE"),
                    key_in_statement and auth,
                )
            )
            return handler

        return register

    def add_to(self, app: web.Application) -> None:
        for route in self.routes:
            app.router.add_route(route.method, self.prefix + route.path, _bind(route))
            if not route.path_params:
                self._shadow(app, route.path)

    def _shadow(self, app: web.Application, path: str) -> None:
        """A fixed path that a parameterised one also matches (``/events/summary`` and
        ``/events/{event_id}``) answers 405 to the methods it lacks, as a path of its own would,
        instead of passing them to the parameterised route (a 400: "summary" is no event id)."""
        own = {r.method for r in self.routes if r.path == path}
        shadowed = {r.method for r in self.routes if r.path_params and _matches(r.path, path)} - own

        async def not_allowed(request: web.Request) -> web.StreamResponse:
            raise web.HTTPMethodNotAllowed(request.method, sorted(own), text=f"{request.method} is not allowed here")

        for method in sorted(shadowed):
            app.router.add_route(method, self.prefix + path, not_allowed)


def _matches(template: str, path: str) -> bool:
    """Whether the route template ``template`` (``/events/{event_id}``) matches the fixed ``path``."""
    parts, fixed = template.split("/"), path.split("/")
    return len(parts) == len(fixed) and all(
        a == b or _PATH_PARAM.fullmatch(a) is not None for a, b in zip(parts, fixed, strict=True)
    )


_ROUTE_ATTR = "hsi_route"


def _bind(route: Route) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        params = _parse_params(route, request) if route.params is not None else None
        body: Any = None
        if isinstance(route.body, type):
            raw = await request.read()
            if request.content_type != "application/json":
                raise ApiError(415, "unsupported_media_type", "send the body as application/json")
            try:
                # Strict: JSON types as the document states them (no 0 for false, no "1" for 1).
                body = route.body.model_validate_json(raw, strict=True)
            except ValidationError as err:
                if any(e["type"] == "json_invalid" for e in err.errors()):
                    raise ApiError(400, "bad_json", "body is not valid JSON") from err
                raise
            if _has_nul(body.model_dump()):
                raise ApiError(422, "validation_error", "text must not contain NUL (\\u0000) characters")
        result = await route.handler(request, params, body)
        if isinstance(result, web.StreamResponse):
            return result
        if result is None:
            return web.Response(status=route.status)
        return web.Response(text=result.model_dump_json(), status=route.status, content_type="application/json")

    handle.__name__ = route.operation_id
    setattr(handle, _ROUTE_ATTR, route)  # lets middlewares see the route before the handler runs
    return handle


def _has_nul(value: Any) -> bool:
    """PostgreSQL text and jsonb cannot hold U+0000: such input is refused, not a 500 later."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(_has_nul(v) for v in value)
    return False


def route_of(request: web.Request) -> Route | None:
    """The declared route a request matched (None for 404s and non-API paths)."""
    found = getattr(request.match_info.handler, _ROUTE_ATTR, None)
    return found if isinstance(found, Route) else None


def _parse_params(route: Route, request: web.Request) -> BaseModel:
    assert route.params is not None
    raw: dict[str, str] = dict(request.query)
    raw.update(request.match_info)
    if _has_nul(raw):
        raise ApiError(400, "bad_parameter", "parameters must not contain NUL (%00) characters")
    try:
        return route.params.model_validate(raw)
    except ValidationError as err:
        path = set(route.path_params)
        if any(e["loc"] and e["loc"][0] in path for e in err.errors()):
            raise ApiError(404, "not_found", f"no such resource: {request.path}") from err
        details = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        raise ApiError(400, "bad_parameter", details) from err


# --- OpenAPI ---------------------------------------------------------------------------------
def openapi_document(table: RouteTable, *, title: str, version: str, description: str) -> dict[str, Any]:
    models: set[type[BaseModel]] = {ErrorBody}
    for route in table.routes:
        for kind in (route.body, route.response):
            if isinstance(kind, type):
                models.add(kind)
    _, defs = models_json_schema(
        [(m, "validation") for m in sorted(models, key=lambda m: m.__name__)],
        ref_template="#/components/schemas/{model}",
    )
    schemas: dict[str, Any] = defs.get("$defs", {})

    paths: dict[str, dict[str, Any]] = {}
    for route in table.routes:
        op: dict[str, Any] = {
            "operationId": route.operation_id,
            "summary": route.summary,
            "tags": [route.tag],
            "parameters": _parameters(route),
            "responses": _responses(route),
        }
        if not route.auth:
            op["security"] = []
        if route.body is not None:
            op["requestBody"] = _request_body(route)
        paths.setdefault(table.prefix + route.path, {})[route.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version, "description": description},
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "description": "API key"}},
        },
        "paths": paths,
    }


def _parameters(route: Route) -> list[dict[str, Any]]:
    if route.params is None:
        return []
    schema = route.params.model_json_schema(ref_template="#/components/schemas/{model}")
    required = set(schema.get("required", []))
    out = []
    for name, prop in schema.get("properties", {}).items():
        where = "path" if name in route.path_params else "query"
        prop = {k: v for k, v in prop.items() if k not in ("title", "description")}
        param: dict[str, Any] = {"name": name, "in": where, "required": where == "path" or name in required}
        description = route.params.model_fields[name].description
        if description:
            param["description"] = description
        param["schema"] = prop
        out.append(param)
    return out


def _request_body(route: Route) -> dict[str, Any]:
    if route.body in ("image", "clip"):
        # A file: the raw body in one of its media types, or a multipart field named after it.
        media_types = IMAGE_TYPES if route.body == "image" else CLIP_TYPES
        binary = {"schema": {"type": "string", "format": "binary"}}
        return {
            "required": True,
            "content": {
                **{media: binary for media in media_types},
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {
                            route.body: {"type": "string", "format": "binary"},
                            "captured_at": {"type": "string", "format": "date-time"},
                        },
                        "required": [route.body],
                    }
                },
            },
        }
    assert isinstance(route.body, type)
    return {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{route.body.__name__}"}}},
    }


def _responses(route: Route) -> dict[str, Any]:
    responses: dict[str, Any] = {}
    ok: dict[str, Any] = {"description": "OK" if route.status < 300 else "Accepted"}
    if isinstance(route.response, type):
        ok["content"] = {"application/json": {"schema": {"$ref": f"#/components/schemas/{route.response.__name__}"}}}
    elif route.response == "image/jpeg":
        ok["content"] = {"image/jpeg": {"schema": {"type": "string", "format": "binary"}}}
    elif route.response in ("text/plain", "text/html"):
        ok["content"] = {route.response: {"schema": {"type": "string"}}}
    elif route.response == "video":
        ok["content"] = {media: {"schema": {"type": "string", "format": "binary"}} for media in CLIP_TYPES}
    responses[str(route.status)] = ok
    for status in route.also:
        responses[str(status)] = {**ok, "description": "Same body, not ready"}
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
    for status in route.errors:
        responses[str(status)] = {"description": _ERROR_TEXT.get(status, "Error"), "content": error}
    return responses


#: The one route table of ``/api/v1``; the route modules add to it on import.
API = RouteTable()
