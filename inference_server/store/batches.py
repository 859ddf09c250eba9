"""batches and batch_images tables: a camera's burst of activity, durable across restarts.

A batch whose window ran out while its activity went on is continued by the next one, which
carries the same event from the start: the batches of one event form a chain
(``continues_batch_id``, ``chain_started_at``), judged together as one activity."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime

import asyncpg

from inference_server.schemas import ContextState
from inference_server.store import context, events


@dataclass(frozen=True, slots=True)
class Batch:
    id: uuid.UUID
    camera_id: str
    opened_at: datetime
    last_activity_at: datetime
    event_id: uuid.UUID | None
    #: When the first batch of this batch's chain (its event) opened; its own ``opened_at`` if none.
    chain_started_at: datetime
    #: The row's version (its ``xmin``, the transaction that last wrote it): equal versions, the
    #: same images (``pipeline/summary.py``).
    version: int
    #: The digest of the camera's retained state messages the last store of this batch queued
    #: (``StateSent``); None: none yet, or another path queued the camera's state since.
    state_sent: bytes | None = None


# chain_started_at is NULL for a batch that starts its chain: it began when the batch opened.
_COLUMNS = (
    "id, camera_id, opened_at, last_activity_at, event_id, coalesce(chain_started_at, opened_at) AS chain_started_at,"
    " xmin::text::bigint AS version, state_sent"
)


def _batch(row: asyncpg.Record) -> Batch:
    return Batch(
        row["id"],
        row["camera_id"],
        row["opened_at"],
        row["last_activity_at"],
        row["event_id"],
        row["chain_started_at"],
        row["version"],
        row["state_sent"],
    )


def _lock_open_sql(camera: str, condition: str = "true") -> str:
    """The camera's open batch, locked for the transaction, for an SQL parameter named by the
    argument (while the SQL boolean ``condition`` holds: else nothing is locked)."""
    return f"SELECT {_COLUMNS} FROM batches WHERE camera_id = {camera} AND closed_at IS NULL AND {condition} FOR UPDATE"


@dataclass(frozen=True, slots=True)
class StateSent:
    """The camera's retained state messages a store queued (their ``digest``), to be remembered on
    its open batch (``batch_id``) in the same transaction: the next store that computes the same
    messages queues none (``pipeline/batch.py``). Written by the outbox insert that queues them
    (``sql``: a data-modifying CTE, no extra round trip)."""

    batch_id: uuid.UUID
    digest: bytes

    def sql(self, first: int) -> tuple[str, list[object]]:
        """The UPDATE, its parameters numbered from ``$first``, and their values."""
        return f"UPDATE batches SET state_sent = ${first + 1} WHERE id = ${first}", [self.batch_id, self.digest]


async def forget_states_sent(conn: asyncpg.Connection, camera_id: str | None = None) -> None:
    """Another path queues the camera's (``None``: every camera's) retained state in this
    transaction: its open batch no longer knows what the broker retains, so its next store queues
    its state whatever it is. The batches are locked in id order (two processes republishing at
    once take them in the same order)."""
    await conn.execute(
        "UPDATE batches SET state_sent = NULL WHERE id IN (SELECT id FROM batches WHERE closed_at IS NULL"
        " AND state_sent IS NOT NULL AND ($1::text IS NULL OR camera_id = $1) ORDER BY id FOR UPDATE)",
        camera_id,
    )


async def lock_open(conn: asyncpg.Connection, camera_id: str) -> Batch | None:
    """The camera's open batch, locked for this transaction."""
    row = await conn.fetchrow(_lock_open_sql("$1"), camera_id)
    return _batch(row) if row is not None else None


@dataclass(frozen=True, slots=True)
class Locked:
    """What ``lock_open_in_context`` reads."""

    #: The camera's open batch, locked for the transaction (None: none is open), as it was locked.
    batch: Batch | None
    #: The household context to judge an image captured at the given time with.
    household: ContextState
    #: The camera's latest event (id, started_at), if any.
    last_event: tuple[uuid.UUID, datetime] | None
    #: ``batch`` after the ``Joining`` images joined it (``add_images``); None when they did not
    #: (none asked, no batch open, it was due, or the statement's condition did not hold).
    joined: Batch | None = None


@dataclass(frozen=True, slots=True)
class Joining:
    """Images that join the open batch in ``lock_open_in_context``'s statement (as ``add_images``
    at ``now``), if it is not due: opened after ``opened_after``, last active after
    ``active_after`` and its chain started after ``chain_after`` (the caller's window, idle time
    and longest event before ``now``)."""

    image_ids: Sequence[int]
    now: datetime
    opened_after: datetime
    active_after: datetime
    chain_after: datetime


