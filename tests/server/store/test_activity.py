"""store/activity.py: hourly label counts become a baseline once learned; feedback is counted and corrected."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, time, timedelta

import asyncpg
import pytest

from bench.roundtrips import RoundTrips
from inference_server.domain import Detection, FeedbackCounts
from inference_server.schemas import CameraCreate
from inference_server.store import activity, cameras, detections, images

TODAY = date(2025, 6, 15)


async def _history(conn: asyncpg.Connection, hour: int, zone: str = "porch", label: str = "person") -> activity.History:
    """activity.history at ``hour`` of TODAY for a batch that does not exist (no visits)."""
    return await activity.history(
        conn,
        "front",
        datetime.combine(TODAY, time(hour)),
        batch_id=uuid.uuid4(),
        visits_since=datetime.combine(TODAY, time(0)),
        zone=zone,
        label=label,
    )


async def _baseline(conn: asyncpg.Connection, hour: int) -> dict[str, float] | None:
    return (await _history(conn, hour)).baseline


async def _feedback(conn: asyncpg.Connection, zone: str, label: str, hour: int) -> FeedbackCounts:
    return (await _history(conn, hour, zone, label)).feedback


@pytest.fixture
async def conn(pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Connection]:
    await cameras.create(pool, CameraCreate(id="front", name="Front"))
    async with pool.acquire() as conn:
        yield conn


async def test_each_image_counts_once_per_distinct_label_in_its_hour(conn: asyncpg.Connection) -> None:
    await activity.record_images(conn, "front", [(TODAY, 9, ["person", "person", "car"])])
    await activity.record_images(conn, "front", [(TODAY, 9, ["person"])])
    await activity.record_images(conn, "front", [(TODAY, 10, ["person"])])

    rows = await conn.fetch("SELECT label, hour, images FROM activity_hourly ORDER BY hour, label")
    assert [tuple(r) for r in rows] == [("car", 9, 1), ("person", 9, 2), ("person", 10, 1)]


async def test_the_detections_insert_counts_the_hours_in_the_same_statement(conn: asyncpg.Connection) -> None:
    """``detections.insert_images(hourly=...)`` adds the counts ``record_images`` adds, and gives
    each image's detection ids in the order they were given."""
    await activity.record_images(conn, "front", [(TODAY, 9, ["person"])])
    at = datetime.combine(TODAY, time(9), tzinfo=UTC)
    ids = []
    for n in range(2):
        image_id = await images.insert(
            conn,
            images.NewImage(
                "front", f"i{n}".encode(), f"front/{n}.jpg", "folder", None, "image/jpeg", 64, 48, 10, at, "filename"
            ),
        )
        assert image_id is not None
        ids.append(image_id)
    found = [
        [Detection("person", 0.9, (0, 0, 0.5, 0.5)), Detection("car", 0.8, (0.5, 0.5, 1, 1))],
        [Detection("person", 0.7, (0, 0, 1, 1))],
    ]
    hourly = activity.hourly_counts([(TODAY, 9, ["person", "car"]), (TODAY, 10, ["person"])])
    with RoundTrips() as trips:
        given = await detections.insert_images(
            conn, "front", [(ids[0], at, found[0], []), (ids[1], at, found[1], [])], hourly=hourly
        )
    # (asyncpg's own look-ups of the array types aside, on this connection's first use of them)
    ours = {text: n for text, n in trips.by_statement.items() if "INSERT" in text}
    assert list(ours.values()) == [1] and "activity_hourly" in next(iter(ours))
    stored = await conn.fetch("SELECT id, image_id, label FROM detections ORDER BY id")
    assert given == [[stored[0]["id"], stored[1]["id"]], [stored[2]["id"]]]
    assert [(r["image_id"], r["label"]) for r in stored] == [(ids[0], "person"), (ids[0], "car"), (ids[1], "person")]
    rows = await conn.fetch("SELECT label, hour, images FROM activity_hourly ORDER BY hour, label")
    assert [tuple(r) for r in rows] == [("car", 9, 1), ("person", 9, 2), ("person", 10, 1)]


async def test_no_baseline_until_enough_days_are_learned_then_the_average_per_day(conn: asyncpg.Connection) -> None:
    for back in range(1, activity.MIN_DAYS_LEARNED):
        await activity.record_images(conn, "front", [(TODAY - timedelta(days=back), 9, ["person"])])
    await activity.record_images(conn, "front", [(TODAY, 9, ["person"])])  # today is not history
    assert await _baseline(conn, 9) is None

    await activity.record_images(conn, "front", [(TODAY - timedelta(days=activity.MIN_DAYS_LEARNED), 20, ["car"])])
    await activity.record_images(
        conn, "front", [(TODAY - timedelta(days=activity.BASELINE_DAYS + 1), 9, ["person"])]
    )  # too old

    baseline = await _baseline(conn, 9)
    days = activity.MIN_DAYS_LEARNED
    assert baseline == {"person": round((days - 1) / days, 3)}
    assert await _baseline(conn, 20) == {"car": round(1 / days, 3)}
    assert await _baseline(conn, 3) == {}


async def test_feedback_is_counted_per_camera_zone_label_and_hour(conn: asyncpg.Connection) -> None:
    assert await _feedback(conn, "porch", "person", 9) == FeedbackCounts()

    await activity.add_feedback(conn, "front", "porch", "person", 9, "false_alarm")
    await activity.add_feedback(conn, "front", "porch", "person", 9, "false_alarm")
    await activity.add_feedback(conn, "front", "porch", "person", 9, "correct")

    assert await _feedback(conn, "porch", "person", 9) == FeedbackCounts(2, 1, 0)
    assert await _feedback(conn, "porch", "person", 10) == FeedbackCounts()


async def test_a_correction_moves_the_vote_and_never_goes_below_zero(conn: asyncpg.Connection) -> None:
    await activity.add_feedback(conn, "front", "", "person", 9, "false_alarm")

    await activity.change_feedback(conn, "front", "", "person", 9, "false_alarm", "missed_threat")
    assert await _feedback(conn, "", "person", 9) == FeedbackCounts(0, 0, 1)

    await activity.change_feedback(conn, "front", "", "person", 9, "missed_threat", "missed_threat")  # no change
    await activity.change_feedback(conn, "front", "", "person", 9, "correct", None)  # nothing there to take
    assert await _feedback(conn, "", "person", 9) == FeedbackCounts(0, 0, 1)

    await activity.change_feedback(conn, "front", "", "person", 9, "missed_threat", None)
    assert await _feedback(conn, "", "person", 9) == FeedbackCounts()


async def test_an_unknown_kind_of_feedback_is_refused(conn: asyncpg.Connection) -> None:
    with pytest.raises(ValueError, match="unknown feedback"):
        await activity.add_feedback(conn, "front", "", "person", 9, "maybe")
    assert await conn.fetchval("SELECT count(*) FROM feedback_stats") == 0


async def test_several_images_are_counted_in_one_statement_each_once(conn: asyncpg.Connection) -> None:
    await activity.record_images(
        conn,
        "front",
        [(TODAY, 9, ["person", "dog"]), (TODAY, 9, ["person"]), (TODAY, 10, ["car", "car"]), (TODAY, 9, [])],
    )

    rows = await conn.fetch("SELECT label, hour, images FROM activity_hourly ORDER BY hour, label")
    assert [tuple(r) for r in rows] == [("dog", 9, 1), ("person", 9, 2), ("car", 10, 1)]
