"""Uploads: 202 + job → event for good images; clear errors and nothing stored for bad ones."""

from __future__ import annotations

import io
from collections.abc import Callable

import aiohttp
from PIL import Image

from inference_server import demo_assets
from inference_server.config import Settings
from inference_server.detection.ultralytics_backend import UltralyticsDetector
from tests.support.waiting import wait_until

from ..conftest import auth_headers, running


def _jpeg(name: str) -> bytes:
    return demo_assets.image(name).read_bytes()


async def test_good_upload_is_accepted_and_becomes_an_event(
    make_settings: Callable[..., Settings], pose_detector: UltralyticsDetector
) -> None:
    async with running(make_settings(), pose_detector) as server:
        headers = await auth_headers(server)
        async with aiohttp.ClientSession(base_url=server.api_url, headers=headers) as http:
            async with http.post("/api/v1/cameras", json={"id": "porch", "name": "Porch"}) as resp:
                assert resp.status == 201
            async with http.post(
                "/api/v1/cameras/porch/images",
                data=_jpeg("zidane.jpg"),
                params={"captured_at": "2026-11-24T02:10:00+01:00"},
                headers={"Content-Type": "image/jpeg"},
            ) as resp:
                assert resp.status == 202
                accepted = await resp.json()
            assert accepted["duplicate"] is False and accepted["job_id"] is not None

            async def job() -> dict[str, object] | None:
                async with http.get(f"/api/v1/jobs/{accepted['job_id']}") as r:
                    body: dict[str, object] = await r.json()
                    # The event exists once the camera's activity batch has been judged.
                    return body if body["state"] == "done" and body["event_id"] else None

            done = await wait_until(job, timeout=30)
            async with http.get(f"/api/v1/events/{done['event_id']}") as resp:
                event = await resp.json()
            assert event["camera_id"] == "porch" and event["objects"] == {"person": 2}
            assert event["started_at"] == "2026-11-24T01:10:00Z"
            async with http.get(f"/api/v1/events/{done['event_id']}/snapshot.jpg") as resp:
                assert resp.status == 200 and resp.content_type == "image/jpeg"
                assert Image.open(io.BytesIO(await resp.read())).size == (1280, 720)

            # The same bytes again: accepted, recognised, no second job.
            async with http.post(
                "/api/v1/cameras/porch/images", data=_jpeg("zidane.jpg"), headers={"Content-Type": "image/jpeg"}
            ) as resp:
                again = await resp.json()
            assert resp.status == 202 and again == {"job_id": None, "image_id": accepted["image_id"], "duplicate": True}


async def test_multipart_upload_takes_image_and_capture_time(
    make_settings: Callable[..., Settings], pose_detector: UltralyticsDetector
) -> None:
    async with running(make_settings(), pose_detector) as server:
        headers = await auth_headers(server)
        async with aiohttp.ClientSession(base_url=server.api_url, headers=headers) as http:
            await http.post("/api/v1/cameras", json={"id": "yard", "name": "Yard"})
            form = aiohttp.FormData()
            form.add_field("image", _jpeg("bus.jpg"), filename="snapshot.jpg", content_type="image/jpeg")
            form.add_field("captured_at", "2026-11-24T23:30:00+00:00")
            async with http.post("/api/v1/cameras/yard/images", data=form) as resp:
                assert resp.status == 202
        row = await server.pool.fetchrow("SELECT original_name, captured_at_source, source FROM images")
        assert dict(row) == {"original_name": "snapshot.jpg", "captured_at_source": "client", "source": "upload"}


