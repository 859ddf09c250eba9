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
