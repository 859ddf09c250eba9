"""activity_hourly and feedback_stats: what is usual for a camera, and what people told us."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from datetime import date, timedelta

import asyncpg

from inference_server.domain import FeedbackCounts

BASELINE_DAYS = 14
#: Days of history (before today) needed before "unusual for this hour" is judged at all.
MIN_DAYS_LEARNED = 3


async def record_images(
    conn: asyncpg.Connection, camera_id: str, images: Iterable[tuple[date, int, Iterable[str]]]
) -> None:
    """Count each image once per label it shows, for its camera's day and hour (local time):
    several images of one camera in one statement, each ``(day, hour, labels)``."""
    counts: Counter[tuple[str, date, int]] = Counter()
    for day, hour, labels in images:
        counts.update((label, day, hour) for label in set(labels))
    if not counts:
        return
    keys = sorted(counts)
    await conn.execute(
        "INSERT INTO activity_hourly (camera_id, label, day, hour, images)"
        " SELECT $1, l, d, h, n FROM unnest($2::text[], $3::date[], $4::int[], $5::int[]) AS a (l, d, h, n)"
        " ON CONFLICT (camera_id, label, hour, day) DO UPDATE SET images = activity_hourly.images + EXCLUDED.images",
        camera_id,
        [k[0] for k in keys],
        [k[1] for k in keys],
        [k[2] for k in keys],
        [counts[k] for k in keys],
    )


async def baseline(conn: asyncpg.Connection, camera_id: str, today: date, hour: int) -> dict[str, float] | None:
    """Average images per hour with each label at ``hour`` over the last BASELINE_DAYS days
    before ``today``; None while fewer than MIN_DAYS_LEARNED days of history exist."""
    start = today - timedelta(days=BASELINE_DAYS)
    days = await conn.fetchval(
        "SELECT count(DISTINCT day) FROM activity_hourly WHERE camera_id = $1 AND day >= $2 AND day < $3",
        camera_id,
        start,
        today,
    )
    if days < MIN_DAYS_LEARNED:
        return None
    rows = await conn.fetch(
        "SELECT label, sum(images) AS n FROM activity_hourly"
        " WHERE camera_id = $1 AND hour = $2 AND day >= $3 AND day < $4 GROUP BY label",
        camera_id,
        hour,
        start,
        today,
    )
    span = min(BASELINE_DAYS, max(days, 1))
    return {r["label"]: round(r["n"] / span, 3) for r in rows}


async def add_feedback(
    conn: asyncpg.Connection, camera_id: str, zone: str, label: str, hour: int, feedback: str
) -> None:
    column = _column(feedback)
    await conn.execute(
        f"INSERT INTO feedback_stats (camera_id, zone, label, hour, {column}) VALUES ($1, $2, $3, $4, 1)"
        f" ON CONFLICT (camera_id, zone, label, hour) DO UPDATE SET {column} = feedback_stats.{column} + 1",
        camera_id,
        zone,
        label,
        hour,
    )


async def feedback(conn: asyncpg.Connection, camera_id: str, zone: str, label: str, hour: int) -> FeedbackCounts:
    row = await conn.fetchrow(
        "SELECT false_alarm, correct, missed_threat FROM feedback_stats"
        " WHERE camera_id = $1 AND zone = $2 AND label = $3 AND hour = $4",
        camera_id,
        zone,
        label,
        hour,
    )
    if row is None:
        return FeedbackCounts()
    return FeedbackCounts(row["false_alarm"], row["correct"], row["missed_threat"])


async def change_feedback(
    conn: asyncpg.Connection, camera_id: str, zone: str, label: str, hour: int, old: str | None, new: str | None
) -> None:
    """Move an event's feedback from ``old`` to ``new`` in the stats (a correction is not a second vote)."""
    if old == new:
        return
    if old is not None:
        await conn.execute(
            f"UPDATE feedback_stats SET {_column(old)} = greatest({_column(old)} - 1, 0)"
            " WHERE camera_id = $1 AND zone = $2 AND label = $3 AND hour = $4",
            camera_id,
            zone,
            label,
            hour,
        )
    if new is not None:
        await add_feedback(conn, camera_id, zone, label, hour, new)


def _column(feedback: str) -> str:
    if feedback not in ("false_alarm", "correct", "missed_threat"):
        raise ValueError(f"unknown feedback {feedback!r}")
    return feedback
