"""outbox table: MQTT messages written in the same transaction as the state they announce.

The relay (publish/relay.py) sends them and marks a row sent only after the broker's PUBACK.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import asyncpg

NOTIFY_CHANNEL = "hsi_outbox"


@dataclass(frozen=True, slots=True)
class OutboxMessage:
    id: int
    topic: str
    payload: bytes
    retain: bool
    qos: int


#: Most row ids a notification lists (a payload holds 8,000 bytes): beyond, it lists none and the
#: relay reads the rows back.
ANNOUNCED_MAX = 500


def announced(payload: str) -> list[int] | None:
    """The row ids a notification on ``NOTIFY_CHANNEL`` lists; None when it lists none (too many
    rows, or sent by an earlier version): the relay must read the waiting rows back."""
    if not payload:
        return None
    try:
        return [int(part) for part in payload.split(",")]
    except ValueError:
        return None


async def add(conn: asyncpg.Connection, topic: str, payload: bytes, *, retain: bool = False, qos: int = 1) -> int:
    """Queue one message and wake the relay (at commit), in one round trip; its row id."""
    mid: int = await conn.fetchval(
        "WITH added AS (INSERT INTO outbox (topic, payload, retain, qos) VALUES ($1, $2, $3, $4) RETURNING id)"
        f" SELECT id, pg_notify('{NOTIFY_CHANNEL}', id::text) FROM added",
        topic,
        payload,
        retain,
        qos,
    )
    return mid


#: Seconds a row the broker acknowledged may wait for a store or an outbox insert of this process
#: to write its mark (``SentMarks``) before the relay writes it in a statement of its own.
MARK_WAIT_S = 2.0
#: Most marks one insert carries.
_CARRIED_MAX = 1000


class SentMarks:
    """Rows the broker has acknowledged whose mark (``sent_at``) the database does not have yet.

    The relay puts them here (``acked``) instead of marking them at once, and the next store of
    this process writes the marks in its own statement (``take``, then the store statement of a
    picture with detections or ``add_many``'s ``marks``, then ``settle`` once its transaction has
    ended, as written or not): a camera sending a picture a second stores its next picture
    within the second, so the relay's mark, a statement and a commit a picture, is not needed.
    The ones that wait ``MARK_WAIT_S`` (no store came) the relay marks itself (``due``,
    ``take``). Until marked, a row would be sent again after a crash,
    as one cut off between the broker's acknowledgement and its mark always was: delivery is at
    least once and consumers de-duplicate by event id (docs/decisions.md, "The relay's marks ride
    on the next store"). The relay's read-back leaves these rows out (``held``)."""

    def __init__(self) -> None:
        #: Acknowledged, waiting for a store to carry the mark: id -> when (loop time).
        self._waiting: dict[int, float] = {}
        #: Taken by an insert whose transaction has not ended yet.
        self._carried: dict[int, float] = {}

    def acked(self, ids: Iterable[int], now: float) -> None:
        for i in ids:
            self._waiting.setdefault(i, now)

    def take(self) -> list[int]:
        """The waiting marks, for one insert to write (no other insert gets them meanwhile)."""
        taken = list(self._waiting)[:_CARRIED_MAX]
        for i in taken:
            self._carried[i] = self._waiting.pop(i)
        return taken

    def settle(self, taken: Sequence[int], *, committed: bool) -> None:
        """The transaction that carried ``taken`` has ended: written, or waiting again."""
        for i in taken:
            when = self._carried.pop(i, None)
            if not committed and when is not None:
                self._waiting[i] = when

    def due(self, now: float) -> float | None:
        """Seconds until the oldest waiting mark is the relay's to write (0: now); None: none waits.
        (The oldest, not the first in the dict: marks a failed insert gave back come after newer ones.)"""
        oldest = min(self._waiting.values(), default=None)
        return None if oldest is None else max(0.0, oldest + MARK_WAIT_S - now)

    def held(self) -> list[int]:
        """Every row acknowledged and not yet marked: not to be sent again meanwhile."""
        return [*self._waiting, *self._carried]


def mark_sent_sql(ids: str) -> str:
    """Mark the rows of the SQL array ``ids`` sent; a row marked already is left as it is (its
    attempt counted once)."""
    return f"UPDATE outbox SET sent_at = now(), attempts = attempts + 1 WHERE id = ANY({ids}) AND sent_at IS NULL"


def _add_many_sql(also: str = "") -> str:
    """The outbox insert (``add_many``), with ``also``, a data-modifying CTE of the caller's, in
    the same statement."""
    return (
        f"WITH marked AS ({mark_sent_sql('$4::bigint[]')}),{f' also AS ({also}),' if also else ''}"
        " added AS ("
        " INSERT INTO outbox (topic, payload, retain, qos)"
        " SELECT m.topic, m.payload, m.retain, 1"
        " FROM unnest($1::text[], $2::bytea[], $3::boolean[]) WITH ORDINALITY AS m(topic, payload, retain, n)"
        " ORDER BY m.n"  # ids in the caller's order: the relay sends in id order (order per camera)
        " RETURNING id)"
        " SELECT array_agg(id ORDER BY id) AS ids,"
        f" pg_notify('{NOTIFY_CHANNEL}',"
        f" CASE WHEN count(*) <= {ANNOUNCED_MAX} THEN string_agg(id::text, ',' ORDER BY id) ELSE '' END)"
        " FROM added HAVING count(*) > 0"
    )


_ADD_MANY = _add_many_sql()

#: A statement of the caller's to run with the insert (``add_many``'s ``also``): given the number
#: of its first parameter, its SQL and its parameters' values.
Also = Callable[[int], tuple[str, list[object]]]


async def add_many(
    conn: asyncpg.Connection,
    messages: list[tuple[str, bytes, bool]],
    marks: Sequence[int] = (),
    also: Also | None = None,
) -> list[OutboxMessage]:
    """Queue (topic, payload, retain) messages at QoS 1 and wake the relay, in one round trip
    (the notification, which lists the new rows' ids, is delivered when the caller's transaction
    commits, like ``NOTIFY``); the rows, in ``messages``' order, for ``OutboxRelay.offer`` once
    the transaction has committed. ``marks``: rows the broker acknowledged (``SentMarks.take``),
    marked sent by the same statement; with no message, the caller must not have taken any.
    ``also``: a data-modifying statement that goes with these messages (``batches.StateSent``),
    run by the same statement."""
    if not messages:
        assert not marks and also is None, "marks or a statement for an insert that writes nothing"
        return []
    topics, payloads, retains = zip(*messages, strict=True)
    sql, extra = (_ADD_MANY, []) if also is None else _also(also)
    ids: list[int] = await conn.fetchval(sql, list(topics), list(payloads), list(retains), list(marks), *extra)
    return [OutboxMessage(i, t, p, r, 1) for i, (t, p, r) in zip(ids, messages, strict=True)]


def _also(also: Also) -> tuple[str, list[object]]:
    cte, args = also(5)
    return _add_many_sql(cte), args


def no_offer(_: Sequence[OutboxMessage]) -> None:
    """Where no relay takes committed rows in hand (``OutboxRelay.offer``): they are read back."""


async def any_pending(conn: asyncpg.Connection | asyncpg.Pool) -> bool:
    """Whether a row waits to be sent (locked ones too), without a transaction."""
    found: bool = await conn.fetchval("SELECT EXISTS (SELECT 1 FROM outbox WHERE sent_at IS NULL)")
    return found


async def pending(conn: asyncpg.Connection, limit: int, held: Sequence[int] = ()) -> list[OutboxMessage]:
    """Up to ``limit`` unsent rows, oldest first, without locking them: for the one relay that
    holds the relay lock (``publish/relay.py``), outside a transaction. ``held``: rows sent whose
    mark is still to be written (``SentMarks.held``), left out."""
    rows = await conn.fetch(
        "SELECT id, topic, payload, retain, qos FROM outbox WHERE sent_at IS NULL AND id <> ALL($2::bigint[])"
        " ORDER BY id LIMIT $1",
        limit,
        list(held),
    )
    return [OutboxMessage(r["id"], r["topic"], bytes(r["payload"]), r["retain"], r["qos"]) for r in rows]


async def mark_sent(conn: asyncpg.Connection | asyncpg.Pool, ids: list[int]) -> None:
    """Mark rows sent (those an insert marked meanwhile are left as they are)."""
    await conn.execute(mark_sent_sql("$1"), ids)


async def mark_failed(conn: asyncpg.Connection, ids: list[int], error: str) -> None:
    await conn.execute("UPDATE outbox SET attempts = attempts + 1, last_error = $2 WHERE id = ANY($1)", ids, error)


async def pending_count(conn: asyncpg.Connection | asyncpg.Pool) -> int:
    n: int = await conn.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL")
    return n
