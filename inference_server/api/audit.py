"""The audit log, newest first: ``GET /audit``."""

from __future__ import annotations

from aiohttp import web

from inference_server.api.deps import ctx
from inference_server.api.params import IdPage
from inference_server.api.registry import API
from inference_server.schemas import AuditList
from inference_server.store import audit


@API.route("GET", "/audit", summary="Who changed what, newest first", tag="system", params=IdPage, response=AuditList)
async def list_audit(request: web.Request, q: IdPage, _: None) -> AuditList:
    entries, cursor = await audit.page(ctx(request).pool, q.limit, q.cursor)
    return AuditList(entries=entries, next_cursor=str(cursor) if cursor is not None else None)
