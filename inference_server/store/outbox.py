"""outbox table: MQTT messages written in the same transaction as the state they announce.

The relay (publish/relay.py) sends them and marks a row sent only after the broker's PUBACK.
"""

from __future__ import annotations

from collections.abc import Sequence
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


_ADD_MANY = (
    "WITH added AS ("
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


async def add_many(conn: asyncpg.Connection, messages: list[tuple[str, bytes, bool]]) -> list[OutboxMessage]:
    """Queue (topic, payload, retain) messages at QoS 1 and wake the relay, in one round trip
    (the notification, which lists the new rows' ids, is delivered when the caller's transaction
    commits, like ``NOTIFY``); the rows, in ``messages``' order, for ``OutboxRelay.offer`` once
    the transaction has committed."""
    if not messages:
        return []
    topics, payloads, retains = zip(*messages, strict=True)
    ids: list[int] = await conn.fetchval(_ADD_MANY, list(topics), list(payloads), list(retains))
    return [OutboxMessage(i, t, p, r, 1) for i, (t, p, r) in zip(ids, messages, strict=True)]


def no_offer(_: Sequence[OutboxMessage]) -> None:
    """Where no relay takes committed rows in hand (``OutboxRelay.offer``): they are read back."""


async def any_pending(conn: asyncpg.Connection | asyncpg.Pool) -> bool:
    """Whether a row waits to be sent (locked ones too), without a transaction."""
    found: bool = await conn.fetchval("SELECT EXISTS (SELECT 1 FROM outbox WHERE sent_at IS NULL)")
    return found


async def pending(conn: asyncpg.Connection, limit: int) -> list[OutboxMessage]:
    """Up to ``limit`` unsent rows, oldest first, without locking them: for the one relay that
    holds the relay lock (``publish/relay.py``), outside a transaction."""
    rows = await conn.fetch(
        "SELECT id, topic, payload, retain, qos FROM outbox WHERE sent_at IS NULL ORDER BY id LIMIT $1", limit
    )
    return [OutboxMessage(r["id"], r["topic"], bytes(r["payload"]), r["retain"], r["qos"]) for r in rows]


async def mark_sent(conn: asyncpg.Connection, ids: list[int]) -> None:
    await conn.execute("UPDATE outbox SET sent_at = now(), attempts = attempts + 1 WHERE id = ANY($1)", ids)


async def mark_failed(conn: asyncpg.Connection, ids: list[int], error: str) -> None:
    await conn.execute("UPDATE outbox SET attempts = attempts + 1, last_error = $2 WHERE id = ANY($1)", ids, error)


async def pending_count(conn: asyncpg.Connection | asyncpg.Pool) -> int:
    n: int = await conn.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL")
    return n
