"""store/detections.py: an image's detections are stored with their zones and paged newest first."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from inference_server.domain import Detection
from inference_server.store import detections, images

T0 = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


async def _image(conn: asyncpg.Connection, camera_id: str, name: str) -> int:
    image_id = await images.insert(
        conn,
        images.NewImage(camera_id, name.encode(), f"{name}.jpg", "folder", None, "image/jpeg", 8, 8, 1, T0, "mtime"),
    )
    assert image_id is not None
    return image_id


async def _page(conn: asyncpg.Connection, **kwargs: object) -> tuple[list[detections.DetectionRecord], int | None]:
    query: dict[str, object] = {
        "camera_id": None,
        "label": None,
        "since": None,
        "until": None,
        "min_confidence": None,
        "limit": 100,
        "before_id": None,
    }
    query.update(kwargs)
    return await detections.page(conn, **query)  # type: ignore[arg-type]


async def test_detections_are_stored_with_category_box_and_comma_joined_zones(conn: asyncpg.Connection) -> None:
    image_id = await _image(conn, "front", "a")

    await detections.insert_many(
        conn,
        image_id,
        "front",
        T0,
        [Detection("person", 0.9, (0.1, 0.2, 0.3, 0.4)), Detection("truck", 0.4, (0.5, 0.5, 0.9, 0.9))],
        [("porch", "drive"), ()],
    )
    await detections.insert_many(conn, image_id, "front", T0, [])  # nothing found: nothing stored

    records, cursor = await _page(conn)
    assert cursor is None
    assert [(r.label, r.category, r.confidence, r.bbox, r.zone, r.image_id, r.detected_at) for r in records] == [
        ("truck", "vehicle", 0.4, (0.5, 0.5, 0.9, 0.9), None, image_id, T0),
        ("person", "person", 0.9, (0.1, 0.2, 0.3, 0.4), "porch,drive", image_id, T0),
    ]


async def test_zones_that_do_not_match_the_detections_are_refused(conn: asyncpg.Connection) -> None:
    image_id = await _image(conn, "front", "a")

    with pytest.raises(ValueError):
        await detections.insert_many(conn, image_id, "front", T0, [Detection("person", 0.9, (0, 0, 1, 1))], [(), ()])
    assert await conn.fetchval("SELECT count(*) FROM detections") == 0


async def test_pages_run_newest_first_and_the_cursor_continues_without_repeats(conn: asyncpg.Connection) -> None:
    image_id = await _image(conn, "front", "a")
    for n in range(5):
        await detections.insert_many(conn, image_id, "front", T0, [Detection(f"l{n}", 0.5, (0, 0, 1, 1))])

    labels: list[str] = []
    cursor: int | None = None
    pages = 0
    while True:
        records, cursor = await _page(conn, limit=2, before_id=cursor)
        labels += [r.label for r in records]
        pages += 1
        if cursor is None:
            break

    assert labels == ["l4", "l3", "l2", "l1", "l0"] and pages == 3


async def test_filters_select_by_camera_label_time_and_confidence(conn: asyncpg.Connection) -> None:
    front = await _image(conn, "front", "f")
    back = await _image(conn, "back", "b")
    await detections.insert_many(conn, front, "front", T0, [Detection("person", 0.9, (0, 0, 1, 1))])
    await detections.insert_many(conn, front, "front", T0 + timedelta(hours=1), [Detection("cat", 0.3, (0, 0, 1, 1))])
    await detections.insert_many(conn, back, "back", T0 + timedelta(hours=2), [Detection("person", 0.6, (0, 0, 1, 1))])

    async def labels(**kwargs: object) -> list[tuple[str, str]]:
        records, _ = await _page(conn, **kwargs)
        return [(r.camera_id, r.label) for r in records]

    assert await labels(camera_id="front") == [("front", "cat"), ("front", "person")]
    assert await labels(label="person") == [("back", "person"), ("front", "person")]
    assert await labels(min_confidence=0.6) == [("back", "person"), ("front", "person")]
    assert await labels(since=T0 + timedelta(hours=1), until=T0 + timedelta(hours=2)) == [("front", "cat")]