@dataclass(frozen=True, slots=True)
class LockQuery:
    """``lock_open_in_context``'s statement in parts, for a statement that takes it in (the
    result stage's store): ``WITH <ctes> SELECT <select>`` with ``args`` as its parameters."""

    ctes: str
    select: str
    args: list[object]
    #: The capture time the household context is read for (``locked_from`` judges with it).
    captured_at: datetime


def lock_query(
    camera: str, first: int, captured_at: datetime, joining: Joining, where: str = "true", lock_if: str = "true"
) -> LockQuery:
    """The lock, the context and latest event, and the join, with the camera as the SQL parameter
    ``camera`` and its own parameters from ``$first`` on; the images join only while ``where``
    (an SQL boolean) holds too. The link and the activity time are written as ``add_images``
    writes them, for the batch locked by the first CTE (the UPDATE takes the row this statement
    already holds). The batch is locked only when ``lock_if`` holds: a statement that must take
    other rows first makes it read the CTE that takes them (the result stage's store)."""
    if captured_at.tzinfo is None:
        raise ValueError("captured_at must be timezone-aware")
    captured, opened, active, chain, ids, now = (f"${first + n}" for n in range(6))
    ctes = (
        f"b AS ({_lock_open_sql(camera, lock_if)}),"
        f" kept AS (SELECT id FROM b WHERE opened_at > {opened} AND last_activity_at > {active}"
        f"  AND chain_started_at > {chain} AND {where}),"
        " linked AS (INSERT INTO batch_images (batch_id, image_id)"
        f"  SELECT kept.id, unnest({ids}::bigint[]) FROM kept ON CONFLICT DO NOTHING),"
        f" joined AS (UPDATE batches SET last_activity_at = greatest(batches.last_activity_at, {now}) FROM kept"
        "  WHERE batches.id = kept.id"
        "  RETURNING batches.last_activity_at AS joined_activity_at, batches.xmin::text::bigint AS joined_version)"
    )
    select = (
        "b.*, c.*, e.id AS last_event_id, e.started_at AS last_event_at, j.* FROM (SELECT 1) AS one"
        " LEFT JOIN b ON true LEFT JOIN joined AS j ON true"
        f" LEFT JOIN ({events.latest_for_camera_sql(camera)}) AS e ON true"
        f" LEFT JOIN ({context.for_capture_sql(captured)}) AS c ON true"
    )
    args: list[object] = [
        captured_at,
        joining.opened_after,
        joining.active_after,
        joining.chain_after,
        list(joining.image_ids),
        joining.now,
    ]
    return LockQuery(ctes, select, args, captured_at)


def locked_from(rows: Sequence[asyncpg.Record], query: LockQuery) -> Locked:
    """``Locked`` of the rows the statement of ``query`` returned."""
    first = rows[0]
    batch = _batch(first) if first["id"] is not None else None
    joined = None
    if batch is not None and first["joined_version"] is not None:
        joined = replace(batch, last_activity_at=first["joined_activity_at"], version=first["joined_version"])
    return Locked(
        batch,
        context.capture_state(rows, query.captured_at),
        (first["last_event_id"], first["last_event_at"]) if first["last_event_id"] is not None else None,
        joined,
    )


async def lock_open_in_context(
    conn: asyncpg.Connection, camera_id: str, captured_at: datetime, joining: Joining | None = None
) -> Locked:
    """``lock_open``, the household context for an image captured at ``captured_at``
    (``context.for_capture``) and the camera's latest event (``events.latest_for_camera``), in one
    round trip; with ``joining``, in the same statement its images join the batch if it is not due
    (``Locked.joined``: the batch after that)."""
    at = captured_at
    query = lock_query("$1", 2, at, joining or Joining((), at, at, at, at), "true" if joining else "false")
    rows = await conn.fetch(f"WITH {query.ctes} SELECT {query.select}", camera_id, *query.args)
    return locked_from(rows, query)


#: A new open batch of camera $2 at $3 (id $1).
_OPEN = "INSERT INTO batches (id, camera_id, opened_at, last_activity_at) VALUES ($1, $2, $3, $3)"


async def open_new(conn: asyncpg.Connection, camera_id: str, now: datetime) -> Batch:
    """A new open batch; fails on the one-open-batch index when the camera has one (the server
    opens through ``open_or_lock``)."""
    row = await conn.fetchrow(
        f"{_OPEN} RETURNING {_COLUMNS}",
        uuid.uuid4(),
        camera_id,
        now,
    )
    assert row is not None
    return _batch(row)


