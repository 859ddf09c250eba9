"""/cameras/{id}/tamper: a camera's tamper state, and a reset of its learned scene."""

from __future__ import annotations

from aiohttp import web

from inference_server.api.deps import ctx
from inference_server.api.errors import found, not_found
from inference_server.api.params import CameraPath
from inference_server.api.registry import API
from inference_server.schemas import TamperState
from inference_server.store import cameras, outbox
from inference_server.store import tamper as tamper_store


@API.route(
    "GET",
    "/cameras/{camera_id}/tamper",
    summary="Whether the camera's view looks tampered with (404 until its scene is learned)",
    tag="cameras",
    params=CameraPath,
    response=TamperState,
    errors=[404],
)
async def get_tamper(request: web.Request, p: CameraPath, _: None) -> TamperState:
    pool = ctx(request).pool
    found(await cameras.get(pool, p.camera_id), f"camera {p.camera_id!r}")
    return found(await tamper_store.state(pool, p.camera_id), f"learned scene for camera {p.camera_id!r} yet")


@API.route(
    "DELETE",
    "/cameras/{camera_id}/tamper",
    summary="Forget the camera's learned scene (after re-aiming it on purpose): it learns the view anew",
    tag="cameras",
    params=CameraPath,
    status=204,
    errors=[404],
)
async def reset_tamper(request: web.Request, p: CameraPath, _: None) -> None:
    context = ctx(request)
    async with context.pool.acquire() as conn, conn.transaction():
        if await cameras.get(conn, p.camera_id) is None:
            raise not_found(f"camera {p.camera_id!r}")
        await tamper_store.forget(conn, p.camera_id)
        # The retained state is cleared: unknown (not "fine") until the new view is learned.
        await outbox.add(conn, context.topics.camera_tamper(p.camera_id), b"", retain=True)
