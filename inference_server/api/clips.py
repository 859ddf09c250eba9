"""Video clips: upload (sampled into frames for detection) and an event's clip as evidence."""

from __future__ import annotations

from aiohttp import web

from inference_server.api.deps import ctx
from inference_server.api.errors import ApiError, not_found
from inference_server.api.images import ingest_errors, read_upload
from inference_server.api.params import EventPath, UploadParams
from inference_server.api.registry import API, CLIP_TYPES
from inference_server.ingest.clips import sniff_media_type
from inference_server.schemas import ClipAccepted
from inference_server.store import clips


@API.route(
    "POST",
    "/cameras/{camera_id}/clips",
    summary="Upload a short video clip (MP4, MOV, MKV, AVI; raw body or multipart field `clip`): its sampled"
    " frames are detected as one activity",
    tag="images",
    params=UploadParams,
    body="clip",
    response=ClipAccepted,
    status=202,
    errors=[404, 409],
    audited=False,  # data, not a change: the clips and images tables record each
)
async def upload_clip(request: web.Request, p: UploadParams, _: None) -> web.Response:
    context = ctx(request)
    data, name, captured_at = await read_upload(request, p, context.settings.clip_max_bytes, CLIP_TYPES, "clip")
    media_type = sniff_media_type(data)
    if media_type is None:
        raise ApiError(415, "unsupported_format", "not an MP4, MOV, MKV or AVI container")
    with ingest_errors(p.camera_id):
        result = await context.ingestor.ingest_clip_bytes(
            p.camera_id, data, media_type=media_type, captured_at=captured_at, original_name=name
        )
    assert result.clip is not None
    clip = result.clip
    accepted = ClipAccepted(
        clip_id=clip.clip_id,
        duplicate=result.status == "duplicate",
        image_ids=clip.image_ids,
        job_ids=clip.job_ids,
        duration_s=clip.duration_s,
        frames_decoded=clip.frames_decoded,
    )
    return web.Response(text=accepted.model_dump_json(), status=202, content_type="application/json")


@API.route(
    "GET",
    "/events/{event_id}/clip",
    summary="The video clip the event was seen in",
    tag="events",
    params=EventPath,
    response="video",
    errors=[404],
)
async def event_clip(request: web.Request, p: EventPath, _: None) -> web.StreamResponse:
    exists, clip = await clips.for_event(ctx(request).pool, p.event_id)
    if not exists:
        raise not_found(f"event {p.event_id}")
    if clip is None:
        raise ApiError(404, "not_found", "this event was seen in still images, not a clip")
    response = web.FileResponse(clip.path, headers={"Content-Type": clip.media_type})
    return response