async def open_or_lock(
    conn: asyncpg.Connection, camera_id: str, now: datetime, joining: Sequence[int] = ()
) -> tuple[Batch, bool]:
    """A new open batch for the camera, or, when another transaction (another worker process
    storing the same camera's images at the same moment) opened one first, that one, locked for
    this transaction once the other committed; and whether this call opened it. ``open_new``
    failed on the one-open-batch index then, and the images' jobs lost an attempt. The images
    ``joining`` join a batch this call opens in the statement that opens it (stop 49: a round
    trip of their own, ``add_images``, which the caller still makes for one it did not open)."""
    for _ in range(3):
        row = await conn.fetchrow(
            f"WITH opened AS ({_OPEN} ON CONFLICT (camera_id) WHERE closed_at IS NULL DO NOTHING"
            f" RETURNING {_COLUMNS}),"
            " linked AS (INSERT INTO batch_images (batch_id, image_id) SELECT opened.id, unnest($4::bigint[])"
            " FROM opened ON CONFLICT DO NOTHING)"
            " SELECT * FROM opened",
            uuid.uuid4(),
            camera_id,
            now,
            list(joining),
        )
        if row is not None:
            return _batch(row), True
        # The conflict waited for the other transaction: its batch is committed now (read
        # committed: this statement sees it), unless it was closed since; then open again.
        if (batch := await lock_open(conn, camera_id)) is not None:
            return batch, False
    raise RuntimeError(f"camera {camera_id}'s open batch kept closing while another was opened")


async def open_continuation(conn: asyncpg.Connection, previous: Batch, now: datetime) -> Batch:
    """The batch that continues ``previous`` (closed at ``now``, its window run out while its
    activity went on): the same event from the start, the same chain start, and ``previous``'s
    last activity, so that the chain goes idle ``batch_idle_s`` after its last detection."""
    assert previous.event_id is not None, "only a batch with an event is continued"
    row = await conn.fetchrow(
        "INSERT INTO batches (id, camera_id, opened_at, last_activity_at, event_id, chain_started_at,"
        " continues_batch_id) VALUES ($1, $2, $3, $4, $5, $6, $7)"
        f" RETURNING {_COLUMNS}",
        uuid.uuid4(),
        previous.camera_id,
        now,
        previous.last_activity_at,
        previous.event_id,
        previous.chain_started_at,
        previous.id,
    )
    assert row is not None
    return _batch(row)


async def add_images(conn: asyncpg.Connection, batch: Batch, image_ids: Sequence[int], now: datetime) -> Batch:
    # One round trip: the links and the batch's activity time (a data-modifying CTE always runs).
    row = await conn.fetchrow(
        "WITH linked AS (INSERT INTO batch_images (batch_id, image_id) SELECT $1, unnest($3::bigint[])"
        " ON CONFLICT DO NOTHING)"
        " UPDATE batches SET last_activity_at = greatest(last_activity_at, $2) WHERE id = $1"
        f" RETURNING {_COLUMNS}",
        batch.id,
        now,
        list(image_ids),
    )
    assert row is not None
    return _batch(row)


async def close(conn: asyncpg.Connection, batch_id: uuid.UUID, now: datetime) -> None:
    await conn.execute("UPDATE batches SET closed_at = $2 WHERE id = $1", batch_id, now)


# The batch holds a frame of a video clip whose other frames still wait for the detector: the
# clip is one activity, so idleness does not close the batch before they are all in.
_AWAITS_CLIP_FRAMES = (
    "EXISTS (SELECT 1 FROM batch_images bi JOIN images i ON i.id = bi.image_id"
    " JOIN images f ON f.clip_id = i.clip_id JOIN jobs j ON j.image_id = f.id"
    " WHERE bi.batch_id = batches.id AND i.clip_id IS NOT NULL AND j.state IN ('queued', 'running'))"
)


async def awaits_clip_frames(conn: asyncpg.Connection, batch_id: uuid.UUID, arriving: Sequence[int] = ()) -> bool:
    """Whether frames of a clip the batch holds still wait for the detector (migration 0008), or
    are among the ``arriving`` images (stored now, in the caller's transaction)."""
    value: bool = await conn.fetchval(
        f"SELECT {_AWAITS_CLIP_FRAMES} OR EXISTS (SELECT 1 FROM batch_images bi JOIN images i ON i.id = bi.image_id"
        " JOIN images f ON f.clip_id = i.clip_id WHERE bi.batch_id = batches.id AND f.id = ANY($2::bigint[]))"
        " FROM batches WHERE id = $1",
        batch_id,
        list(arriving),
    )
    return bool(value)


def _due(now: str, window_s: str, idle_s: str, event_max_s: str) -> str:
    """Open batches whose window, idle time (not while clip frames wait) or chain's longest time
    (NULL: none) has run out, for SQL parameters named by the arguments."""
    return (
        f"closed_at IS NULL AND (opened_at <= {now}::timestamptz - make_interval(secs => {window_s})"
        f" OR (last_activity_at <= {now}::timestamptz - make_interval(secs => {idle_s})"
        f" AND NOT {_AWAITS_CLIP_FRAMES}) OR ({event_max_s}::float8 IS NOT NULL"
        f" AND coalesce(chain_started_at, opened_at) <= {now}::timestamptz - make_interval(secs => {event_max_s})))"
    )


