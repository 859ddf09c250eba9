"""Image upload and job state."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime

from aiohttp import BodyPartReader, MultipartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from inference_server.api.deps import STILL_ACTIVE, ctx
from inference_server.api.errors import ApiError, found, not_found
from inference_server.api.params import JobPath, UploadParams
from inference_server.api.registry import API, IMAGE_TYPES
from inference_server.ingest.ingestor import CameraDisabled, UnknownCamera
from inference_server.ingest.validate import InvalidImage
from inference_server.jobs import queue
from inference_server.schemas import JobState, UploadAccepted
from inference_server.timerange import capture_time_problem

log = logging.getLogger(__name__)

_STATUS_FOR = {
    "too_large": 413,
    "too_many_pixels": 413,
    "not_an_image": 415,
    "unsupported_format": 415,
}


@API.route(
    "POST",
    "/cameras/{camera_id}/images",
    summary="Upload a JPEG or PNG (raw body or multipart field `image`) for detection",
    tag="images",
    params=UploadParams,
    body="image",
    response=UploadAccepted,
    status=202,
    errors=[404, 409],
    audited=False,  # data, not a change: the images table records each (a camera's every second)
    key_in_statement=True,  # the insert checks the key verified before (a picture a second: no look-up)
)
async def upload_image(request: web.Request, p: UploadParams, _: None) -> web.Response:
    context = ctx(request)
    data, name, captured_at = await read_upload(request, p, context.settings.upload_max_bytes, IMAGE_TYPES, "image")
    with ingest_errors(p.camera_id):
        result = await context.ingestor.ingest_bytes(
            p.camera_id, data, captured_at=captured_at, original_name=name, key=request.get(STILL_ACTIVE)
        )
    assert result.image_id is not None
    accepted = UploadAccepted(job_id=result.job_id, image_id=result.image_id, duplicate=result.status == "duplicate")
    return web.Response(text=accepted.model_dump_json(), status=202, content_type="application/json")


async def read_upload(
    request: web.Request, p: UploadParams, limit: int, media_types: Sequence[str], field: str
) -> tuple[bytes, str | None, datetime | None]:
    """An uploaded file: the raw body in one of ``media_types`` or the multipart part ``field``;
    with its file name (multipart only) and ``captured_at`` (the query's, else the form's)."""
    if request.content_type in media_types:
        return await read_limited(request, limit), None, p.captured_at
    if request.content_type == "multipart/form-data":
        data, name, form_time = await read_multipart(request, limit, field)
        return data, name, p.captured_at or form_time
    raise ApiError(415, "unsupported_media_type", f"send {', '.join(media_types)} or multipart/form-data")


@contextmanager
def ingest_errors(camera_id: str) -> Iterator[None]:
    """The ingestor's refusals as API errors: invalid file 4xx, unknown camera 404, disabled 409."""
    try:
        yield
    except InvalidImage as bad:
        raise ApiError(_STATUS_FOR.get(bad.reason, 400), bad.reason, bad.detail) from bad
    except UnknownCamera as err:
        raise not_found(f"camera {camera_id!r}") from err
    except CameraDisabled as err:
        raise ApiError(409, "camera_disabled", f"detection is switched off for camera {camera_id!r}") from err


async def read_limited(request: web.Request, limit: int) -> bytes:
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, "too_large", f"body over {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "too_large", f"body over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_multipart(
    request: web.Request, limit: int, field: str = "image"
) -> tuple[bytes, str | None, datetime | None]:
    """The file in the ``field`` part (at most ``limit`` bytes), its file name and ``captured_at``."""
    try:
        return await _read_parts(await request.multipart(), limit, field)
    except (ValueError, AssertionError, HttpProcessingError) as err:  # bad framing, part headers, or text
        raise ApiError(400, "bad_multipart", f"malformed multipart body: {err}") from err


async def _read_parts(reader: MultipartReader, limit: int, field: str) -> tuple[bytes, str | None, datetime | None]:
    data: bytes | None = None
    name: str | None = None
    captured_at: datetime | None = None
    async for part in reader:
        if not isinstance(part, BodyPartReader):
            continue
        if part.name == field:
            name = part.filename
            chunks: list[bytes] = []
            size = 0
            while chunk := await part.read_chunk(64 * 1024):
                size += len(chunk)
                if size > limit:
                    raise ApiError(413, "too_large", f"{field} over {limit} bytes")
                chunks.append(chunk)
            data = b"".join(chunks)
        elif part.name == "captured_at":
            text = (await part.text()).strip()
            try:
                captured_at = datetime.fromisoformat(text)
            except ValueError as err:
                raise ApiError(400, "bad_parameter", "captured_at must be an ISO 8601 date-time") from err
            if captured_at.tzinfo is None:
                raise ApiError(400, "bad_parameter", "captured_at needs a time zone")
            if (problem := capture_time_problem(captured_at)) is not None:
                raise ApiError(400, "bad_parameter", f"captured_at: {problem}")
    if data is None:
        raise ApiError(400, "bad_multipart", f"multipart body has no `{field}` part")
    return data, name, captured_at


@API.route(
    "GET",
    "/jobs/{job_id}",
    summary="A job's state (and its event once done)",
    tag="images",
    params=JobPath,
    response=JobState,
    errors=[404],
)
async def get_job(request: web.Request, p: JobPath, _: None) -> JobState:
    return found(await queue.get_state(ctx(request).pool, p.job_id), f"job {p.job_id}")
