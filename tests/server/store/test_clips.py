"""clips table: a clip is found again by its bytes, and retention removes it (row and file) with
the last of its frames, never before."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg

from inference_server.config import Settings
from inference_server.store import clips, images
from inference_server.store.retention import run_retention

NOW = datetime(2026, 6, 1, tzinfo=UTC)
OLD = NOW - timedelta(days=30)


async def _clip(conn: asyncpg.Connection, settings: Settings, name: str, frames: int) -> tuple[int, Path, list[int]]:
    path = settings.clips_path / "front" / "2026-05-02" / f"{name}.mp4"
    path.parent.mkdir(parents=True, exist_ok=True)
    await asyncio.to_thread(path.write_bytes, name.encode() * 100)
    sha = hashlib.sha256(name.encode()).digest()
    clip_id = await clips.insert(
        conn,
        clips.NewClip("front", sha, str(path), "video/mp4", name, "h264", 176, 144, 4.0, 120, frames, 1200, OLD),
    )
    assert clip_id is not None
    assert (
        await clips.insert(
            conn,
            clips.NewClip("front", sha, str(path), "video/mp4", name, "h264", 176, 144, 4.0, 120, frames, 1200, OLD),
        )
        is None
    )  # the same bytes again: recognised
    ids = []
    for i in range(frames):
        image_id = await images.insert(
            conn,
            images.NewImage(
                "front",
                hashlib.sha256(f"{name}{i}".encode()).digest(),
                f"/nowhere/{name}{i}.jpg",
                "folder",
                f"{name}#t={i}",
                "image/jpeg",
                176,
                144,
                1000,
                OLD + timedelta(seconds=i),
                "filename",
                clip_id=clip_id,
                clip_offset_s=float(i),
            ),
        )
        assert image_id is not None
        ids.append(image_id)
    await conn.execute("UPDATE clips SET received_at = $1 WHERE id = $2", OLD, clip_id)
    await conn.execute("UPDATE images SET received_at = $1 WHERE clip_id = $2", OLD, clip_id)
    return clip_id, path, ids


async def test_a_clip_goes_with_the_last_of_its_frames(
    conn: asyncpg.Connection, make_settings: Callable[..., Settings], pool: asyncpg.Pool
) -> None:
    settings = make_settings(retention_days=14)
    _, gone_file, _ = await _clip(conn, settings, "gone", 2)
    kept, kept_file, kept_frames = await _clip(conn, settings, "kept", 2)
    assert await clips.find(conn, "front", hashlib.sha256(b"kept").digest()) == (kept, str(kept_file))
    assert await clips.frame_images(conn, kept) == kept_frames
    # One of "kept"'s frames is still the pipeline's (its job queued): retention leaves that image, so the clip.
    await conn.execute("INSERT INTO jobs (image_id, camera_id, max_attempts) VALUES ($1, 'front', 3)", kept_frames[0])

    report = await run_retention(pool, settings, now=NOW)
    assert (report.images, report.clips) == (3, 1)
    assert {r["id"] for r in await conn.fetch("SELECT id FROM clips")} == {kept}
    assert not gone_file.exists() and kept_file.exists()