async def lock_due(
    conn: asyncpg.Connection,
    now: datetime,
    window_s: float,
    idle_s: float,
    limit: int = 20,
    *,
    event_max_s: float | None = None,
) -> list[Batch]:
    """Open batches whose window, idle time or chain's (event's) longest time (``event_max_s``;
    None: no longest) has run out, locked (skipping ones others hold), oldest first."""
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM batches WHERE {_due('$1', '$2', '$3', '$5')}"
        " ORDER BY opened_at LIMIT $4 FOR UPDATE SKIP LOCKED",
        now,
        window_s,
        idle_s,
        limit,
        event_max_s,
    )
    return [_batch(r) for r in rows]


async def any_due(
    conn: asyncpg.Connection | asyncpg.Pool, now: datetime, window_s: float, idle_s: float, event_max_s: float | None
) -> tuple[bool, datetime | None]:
    """Whether ``lock_due`` would find a batch (locked ones too), without a transaction: the closing
    loop looks before it takes one (one statement a tick instead of three while nothing is due);
    and when the first open batch falls due by its window, idle time or chain's longest time
    (None: no batch is open), so the loop need not look again before then."""
    row = await conn.fetchrow(
        f"SELECT EXISTS (SELECT 1 FROM batches WHERE {_due('$1', '$2', '$3', '$4')}) AS due,"
        " (SELECT min(least(opened_at + make_interval(secs => $2), last_activity_at + make_interval(secs => $3),"
        "   coalesce(chain_started_at, opened_at) + make_interval(secs => $4::float8)))"  # least() skips NULL
        "  FROM batches WHERE closed_at IS NULL) AS next_due",
        now,
        window_s,
        idle_s,
        event_max_s,
    )
    assert row is not None
    return row["due"], row["next_due"]


@dataclass(frozen=True, slots=True)
class BatchDetection:
    image_id: int
    label: str
    confidence: float
    bbox: tuple[float, float, float, float]
    zones: tuple[str, ...]
    captured_at: datetime
    detection_id: int = 0
    #: Recognition wrote an identity for it (``people.identities`` reads which).
    identified: bool = False


async def detections(conn: asyncpg.Connection, batch_id: uuid.UUID) -> list[BatchDetection]:
    """The detections of the batch's activity: its own and, once it has an event, those of every
    batch of that event (a continuing activity is judged as one), oldest capture first."""
    rows = await conn.fetch(
        "SELECT d.id, d.image_id, d.label, d.confidence, d.x1, d.y1, d.x2, d.y2, d.zone, i.captured_at,"
        " EXISTS (SELECT 1 FROM detection_identities di WHERE di.detection_id = d.id) AS identified"
        " FROM batch_images bi JOIN detections d ON d.image_id = bi.image_id JOIN images i ON i.id = bi.image_id"
        " WHERE bi.batch_id = $1 OR bi.batch_id IN (SELECT o.id FROM batches b JOIN batches o"
        "   ON o.event_id = b.event_id WHERE b.id = $1)"
        " ORDER BY i.captured_at, d.id",
        batch_id,
    )
    return [
        BatchDetection(
            r["image_id"],
            r["label"],
            r["confidence"],
            (r["x1"], r["y1"], r["x2"], r["y2"]),
            tuple(z for z in (r["zone"] or "").split(",") if z),
            r["captured_at"],
            r["id"],
            r["identified"],
        )
        for r in rows
    ]


def recent_person_visits_sql(camera: str, exclude: str, since: str) -> str:
    """A scalar subquery, for SQL parameters named by the arguments: the other visits to the camera
    since ``since`` in which a person was detected, i.e. the activities (events; a batch without one
    yet counts alone) other than ``exclude``'s. The batches of one continuing event are one visit."""
    return (
        "(SELECT count(DISTINCT coalesce(b.event_id, b.id)) FROM batches b"
        f" WHERE b.camera_id = {camera} AND b.id <> {exclude} AND b.opened_at >= {since}"
        f" AND (b.event_id = (SELECT event_id FROM batches WHERE id = {exclude})) IS NOT TRUE"
        " AND EXISTS (SELECT 1 FROM batch_images bi JOIN detections d ON d.image_id = bi.image_id"
        "             WHERE bi.batch_id = b.id AND d.label = 'person'))"
    )


async def get(conn: asyncpg.Connection | asyncpg.Pool, batch_id: uuid.UUID) -> Batch | None:
    row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM batches WHERE id = $1", batch_id)
    return _batch(row) if row is not None else None


async def open_count(conn: asyncpg.Connection | asyncpg.Pool) -> int:
    n: int = await conn.fetchval("SELECT count(*) FROM batches WHERE closed_at IS NULL")
    return n
