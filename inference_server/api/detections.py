"""Detections, newest first: ``GET /detections``."""

from __future__ import annotations

from aiohttp import web

from inference_server.api.deps import ctx
from inference_server.api.params import DetectionQuery
from inference_server.api.registry import API
from inference_server.schemas import DetectionList
from inference_server.store import detections


@API.route(
    "GET",
    "/detections",
    summary="Detections, newest first",
    tag="events",
    params=DetectionQuery,
    response=DetectionList,
)
async def list_detections(request: web.Request, q: DetectionQuery, _: None) -> DetectionList:
    found, cursor = await detections.page(
        ctx(request).pool,
        camera_id=q.camera,
        label=q.label,
        since=q.since,
        until=q.until,
        min_confidence=q.min_confidence,
        limit=q.limit,
        before_id=q.cursor,
    )
    return DetectionList(detections=found, next_cursor=str(cursor) if cursor is not None else None)
