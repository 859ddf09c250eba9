"""store/outbox.py: messages wait in order until marked sent; a failure keeps them pending; the relay is woken."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from inference_server.store import outbox


@pytest.fixture
async def conn(pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Connection]:
    async with pool.acquire() as conn:
        yield conn


async def test_pending_messages_come_oldest_first_up_to_the_limit(conn: asyncpg.Connection) -> None:
    first = await outbox.add(conn, "hsi/a", b"1", retain=True)
    second = await outbox.add(conn, "hsi/b", b"2", qos=0)
    await outbox.add(conn, "hsi/c", b"3")

    assert await outbox.pending(conn, 2) == [
        outbox.OutboxMessage(first, "hsi/a", b"1", True, 1),
        outbox.OutboxMessage(second, "hsi/b", b"2", False, 0),
    ]
    assert await outbox.pending_count(conn) == 3


async def test_a_sent_message_leaves_the_queue_and_a_failed_one_stays_with_its_error(conn: asyncpg.Connection) -> None:
    sent = await outbox.add(conn, "hsi/a", b"1")
    failed = await outbox.add(conn, "hsi/b", b"2")

    await outbox.mark_sent(conn, [sent])
    await outbox.mark_failed(conn, [failed], "broker unreachable")
    await outbox.mark_failed(conn, [failed], "still unreachable")

    assert await outbox.pending_count(conn) == 1
    assert [m.id for m in await outbox.pending(conn, 10)] == [failed]
    rows = {r["id"]: r for r in await conn.fetch("SELECT id, sent_at, attempts, last_error FROM outbox")}
    assert rows[sent]["sent_at"] is not None and rows[sent]["attempts"] == 1
    assert rows[failed]["sent_at"] is None and rows[failed]["attempts"] == 2
    assert rows[failed]["last_error"] == "still unreachable"


async def test_add_many_queues_in_the_callers_order_at_qos_1_and_nothing_for_an_empty_list(
    conn: asyncpg.Connection,
) -> None:
    await outbox.add_many(conn, [])
    assert await outbox.pending_count(conn) == 0

    messages = [(f"hsi/{n}", bytes([n]), n % 2 == 0) for n in (5, 3, 9, 1)]
    await outbox.add_many(conn, messages)

    waiting = await outbox.pending(conn, 10)
    assert [(m.topic, m.payload, m.retain) for m in waiting] == messages
    assert {m.qos for m in waiting} == {1}


async def test_a_large_payload_is_stored_as_it_is_without_compression(conn: asyncpg.Connection) -> None:
    """A snapshot's JPEG does not compress: PostgreSQL's pglz spent 0.8 ms of the backend's CPU
    a snapshot finding that out (bench/outbox_payload.py). The outbox stores every payload as
    given; a highly compressible one shows it (compressed, it would take a few hundred bytes)."""
    payload = b'{"objects": {"person": 1}} ' * 4000  # 108 kB of repeated text
    [added] = await outbox.add_many(conn, [("hsi/cameras/front/snapshot", payload, True)])
    stored = await conn.fetchrow("SELECT payload, pg_column_size(payload) AS size FROM outbox WHERE id = $1", added.id)
    assert stored["payload"] == payload
    assert stored["size"] >= len(payload)
    small = await outbox.add(conn, "hsi/a", b"1")  # a small one stays in the row, as before
    assert await conn.fetchval("SELECT pg_column_size(payload) FROM outbox WHERE id = $1", small) <= 8
    [message] = [m for m in await outbox.pending(conn, 10) if m.id == added.id]
    assert message.payload == payload


async def test_adding_wakes_a_listener_once_the_transaction_commits(
    pool: asyncpg.Pool, conn: asyncpg.Connection
) -> None:
    woken: asyncio.Queue[str] = asyncio.Queue()

    def wake(_conn: object, _pid: int, channel: str, _payload: str) -> None:
        woken.put_nowait(channel)

    async with pool.acquire() as listener:
        await listener.add_listener(outbox.NOTIFY_CHANNEL, wake)
        try:
            async with conn.transaction():
                await outbox.add(conn, "hsi/a", b"1")
                await outbox.add_many(conn, [("hsi/b", b"2", False)])
                assert woken.empty()  # PostgreSQL delivers notifications at commit
            channel = await asyncio.wait_for(woken.get(), timeout=30)
        finally:
            await listener.remove_listener(outbox.NOTIFY_CHANNEL, wake)
    assert channel == outbox.NOTIFY_CHANNEL


def test_sent_marks_go_to_one_insert_and_wait_again_when_its_transaction_fails() -> None:
    """``SentMarks``: what the broker acknowledged is taken by one insert at a time; a rolled-back
    insert gives it back (with its first acknowledgement time), a committed one drops it; ``due``
    counts from the oldest acknowledgement; everything not yet marked is ``held``."""
    marks = outbox.SentMarks()
    assert marks.due(100.0) is None and marks.take() == []
    marks.acked([3, 4], now=100.0)
    marks.acked([5], now=101.0)
    assert marks.due(100.5) == pytest.approx(outbox.MARK_WAIT_S - 0.5)
    taken = marks.take()
    assert taken == [3, 4, 5] and marks.take() == [] and marks.due(100.5) is None
    assert sorted(marks.held()) == [3, 4, 5]
    marks.settle(taken, committed=False)
    assert marks.due(100.5) == pytest.approx(outbox.MARK_WAIT_S - 0.5)  # still the first acknowledgement's
    again = marks.take()
    marks.acked([6], now=102.0)
    marks.settle(again, committed=True)
    assert marks.held() == [6] and marks.due(200.0) == 0.0


async def test_an_insert_writes_the_marks_it_carries_and_leaves_marked_rows_as_they_are(
    conn: asyncpg.Connection,
) -> None:
    sent = await outbox.add(conn, "hsi/a", b"1")
    already = await outbox.add(conn, "hsi/b", b"2")
    await outbox.mark_sent(conn, [already])
    await outbox.mark_sent(conn, [already])  # marked once: the attempt is counted once
    added = await outbox.add_many(conn, [("hsi/c", b"3", True)], [sent, already])
    assert [m.id for m in await outbox.pending(conn, 10)] == [added[0].id]
    assert [m.id for m in await outbox.pending(conn, 10, held=[added[0].id])] == []
    attempts = dict(await conn.fetch("SELECT id, attempts FROM outbox WHERE sent_at IS NOT NULL"))
    assert attempts == {sent: 1, already: 1}


def test_marks_given_back_by_a_failed_insert_are_due_from_their_own_acknowledgement() -> None:
    """A mark taken by an insert that then failed waits again behind marks acknowledged after it:
    the relay's deadline is still the oldest one's (it took a newer mark's, up to ``MARK_WAIT_S``
    late, when it read the first in the dict)."""
    marks = outbox.SentMarks()
    marks.acked([3], now=100.0)
    taken = marks.take()
    marks.acked([4], now=101.5)
    marks.settle(taken, committed=False)
    assert marks.due(101.5) == pytest.approx(outbox.MARK_WAIT_S - 1.5)
