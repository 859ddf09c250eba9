"""Uploads: 202 + job → event for good images; clear errors and nothing stored for bad ones."""

from __future__ import annotations

import io
import time
from collections.abc import Callable

import aiohttp
from PIL import Image

from bench.roundtrips import RoundTrips
from inference_server import demo_assets
from inference_server.api.auth import USE_MARKS
from inference_server.config import Settings
from inference_server.detection.ultralytics_backend import UltralyticsDetector
from inference_server.schemas import CameraCreate
from inference_server.store import api_keys, cameras
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


def _other(name: str, n: int) -> bytes:
    """``name``'s demo JPEG with a comment: other bytes (not a duplicate), the same pixels."""
    original = _jpeg(name)
    note = f"copy {n}".encode()
    return original[:2] + b"\xff\xfe" + (len(note) + 2).to_bytes(2, "big") + note + original[2:]


async def test_a_camera_sending_pictures_over_rest_has_its_key_looked_up_once(
    make_settings: Callable[..., Settings], pose_detector: UltralyticsDetector
) -> None:
    """Home Assistant sends a camera's picture a second with one key: the key is looked up (its
    secret's hash checked) on its first request, and after that the upload's own statement checks
    it is still active, and marks it used at most once a minute (it was a statement a picture)."""
    async with running(make_settings(), pose_detector) as server:
        key = await api_keys.create(server.pool, "ha")
        await cameras.create(server.pool, CameraCreate(id="door", name="Door"))
        used = "SELECT last_used_at FROM api_keys WHERE name = 'ha'"
        async with aiohttp.ClientSession(
            base_url=server.api_url, headers={"Authorization": f"Bearer {key}", "Content-Type": "image/jpeg"}
        ) as http:
            async with http.post("/api/v1/cameras/door/images", data=_other("bus.jpg", 0)) as resp:
                assert resp.status == 202
            first = await server.pool.fetchval(used)
            assert first is not None
            with RoundTrips() as trips:
                for n in range(1, 4):
                    async with http.post("/api/v1/cameras/door/images", data=_other("bus.jpg", n)) as resp:
                        assert resp.status == 202, await resp.text()
            assert not [s for s in trips.by_statement if s.startswith("SELECT name, salt, hash FROM api_keys")], (
                trips.by_statement
            )
            assert await server.pool.fetchval("SELECT count(*) FROM images WHERE camera_id = 'door'") == 4
            assert await server.pool.fetchval(used) == first
            # Two minutes later, for the database and for this process: the upload marks it.
            await server.pool.execute("UPDATE api_keys SET last_used_at = now() - interval '2 minutes'")
            assert server._runner is not None
            server._runner.app[USE_MARKS].clock = lambda: time.monotonic() + 120
            async with http.post("/api/v1/cameras/door/images", data=_other("bus.jpg", 4)) as resp:
                assert resp.status == 202
            assert await server.pool.fetchval(used) > first


async def test_a_key_revoked_after_it_sent_pictures_gets_401_for_every_upload_and_leaves_nothing(
    make_settings: Callable[..., Settings], pose_detector: UltralyticsDetector
) -> None:
    """A key this process verified, then revoked by another process (the CLI) or deleted: its
    next uploads are refused with 401 whatever they hold (new bytes, bytes the camera has, a
    camera that does not exist, a file that is not a picture), and leave no row and no file."""
    settings = make_settings()
    async with running(settings, pose_detector) as server:
        await cameras.create(server.pool, CameraCreate(id="door", name="Door"))
        for name, end in (("ha", "UPDATE api_keys SET revoked_at = now() WHERE name = $1"), ("old", None)):
            key = await api_keys.create(server.pool, name)
            async with aiohttp.ClientSession(
                base_url=server.api_url, headers={"Authorization": f"Bearer {key}"}
            ) as http:

                async def upload(camera: str, data: bytes) -> tuple[int, str]:
                    async with http.post(
                        f"/api/v1/cameras/{camera}/images", data=data, headers={"Content-Type": "image/jpeg"}
                    ) as resp:
                        body = await resp.json()
                        return resp.status, body["error"]["code"] if resp.status >= 400 else "accepted"

                sent = _other("zidane.jpg", len(name))
                assert await upload("door", sent) == (202, "accepted")
                images_before = await server.pool.fetchval("SELECT count(*) FROM images")
                files_before = sorted(settings.images_path.rglob("*.jpg"))
                if end is None:
                    await server.pool.execute("DELETE FROM api_keys WHERE name = $1", name)
                else:
                    await server.pool.execute(end, name)
                for camera, data in (
                    ("door", _other("bus.jpg", 10 + len(name))),
                    ("door", sent),
                    ("nowhere", _other("bus.jpg", 20)),
                    ("door", b"not a picture"),
                    ("door", _other("bus.jpg", 10 + len(name))),
                ):
                    assert await upload(camera, data) == (401, "unauthorized"), (name, camera)
                assert await server.pool.fetchval("SELECT count(*) FROM images") == images_before
                assert sorted(settings.images_path.rglob("*.jpg")) == files_before
