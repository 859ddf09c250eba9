"""/cameras: CRUD and zones."""

from __future__ import annotations

import asyncpg
from aiohttp import web

from inference_server.api.deps import ctx
from inference_server.api.errors import ApiError, found, not_found
from inference_server.api.params import CameraPath
from inference_server.api.registry import API
from inference_server.comms.messages import camera_states
from inference_server.comms.topics import Topics
from inference_server.schemas import Camera, CameraCreate, CameraList, CameraPatch, ZoneList
from inference_server.store import cameras, outbox, retention


@API.route("GET", "/cameras", summary="List cameras", tag="cameras", response=CameraList)
async def list_cameras(request: web.Request, _: None, __: None) -> CameraList:
    return CameraList(cameras=await cameras.list_records(ctx(request).pool))


@API.route(
    "POST",
    "/cameras",
    summary="Add a camera",
    tag="cameras",
    body=CameraCreate,
    response=Camera,
    status=201,
    errors=[409],
)
async def create_camera(request: web.Request, _: None, new: CameraCreate) -> Camera:
    context = ctx(request)
    async with context.pool.acquire() as conn, conn.transaction():
        created = await cameras.create(conn, new)
        if created is None:
            raise ApiError(409, "conflict", f"camera {new.id!r} exists")
        await _publish_state(conn, context.topics, created.id)
    return created


@API.route(
    "GET",
    "/cameras/{camera_id}",
    summary="One camera",
    tag="cameras",
    params=CameraPath,
    response=Camera,
    errors=[404],
)
async def get_camera(request: web.Request, p: CameraPath, _: None) -> Camera:
    return found(await cameras.get_record(ctx(request).pool, p.camera_id), f"camera {p.camera_id!r}")


@API.route(
    "PATCH",
    "/cameras/{camera_id}",
    summary="Rename, enable or disable detection",
    tag="cameras",
    params=CameraPath,
    body=CameraPatch,
    response=Camera,
    errors=[404],
)
async def patch_camera(request: web.Request, p: CameraPath, change: CameraPatch) -> Camera:
    context = ctx(request)
    async with context.pool.acquire() as conn, conn.transaction():
        patched = found(await cameras.patch(conn, p.camera_id, change), f"camera {p.camera_id!r}")
        await _publish_state(conn, context.topics, p.camera_id)
    return patched


async def _publish_state(conn: asyncpg.Connection, topics: Topics, camera_id: str) -> None:
    """Queue the camera's retained state as this transaction leaves it (its ``enabled`` switch),
    so Home Assistant, reloaded or not, shows what the server does."""
    await outbox.add_many(conn, camera_states(topics, await cameras.states_to_queue(conn, camera_id)))


@API.route(
    "DELETE",
    "/cameras/{camera_id}",
    summary="Delete a camera with its images, events, snapshots and quarantined files",
    tag="cameras",
    params=CameraPath,
    status=204,
    errors=[404],
)
async def delete_camera(request: web.Request, p: CameraPath, _: None) -> None:
    context = ctx(request)
    topics = context.topics
    async with context.pool.acquire() as conn, conn.transaction():
        deleted = await cameras.delete(conn, p.camera_id)
        if deleted is None:
            raise not_found(f"camera {p.camera_id!r}")
        # Empty retained messages clear the camera's topics, so subscribers (the Home Assistant
        # integration) drop its device instead of showing its last state forever.
        topic_names = [
            topics.camera_state(p.camera_id),
            topics.camera_snapshot(p.camera_id),
            topics.camera_tamper(p.camera_id),
        ]
        topic_names += [topics.camera_objects(p.camera_id, label) for label in deleted.labels]
        await outbox.add_many(conn, [(topic, b"", True) for topic in topic_names])
    # Only after the commit: a rolled-back delete keeps its files. A crash before this line
    # leaves files without a camera; retention sweeps those folders.
    await retention.remove_camera_files(context.pool, context.settings, deleted)


@API.route(
    "GET",
    "/cameras/{camera_id}/zones",
    summary="The camera's zones",
    tag="cameras",
    params=CameraPath,
    response=ZoneList,
    errors=[404],
)
async def get_zones(request: web.Request, p: CameraPath, _: None) -> ZoneList:
    camera = found(await cameras.get_record(ctx(request).pool, p.camera_id), f"camera {p.camera_id!r}")
    return ZoneList(zones=camera.zones)


@API.route(
    "PUT",
    "/cameras/{camera_id}/zones",
    summary="Replace the camera's zones",
    tag="cameras",
    params=CameraPath,
    body=ZoneList,
    response=ZoneList,
    errors=[404],
)
async def put_zones(request: web.Request, p: CameraPath, zones: ZoneList) -> ZoneList:
    return found(await cameras.set_zones(ctx(request).pool, p.camera_id, zones), f"camera {p.camera_id!r}")
