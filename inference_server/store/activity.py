"""activity_hourly and feedback_stats: what is usual for a camera, and what people told us."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta

import asyncpg

from inference_server.domain import FeedbackCounts
from inference_server.store import batches

BASELINE_DAYS = 14
#: Days of history (before today) needed before "unusual for this hour" is judged at all.
MIN_DAYS_LEARNED = 3


Hourly = tuple[list[str], list[date], list[int], list[int]]


def hourly_counts(images: Iterable[tuple[date, int, Iterable[str]]]) -> Hourly:
    """Each image counted once per label it shows, for its camera's day and hour (local time),
    as the parallel arrays ``hourly_upsert`` takes: labels, days, hours, images."""
    counts: Counter[tuple[str, date, int]] = Counter()
    for day, hour, labels in images:
        counts.update((label, day, hour) for label in set(labels))
    keys = sorted(counts)
    return [k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys], [counts[k] for k in keys]


def hourly_upsert(camera: str, labels: str, days: str, hours: str, counts: str, where: str = "TRUE") -> str:
    """The statement adding ``hourly_counts`` to a camera's counts, for SQL parameters named by the
    arguments (also a data-modifying CTE of the detections' insert: ``detections.insert_images``),
    only when the condition ``where`` holds."""
    return (
        "INSERT INTO activity_hourly (camera_id, label, day, hour, images)"
        f" SELECT {camera}, l, d, h, n FROM unnest({labels}::text[], {days}::date[], {hours}::int[], {counts}::int[])"
        f" AS a (l, d, h, n) WHERE {where}"
        " ON CONFLICT (camera_id, label, hour, day) DO UPDATE SET images = activity_hourly.images + EXCLUDED.images"
    )


async def record_images(
    conn: asyncpg.Connection, camera_id: str, images: Iterable[tuple[date, int, Iterable[str]]]
) -> None:
    """Count each image once per label it shows, for its camera's day and hour (local time):
    several images of one camera in one statement, each ``(day, hour, labels)``."""
    counts = hourly_counts(images)
    if counts[0]:
        await conn.execute(hourly_upsert("$1", "$2", "$3", "$4", "$5"), camera_id, *counts)


def _baseline_columns(camera: str, start: str, today: str, hour: str) -> str:
    """The baseline's two columns, for SQL parameters named by the arguments: the days of history
    and each label's images at the hour over them (JSON)."""
    return (
        f"(SELECT count(DISTINCT day) FROM activity_hourly WHERE camera_id = {camera} AND day >= {start}"
        f" AND day < {today}) AS baseline_days,"
        " (SELECT json_object_agg(label, n) FROM (SELECT label, sum(images) AS n FROM activity_hourly"
        f" WHERE camera_id = {camera} AND hour = {hour} AND day >= {start} AND day < {today} GROUP BY label) t)"
        " AS baseline_counts"
    )


def _baseline_of(row: asyncpg.Record) -> dict[str, float] | None:
    days: int = row["baseline_days"]
    if days < MIN_DAYS_LEARNED:
        return None
    span = min(BASELINE_DAYS, max(days, 1))
    counts: dict[str, int] = row["baseline_counts"] or {}  # JSON, decoded by the pool's codec (store/db.py)
    return {label: round(n / span, 3) for label, n in counts.items()}


#: Feedback changes made by this process (``add_feedback``, ``change_feedback``): a history kept
#: in memory (``BatchStage``) is read again after one.
_feedback_changes = 0


def feedback_changes() -> int:
    """How many feedback changes this process has made (a history read before one is stale)."""
    return _feedback_changes


async def add_feedback(
    conn: asyncpg.Connection, camera_id: str, zone: str, label: str, hour: int, feedback: str
) -> None:
    global _feedback_changes
    _feedback_changes += 1
    column = _column(feedback)
    await conn.execute(
        f"INSERT INTO feedback_stats (camera_id, zone, label, hour, {column}) VALUES ($1, $2, $3, $4, 1)"
        f" ON CONFLICT (camera_id, zone, label, hour) DO UPDATE SET {column} = feedback_stats.{column} + 1",
        camera_id,
        zone,
        label,
        hour,
    )


def _feedback_join(camera: str, zone: str, label: str, hour: str) -> str:
    """A ``FROM`` that gives one row, with the feedback counts when there are any (else NULLs)."""
    return (
        "FROM (VALUES (1)) AS one LEFT JOIN feedback_stats f"
        f" ON f.camera_id = {camera} AND f.zone = {zone} AND f.label = {label} AND f.hour = {hour}"
    )


def _feedback_of(row: asyncpg.Record) -> FeedbackCounts:
    if row["false_alarm"] is None:
        return FeedbackCounts()
    return FeedbackCounts(row["false_alarm"], row["correct"], row["missed_threat"])


@dataclass(frozen=True, slots=True)
class History:
    """What the rules weigh about a camera besides the batch itself."""

    baseline: dict[str, float] | None
    recent_visits: int
    feedback: FeedbackCounts


async def history(
    conn: asyncpg.Connection,
    camera_id: str,
    local: datetime,
    *,
    batch_id: uuid.UUID,
    visits_since: datetime,
    zone: str,
    label: str,
) -> History:
    """What the rules weigh besides the batch, in one round trip (a judgement asks for every group
    of images whose history could lift it to the alert level):

    - ``baseline``: average images per hour with each label at ``local``'s hour over the last
      BASELINE_DAYS days before its day; None while fewer than MIN_DAYS_LEARNED days are learned.
    - ``recent_visits``: see ``batches.recent_person_visits_sql`` (other visits since ``visits_since``).
    - ``feedback``: the votes for the batch's top detection's zone and label at that hour."""
    today = local.date()
    row = await conn.fetchrow(
        f"SELECT {_baseline_columns('$1', '$2', '$3', '$4')},"
        f" {batches.recent_person_visits_sql('$1', '$7', '$8')} AS recent_visits,"
        f" f.false_alarm, f.correct, f.missed_threat {_feedback_join('$1', '$5', '$6', '$4')}",
        camera_id,
        today - timedelta(days=BASELINE_DAYS),
        today,
        local.hour,
        zone,
        label,
        batch_id,
        visits_since,
    )
    assert row is not None
    return History(_baseline_of(row), row["recent_visits"], _feedback_of(row))


async def change_feedback(
    conn: asyncpg.Connection, camera_id: str, zone: str, label: str, hour: int, old: str | None, new: str | None
) -> None:
    """Move an event's feedback from ``old`` to ``new`` in the stats (a correction is not a second vote)."""
    global _feedback_changes
    if old == new:
        return
    _feedback_changes += 1
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
