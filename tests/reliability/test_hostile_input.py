"""Every file of the hostile corpus (tests/data/hostile) through all four ingest paths (camera
folder, FTP, REST, MQTT), each
followed by a good real image: each file gets the outcome its manifest documents, every good
image becomes a finished job, and the server keeps going.

Folder-only hazards (symlinks out of the folder, files still being written, names that are not
UTF-8, over-long names) are covered by tests/server/ingest/test_bad_input.py; names on the
other two paths (path traversal, unicode) are exercised here.
"""

from __future__ import annotations

import asyncio
import ftplib
import hashlib
import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import aiohttp
import asyncpg
from PIL import Image

from inference_server import schemas
from inference_server.config import Settings
from inference_server.detection.ultralytics_backend import UltralyticsDetector
from inference_server.ingest.validate import ImageLimits, inspect_image
from inference_server.pipeline.decode import decode
from inference_server.store import cameras
from tests.server.conftest import auth_headers, make_settings, pose_detector, running  # noqa: F401
from tests.server.ingest.conftest import with_comment
from tests.server.ingest.test_ftp import stor_replies
from tests.server.ingest.test_mqtt_ingest import publish
from tests.support.waiting import wait_until

CORPUS = Path(__file__).resolve().parents[1] / "data" / "hostile"
MANIFEST: dict[str, dict[str, object]] = json.loads((CORPUS / "manifest.json").read_text())
GOOD = (CORPUS / "good.jpg").read_bytes()


def _good(n: int, path: str) -> bytes:
    return with_comment(GOOD, f"{path} good {n}")


def _ftp_upload(port: int, files: list[tuple[str, bytes]]) -> list[str]:
    """Upload as a camera does (one session, STOR of whole files); the final reply of each."""
    with ftplib.FTP() as ftp:
        ftp.connect("127.0.0.1", port, timeout=30)
        ftp.login("viaftp", FTP_PASSWORD)
        return stor_replies(ftp, [(name, data, None) for name, data in files])


FTP_PASSWORD = "hostile-pass"


def _sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


async def _job_states(pool: asyncpg.Pool, camera_id: str, shas: list[bytes]) -> list[str | None]:
    rows = await pool.fetch(
        "SELECT i.sha256, j.state FROM images i LEFT JOIN jobs j ON j.image_id = i.id WHERE i.camera_id = $1",
        camera_id,
    )
    state = {bytes(r["sha256"]): r["state"] for r in rows}
    return [state.get(s) for s in shas]


async def _reasons(pool: asyncpg.Pool, camera_id: str | None) -> Counter[str]:
    rows = await pool.fetch("SELECT reason FROM quarantine WHERE camera_id IS NOT DISTINCT FROM $1", camera_id)
    return Counter(r["reason"] for r in rows)


def test_decoded_pictures_are_upright_rgb_with_real_grey_levels() -> None:
    good = decode(CORPUS / "good.jpg", 640)
    for name in ("exif_rotated.jpg", "cmyk.jpg", "huge_exif.jpg"):
        img = decode(CORPUS / name, 640)
        assert (img.mode, img.size) == ("RGB", good.size), name
    grey = decode(CORPUS / "grey16.png", 640)
    small_good = good.resize(grey.size).convert("L")
    # Same picture: mean brightness within a few levels (clipping would give ~255).
    mean = sum(grey.convert("L").tobytes()) / (grey.size[0] * grey.size[1])
    good_mean = sum(small_good.tobytes()) / (grey.size[0] * grey.size[1])
    assert abs(mean - good_mean) < 8
    # The sideways file, turned upright, is the same picture as the upright one.
    rotated = decode(CORPUS / "exif_rotated.jpg", 640).convert("L").resize((64, 36))
    diff = sum(abs(a - b) for a, b in zip(rotated.tobytes(), good.convert("L").resize((64, 36)).tobytes(), strict=True))
    assert diff / (64 * 36) < 10
    assert Image.open(CORPUS / "exif_rotated.jpg").size == (good.size[1], good.size[0])  # stored sideways
    # ... and ingest records the size it will be seen at (upright), like the plain picture's.
    limits = ImageLimits(max_bytes=10_000_000, max_pixels=50_000_000, min_side=32)
    rotated_info = inspect_image((CORPUS / "exif_rotated.jpg").read_bytes(), limits)
    plain_info = inspect_image((CORPUS / "good.jpg").read_bytes(), limits)
    assert (rotated_info.width, rotated_info.height) == (plain_info.width, plain_info.height)


