"""The household context from Home Assistant: ``PUT /context``, ``GET /context``."""

from __future__ import annotations

from aiohttp import web

from inference_server.api.deps import PRINCIPAL, ctx
from inference_server.api.registry import API
from inference_server.schemas import ContextState, HouseholdContext
from inference_server.store import context


@API.route(
    "PUT",
    "/context",
    summary="Household context from Home Assistant (alarm, presence, open doors, sun)",
    tag="context",
    body=HouseholdContext,
    response=ContextState,
)
async def put_context(request: web.Request, _: None, new: HouseholdContext) -> ContextState:
    return await context.put(ctx(request).pool, new, request.get(PRINCIPAL, "anonymous"))


@API.route("GET", "/context", summary="The current household context", tag="context", response=ContextState)
async def get_context(request: web.Request, _: None, __: None) -> ContextState:
    return await context.current(ctx(request).pool)
