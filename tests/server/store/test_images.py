"""store/images.py: an image is stored once per camera (by sha256), and the overview reads it with its findings."""

from __future__ import annotations

from datetime import UTC, datetime

import asyncpg
import pytest

from inference_server.domain import Detection
from inference_server.store import batches, detections, images

from .conftest import add_event

T0 = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


def _new(camera_id: str, sha256: bytes, name: str) -> images.NewImage:
    return images.NewImage(
        camera_id, sha256, f"{camera_id}/{name}.jpg", "upload", name, "image/jpeg", 640, 480, 1234, T0, "client"
    )


async def test_the_same_bytes_are_stored_once_per_camera(conn: asyncpg.Connection) -> None:
    sha = bytes(range(32))

    first = await images.insert(conn, _new("front", sha, "a"))
    duplicate = await images.insert(conn, _new("front", sha, "b"))
    other_camera = await images.insert(conn, _new("back", sha, "c"))

    assert first is not None and duplicate is None
    assert other_camera is not None and other_camera != first
    assert await images.find(conn, "front", sha) == (first, "front/a.jpg")
    assert await images.find(conn, "back", sha) == (other_camera, "back/c.jpg")
    assert await images.find(conn, "front", bytes(32)) is None
    row = await conn.fetchrow("SELECT * FROM images WHERE id = $1", first)
    assert (row["source"], row["width"], row["height"], row["size_bytes"], row["captured_at"]) == (
        "upload",
        640,
        480,
        1234,
        T0,
    )


async def test_an_image_of_a_camera_that_does_not_exist_is_refused(conn: asyncpg.Connection) -> None:
    with pytest.raises(asyncpg.ForeignKeyViolationError):
        await images.insert(conn, _new("nowhere", bytes(32), "a"))


async def test_the_overview_lists_images_with_detections_strongest_first_and_the_event_of_their_batch(
    conn: asyncpg.Connection,
) -> None:
    seen = await images.insert(conn, _new("front", b"seen", "seen"))
    empty = await images.insert(conn, _new("back", b"empty", "empty"))
    assert seen is not None and empty is not None
    await detections.insert_many(
        conn, seen, "front", T0, [Detection("car", 0.5, (0, 0, 1, 1)), Detection("person", 0.9, (0, 0, 1, 1))]
    )
    batch = await batches.open_new(conn, "front", T0)
    await batches.add_images(conn, batch, [seen], T0)
    event_id = await add_event(conn, seen, 35, "medium", batch_id=batch.id)

    first, second = await images.overview(conn)

    assert (first.id, first.camera_id, first.original_name) == (seen, "front", "seen")
    assert first.detections == [("person", 0.9), ("car", 0.5)]
    assert first.event is not None
    assert (first.event["id"], first.event["risk_score"], first.event["llm_state"]) == (str(event_id), 35, "skipped")
    assert (second.id, second.detections, second.event) == (empty, [], None)