async def test_bad_uploads_get_clear_errors_and_store_nothing(
    make_settings: Callable[..., Settings], pose_detector: UltralyticsDetector
) -> None:
    bus = _jpeg("bus.jpg")
    corrupt = bytearray(bus)
    dht = corrupt.index(b"\xff\xc4")  # first Huffman table: make its code counts impossible
    corrupt[dht + 5 : dht + 21] = b"\xff" * 16
    settings = make_settings(upload_max_bytes=300_000)
    async with running(settings, pose_detector) as server:
        headers = await auth_headers(server)
        async with aiohttp.ClientSession(base_url=server.api_url, headers=headers) as http:
            await http.post("/api/v1/cameras", json={"id": "gate", "name": "Gate"})
            await http.post("/api/v1/cameras", json={"id": "off", "name": "Off", "enabled": False})
            cases = [
                ("gate", b"x" * 300_001, "image/jpeg", 413, "too_large"),
                ("gate", b"hello, not a picture", "image/jpeg", 415, "not_an_image"),
                ("gate", b"GIF89a" + b"\x00" * 50, "image/png", 415, "unsupported_format"),
                ("gate", bytes(corrupt), "image/jpeg", 400, "corrupt_image"),
                ("gate", bus[: len(bus) // 2], "image/jpeg", 400, "truncated"),
                ("gate", b"", "image/jpeg", 400, "empty_file"),
                ("gate", bus, "text/plain", 415, "unsupported_media_type"),
                ("nope", bus, "image/jpeg", 404, "not_found"),
                ("off", bus, "image/jpeg", 409, "camera_disabled"),
            ]
            for camera, body, content_type, status, code in cases:
                async with http.post(
                    f"/api/v1/cameras/{camera}/images", data=body, headers={"Content-Type": content_type}
                ) as resp:
                    assert (resp.status, (await resp.json())["error"]["code"]) == (status, code), code
        assert await server.pool.fetchval("SELECT count(*) FROM images") == 0
        assert await server.pool.fetchval("SELECT count(*) FROM jobs") == 0
        assert not list(settings.images_path.rglob("*.jpg"))


async def test_an_upload_to_a_camera_switched_off_or_deleted_since_its_last_upload_is_refused_and_leaves_nothing(
    make_settings: Callable[..., Settings], pose_detector: UltralyticsDetector
) -> None:
    """A camera uploaded to before is not looked up again before its next upload is placed (the
    insert checks it): one switched off meanwhile still gets 409, one deleted meanwhile 404, and
    neither keeps the file placed for it, nor a row. Uploads are not in the audit log."""
    settings = make_settings()
    async with running(settings, pose_detector) as server:
        headers = await auth_headers(server)
        async with aiohttp.ClientSession(base_url=server.api_url, headers=headers) as http:

            async def upload(name: str) -> tuple[int, str | None]:
                async with http.post(
                    "/api/v1/cameras/gate/images", data=_jpeg(name), headers={"Content-Type": "image/jpeg"}
                ) as resp:
                    body = await resp.json()
                    return resp.status, body["error"]["code"] if resp.status >= 400 else None

            async with http.post("/api/v1/cameras", json={"id": "gate", "name": "Gate"}) as resp:
                assert resp.status == 201
            assert await upload("bus.jpg") == (202, None)
            async with http.patch("/api/v1/cameras/gate", json={"enabled": False}) as resp:
                assert resp.status == 200
            assert await upload("zidane.jpg") == (409, "camera_disabled")
            async with http.patch("/api/v1/cameras/gate", json={"enabled": True}) as resp:
                assert resp.status == 200
            assert await upload("zidane.jpg") == (202, None)
            async with http.delete("/api/v1/cameras/gate") as resp:
                assert resp.status == 204
            assert await upload("bus.jpg") == (404, "not_found")
        assert await server.pool.fetchval("SELECT count(*) FROM images") == 0
        assert not list(settings.images_path.rglob("*.jpg"))
        # The camera's changes are audited; its pictures are data, not changes (a row a picture
        # in a log kept forever).
        actions = await server.pool.fetchval("SELECT array_agg(action ORDER BY id) FROM audit_log")
        assert actions == ["POST /cameras"] + ["PATCH /cameras/{camera_id}"] * 2 + ["DELETE /cameras/{camera_id}"]