async def test_every_hostile_file_gets_its_documented_outcome_on_every_path(
    make_settings: Callable[..., Settings],  # noqa: F811
    pose_detector: UltralyticsDetector,  # noqa: F811
    mosquitto_url: str,
) -> None:
    settings = make_settings(
        mqtt_url=mosquitto_url,
        mqtt_prefix="hostile",
        max_image_pixels=40_000_000,
        ftp_enabled=True,
        ftp_host="127.0.0.1",
        ftp_port=0,
        ftp_passive_ports="0",
        ftp_users=[{"username": "viaftp", "password": FTP_PASSWORD, "camera": "viaftp"}],
    )
    names = sorted(MANIFEST)
    goods = {path: [_good(i, path) for i in range(len(names))] for path in ("folder", "ftp", "rest", "mqtt")}
    async with running(settings, pose_detector) as server:
        for camera in ("viarest", "viamqtt"):
            await cameras.create(server.pool, schemas.CameraCreate(id=camera, name=camera))
        assert server.mqtt_ingest is not None
        await asyncio.wait_for(server.mqtt_ingest.subscribed.wait(), 10)
        folder = settings.cameras_path / "viafolder"
        folder.mkdir(parents=True)
        rest: dict[str, tuple[int, str | None]] = {}
        async with aiohttp.ClientSession(base_url=server.api_url, headers=await auth_headers(server)) as http:

            async def upload(data: bytes, filename: str) -> tuple[int, str | None, int | None]:
                form = aiohttp.FormData()
                form.add_field("image", data, filename=filename, content_type="image/jpeg")
                async with http.post("/api/v1/cameras/viarest/images", data=form) as resp:
                    body = await resp.json()
                    return resp.status, body.get("error", {}).get("code"), body.get("image_id")

            for i, name in enumerate(names):
                data = (CORPUS / name).read_bytes()
                (folder / name).write_bytes(data)
                (folder / f"good_{i}.jpg").write_bytes(goods["folder"][i])
                status, code, _ = await upload(data, name)
                rest[name] = (status, code)
                assert (await upload(goods["rest"][i], f"good_{i}.jpg"))[0] == 202
                await publish(mosquitto_url, "hostile/ingest/viamqtt", data)
                await publish(mosquitto_url, "hostile/ingest/viamqtt", goods["mqtt"][i])

            # Names are data, never paths: a traversal name and a unicode name, uploaded and published.
            traversal = with_comment(GOOD, "traversal")
            status, _, image_id = await upload(traversal, "../../../../etc/cron.d/evil.jpg")
            assert status == 202
            stored = await server.pool.fetchrow("SELECT path, original_name FROM images WHERE id = $1", image_id)
            assert stored["original_name"].endswith("evil.jpg")  # kept as a label (aiohttp %-encodes the slashes)
            real = await asyncio.to_thread(Path(stored["path"]).resolve)
            assert real.is_relative_to(await asyncio.to_thread(settings.images_path.resolve))
            status, code, _ = await upload(with_comment(GOOD, "unicode"), "Kamera Haustür ☃.jpg")
            assert (status, code) == (202, None)
            await publish(mosquitto_url, "hostile/ingest/Kamera-Süd", GOOD)  # not a camera id (ids are a-z0-9_-)

        # FTP: what a camera's upload meets is the folder's outcome; every STOR is answered 226
        # (the file is whole on disk; judging it is the watcher's), and the session goes on.
        assert server.ftp is not None
        uploads: list[tuple[str, bytes]] = []
        for i, name in enumerate(names):
            uploads += [(name, (CORPUS / name).read_bytes()), (f"good_{i}.jpg", goods["ftp"][i])]
        replies = await asyncio.to_thread(_ftp_upload, server.ftp.port, uploads)
        assert all(r.startswith("226") for r in replies), replies

        assert rest == {n: (m["rest"]["status"], m["rest"]["error"]) for n, m in MANIFEST.items()}  # type: ignore[index]

        expected_processed = [n for n in names if MANIFEST[n]["folder"] == "processed"]
        expected_refused = Counter(str(MANIFEST[n]["folder"]) for n in names if MANIFEST[n]["folder"] != "processed")
        for path, camera in (("folder", "viafolder"), ("ftp", "viaftp"), ("rest", "viarest"), ("mqtt", "viamqtt")):
            shas = [_sha(g) for g in goods[path]] + [_sha((CORPUS / n).read_bytes()) for n in expected_processed]

            async def finished(camera: str = camera, shas: list[bytes] = shas) -> bool:
                states = await _job_states(server.pool, camera, shas)
                return all(s in ("done", "dead") for s in states)

            await wait_until(finished, timeout=120)
            assert set(await _job_states(server.pool, camera, shas)) == {"done"}, path
            if path != "rest":  # FTP files land in the camera folder: the folder's outcomes
                refused = await wait_until(
                    lambda camera=camera: _counted(server.pool, camera, sum(expected_refused.values())), timeout=30
                )
                assert refused == expected_refused, path
        # Files left the camera folder: every one was either taken or quarantined.
        assert sorted(p.name for p in folder.iterdir()) == []
        assert await _reasons(server.pool, None) == Counter({"invalid_camera_id": 1})


async def _counted(pool: asyncpg.Pool, camera: str, total: int) -> Counter[str] | None:
    found = await _reasons(pool, camera)
    return found if sum(found.values()) >= total else None
