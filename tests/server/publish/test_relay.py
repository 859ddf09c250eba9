"""Outbox rows are marked sent only after the broker acknowledged them: an event created while
the broker is down is published once it is back."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from bench.roundtrips import RoundTrips
from inference_server import demo_assets
from inference_server.comms.mqtt import BrokerAddress, MqttPublisher
from inference_server.comms.topics import Topics
from inference_server.config import Settings
from inference_server.detection.ultralytics_backend import UltralyticsDetector
from inference_server.publish.relay import _LOCK_KEY, POLL_S, OutboxRelay
from inference_server.schemas import CameraCreate, CameraState
from inference_server.store import cameras, outbox
from inference_server.store.db import create_pool
from inference_server.store.migrate import migrate
from tests.server.ingest.conftest import with_comment
from tests.support.mqtt import Subscriber
from tests.support.net import free_port
from tests.support.waiting import wait_until

from ..conftest import drop, running


class Mosquitto:
    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.conf = folder / "mosquitto.conf"
        self.conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.proc = subprocess.Popen([binary, "-c", str(self.conf)], stderr=subprocess.DEVNULL)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(5)
            self.proc = None


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[Mosquitto]:
    broker = Mosquitto(tmp_path)
    broker.start()
    yield broker
    broker.stop()


async def test_event_made_during_broker_outage_is_published_after_it_returns(
    make_settings: Callable[..., Settings], pose_detector: UltralyticsDetector, own_broker: Mosquitto
) -> None:
    settings = make_settings(mqtt_url=own_broker.url)
    async with running(settings, pose_detector) as server:
        own_broker.stop()
        await wait_until(lambda: not server._publisher.connected.is_set(), timeout=10)  # type: ignore[union-attr]

        drop(demo_assets.image("zidane.jpg"), settings.cameras_path / "porch" / "MDAlarm_20261124-220000.jpg")
        event_id = await wait_until(
            lambda: server.pool.fetchval("SELECT id FROM events WHERE ended_at IS NOT NULL"), timeout=30
        )
        topics = [r["topic"] for r in await server.pool.fetch("SELECT topic FROM outbox WHERE sent_at IS NULL")]
        # All waiting for the broker: the live camera state while the person was seen, then the
        # event opened and ended when the camera went quiet, and the quiet camera state.
        assert sorted(topics) == sorted(
            [
                "hsi/cameras/porch/state",
                "hsi/cameras/porch/objects/person",
                "hsi/cameras/porch/snapshot",
                "hsi/events",
                "hsi/events",
                "hsi/cameras/porch/state",
                "hsi/cameras/porch/objects/person",
            ]
        )

        own_broker.start()
        await wait_until(
            lambda: server.pool.fetchval("SELECT count(*) = 0 FROM outbox WHERE sent_at IS NULL"), timeout=60
        )
        # The restarted broker keeps nothing from before the outage: what a subscriber finds
        # retained now was published by the relay after the broker came back.
        subscriber = await Subscriber(own_broker.url, "hsi/cameras/porch/state").ready(timeout=20)
        try:
            message = await subscriber.wait_for(lambda m: m.topic == "hsi/cameras/porch/state", timeout=10)
            assert message.retain
            assert CameraState.model_validate_json(message.payload).last_event_id == event_id
        finally:
            subscriber.close()


@asynccontextmanager
async def _relay(
    database_url: str, broker: Mosquitto, *, lead: bool = True, **options: float
) -> AsyncIterator[tuple[OutboxRelay, asyncpg.Pool]]:
    """A real relay on a migrated database and a real broker, running until the block ends
    (``lead``: once it holds the relay lock; else at once, another relay may hold it)."""
    pool = await create_pool(database_url, 4)  # the relay's listener and pass, and the stores
    await migrate(pool)
    publisher = MqttPublisher(BrokerAddress.parse(broker.url), Topics("hsi"), f"relay-test-{uuid.uuid4().hex[:8]}", [])
    await publisher.start()
    relay = OutboxRelay(pool, publisher, **options)
    stop = asyncio.Event()
    running_relay = asyncio.create_task(relay.run(stop))
    try:
        if lead:
            # Listening, then the relay lock taken on that connection at its first pass.
            await wait_until(lambda: pool.fetchval(_LEADING, _LOCK_KEY), timeout=10)
        yield relay, pool
    finally:
        stop.set()
        await running_relay
        await publisher.stop()
        await pool.close()


#: The relay's own mark (when no store of this process carries it).
_MARK = "UPDATE outbox SET sent_at = now(), attempts = attempts + 1 WHERE id = ANY($1) AND sent_at IS NULL"
_LEADING = "SELECT count(*) > 0 FROM pg_locks WHERE locktype = 'advisory' AND granted AND objid = $1::bigint::oid"


async def _store(pool: asyncpg.Pool, camera: str) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await outbox.add_many(conn, [(f"hsi/cameras/{camera}/state", b"{}", True)])


def _all_sent(pool: asyncpg.Pool) -> Awaitable[bool]:
    return pool.fetchval("SELECT count(*) = 0 FROM outbox WHERE sent_at IS NULL")  # type: ignore[no-any-return]


async def test_stores_committed_together_are_relayed_in_one_pass(database_url: str, own_broker: Mosquitto) -> None:
    """One inferred batch is stored in a transaction per camera, committed milliseconds apart.
    Once woken, the relay waits ``outbox_gather_ms`` (here 0.5 s, for a loaded test machine), so
    they go out in one pass (read, mark sent) rather than one pass each (issue 20)."""
    async with _relay(database_url, own_broker, gather_s=0.5) as (relay, pool):
        passes = 0
        relay_once = relay.relay_once

        async def counting() -> int:
            nonlocal passes
            passes += 1
            return await relay_once()

        relay.relay_once = counting  # type: ignore[method-assign]
        for camera in ("a", "b", "c", "d"):
            await _store(pool, camera)
            await asyncio.sleep(0.02)
        await wait_until(lambda: _all_sent(pool), timeout=20)
    assert passes == 1


async def test_a_row_committed_while_a_pass_runs_is_sent_without_waiting_for_the_poll(
    database_url: str, own_broker: Mosquitto
) -> None:
    """The pass locks the rows committed so far; a store committed after that wakes the relay
    again. The wake-up used to be cleared after the pass, so that row waited for the next poll
    (1 s in the server; 60 s here to make it plain)."""
    async with _relay(database_url, own_broker, poll_interval_s=60) as (relay, pool):
        relay_once = relay.relay_once
        first = True

        async def committing_during_the_pass() -> int:
            nonlocal first
            sent = await relay_once()
            if first:
                first = False
                await _store(pool, "late")  # its notification arrives while this pass still runs
            return sent

        relay.relay_once = committing_during_the_pass  # type: ignore[method-assign]
        await _store(pool, "early")
        await wait_until(lambda: _all_sent(pool), timeout=10)


async def test_an_idle_poll_is_one_statement_and_still_finds_rows_nobody_announced(
    database_url: str, own_broker: Mosquitto
) -> None:
    """The poll is for rows whose wake-up was missed (committed while the listener reconnected,
    or by a process that does not notify); while nothing waits it looks without a transaction:
    one statement, not BEGIN, a locking read and COMMIT (stop 29)."""
    async with _relay(database_url, own_broker, poll_interval_s=0.2) as (_, pool):
        await asyncio.sleep(0.5)
        with RoundTrips() as trips:
            await asyncio.sleep(1.5)
        assert "BEGIN;" not in trips.by_statement
        assert sum(n for text, n in trips.by_statement.items() if "FROM outbox WHERE sent_at IS NULL" in text) >= 3
        await pool.execute("INSERT INTO outbox (topic, payload, retain) VALUES ('hsi/unannounced', '\\x7b7d', false)")
        await wait_until(lambda: _all_sent(pool), timeout=10)


async def test_a_pass_is_two_statements_without_a_transaction(database_url: str, own_broker: Mosquitto) -> None:
    """A pass reads the waiting rows and marks them sent, one statement each on the relay's own
    connection under its lock: it used to be BEGIN, a locking read, the mark and COMMIT, four
    round trips for every picture a camera sends a second (stop 33). (No outbox insert of this
    process comes to carry the mark: the relay writes it after ``MARK_WAIT_S``.)"""
    async with _relay(database_url, own_broker, poll_interval_s=60) as (_, pool):
        with RoundTrips() as trips:
            await _store(pool, "a")  # BEGIN, the insert and its wake-up, COMMIT: the store's own
            await wait_until(lambda: _all_sent(pool), timeout=10)
        relayed = {
            text: n
            for text, n in trips.by_statement.items()
            if text.startswith(("SELECT id, topic, payload", "UPDATE outbox", "SELECT pg_try_advisory_lock"))
        }
        assert trips.by_statement["BEGIN;"] == trips.by_statement["COMMIT;"] == 1  # the store's
        assert sorted(relayed) == [
            "SELECT id, topic, payload, retain, qos FROM outbox WHERE sent_at IS NULL AND id <> ALL($2::bigint[])"
            " ORDER BY id LIMIT $1",
            _MARK,
        ]
        assert list(relayed.values()) == [1, 1]


async def _store_handed(relay: OutboxRelay, pool: asyncpg.Pool, camera: str) -> None:
    """A store as the result stage makes it: committed, then its rows handed to the relay."""
    async with pool.acquire() as conn, conn.transaction():
        added = await outbox.add_many(conn, [(f"hsi/cameras/{camera}/state", f'{{"c":"{camera}"}}'.encode(), True)])
    relay.offer(added)


async def test_rows_handed_over_after_their_commit_are_sent_without_reading_them_back(
    database_url: str, own_broker: Mosquitto
) -> None:
    """The store's rows go to this process's relay in hand: the pass only marks them sent, one
    statement instead of two (read and mark) for every picture of a camera sending one a second
    (stop 35; since stop 37 that mark rides on the next store when one comes, below). The
    notification, which lists the rows, wakes no second pass."""
    subscriber = await Subscriber(own_broker.url, "hsi/cameras/+/state").ready(timeout=20)
    try:
        async with _relay(database_url, own_broker, poll_interval_s=60, gather_s=0.05) as (relay, pool):
            for camera in ("a", "b"):
                with RoundTrips() as trips:
                    await _store_handed(relay, pool, camera)
                    await wait_until(lambda: _all_sent(pool), timeout=10)
                    await asyncio.sleep(0.3)  # a pass the notification woke would be done by now
                relayed = {
                    t: n for t, n in trips.by_statement.items() if t.startswith(("SELECT id, topic", "UPDATE outbox"))
                }
                assert relayed == {_MARK: 1}
            messages = [await subscriber.wait_for(lambda m, c=c: m.topic == f"hsi/cameras/{c}/state") for c in "ab"]
            assert [m.payload for m in messages] == [b'{"c":"a"}', b'{"c":"b"}']
        # Sent as they were stored: retained (a new subscriber gets them from the broker).
        late = await Subscriber(own_broker.url, "hsi/cameras/+/state").ready(timeout=20)
        try:
            retained = [await late.wait_for(lambda m, c=c: m.topic == f"hsi/cameras/{c}/state") for c in "ab"]
            assert [(m.payload, m.retain) for m in retained] == [(b'{"c":"a"}', True), (b'{"c":"b"}', True)]
        finally:
            late.close()
    finally:
        subscriber.close()


async def test_a_row_announced_but_not_handed_over_is_read_back_with_the_others_in_order(
    database_url: str, own_broker: Mosquitto
) -> None:
    """A row committed by another process (announced, not handed over) among handed ones: the
    pass reads what waits and sends all of it in id order, each once."""
    subscriber = await Subscriber(own_broker.url, "hsi/cameras/+/state").ready(timeout=20)
    try:
        async with _relay(database_url, own_broker, poll_interval_s=60, gather_s=0.3) as (relay, pool):
            with RoundTrips() as trips:
                await _store_handed(relay, pool, "first")
                await _store(pool, "other")  # another process's store: only its notification comes
                await _store_handed(relay, pool, "last")
                await wait_until(lambda: _all_sent(pool), timeout=10)
            assert any(t.startswith("SELECT id, topic, payload") for t in trips.by_statement)
            await asyncio.sleep(0.5)  # anything sent twice would have arrived by now
        topics = [m.topic for m in subscriber.drain()]
        assert topics == [f"hsi/cameras/{c}/state" for c in ("first", "other", "last")]
    finally:
        subscriber.close()


async def test_rows_handed_over_after_a_pass_read_them_back_are_not_sent_again(
    database_url: str, own_broker: Mosquitto
) -> None:
    """The offer comes after the commit; when the pass its notification woke came first, that
    pass read the row back and sent it: the late offer must not send it a second time."""
    subscriber = await Subscriber(own_broker.url, "hsi/cameras/+/state").ready(timeout=20)
    try:
        async with _relay(database_url, own_broker, poll_interval_s=60) as (relay, pool):
            async with pool.acquire() as conn, conn.transaction():
                added = await outbox.add_many(conn, [("hsi/cameras/late/state", b"{}", True)])
            await wait_until(lambda: _all_sent(pool), timeout=10)
            relay.offer(added)
            await asyncio.sleep(0.5)  # a second send would have arrived by now
        assert [m.topic for m in subscriber.drain()] == ["hsi/cameras/late/state"]
    finally:
        subscriber.close()


async def test_two_relays_send_each_message_once_and_the_second_takes_over(
    database_url: str, own_broker: Mosquitto
) -> None:
    """Scale-out: two processes' relays on one database. Only the one holding the relay lock
    sends, so no message goes out twice; when it stops, the other sends what comes next."""
    subscriber = await Subscriber(own_broker.url, "hsi/cameras/+/state").ready(timeout=20)
    try:
        async with _relay(database_url, own_broker, poll_interval_s=0.2) as (_, pool):
            async with _relay(database_url, own_broker, lead=False, poll_interval_s=0.2) as (standby, _):
                for n in range(20):
                    await _store(pool, f"c{n}")
                await wait_until(lambda: _all_sent(pool), timeout=20)
                await asyncio.sleep(0.5)  # anything sent twice would have arrived by now
                assert standby._leading is None
            first = [m.topic for m in subscriber.drain()]
            assert sorted(first) == sorted(f"hsi/cameras/c{n}/state" for n in range(20))
        async with _relay(database_url, own_broker, lead=False, poll_interval_s=0.2) as (second, pool):
            # The first relay has stopped: this one takes the lock and sends.
            await _store(pool, "after")
            await wait_until(lambda: _all_sent(pool), timeout=20)
            assert second._leading is not None
        await subscriber.wait_for(lambda m: m.topic == "hsi/cameras/after/state", timeout=10)
        assert len(subscriber.drain()) == 21
    finally:
        subscriber.close()


async def test_a_relay_that_loses_its_broker_lets_another_send(
    database_url: str, own_broker: Mosquitto, tmp_path: Path
) -> None:
    """The leader lets the relay lock go while its own broker is unreachable, so a relay of
    another process that reaches its broker sends meanwhile (rather than nothing going out)."""
    (tmp_path / "other").mkdir()
    other = Mosquitto(tmp_path / "other")
    other.start()
    try:
        subscriber = await Subscriber(other.url, "hsi/cameras/+/state").ready(timeout=20)
        try:
            async with (
                _relay(database_url, own_broker, poll_interval_s=0.2) as (leader, pool),
                _relay(database_url, other, lead=False, poll_interval_s=0.2) as (standby, _),
            ):
                assert standby._leading is None
                own_broker.stop()
                await wait_until(lambda: not leader.publisher.connected.is_set(), timeout=10)
                await _store(pool, "meanwhile")
                await subscriber.wait_for(lambda m: m.topic == "hsi/cameras/meanwhile/state", timeout=20)
                assert standby._leading is not None and leader._leading is None
                await wait_until(lambda: _all_sent(pool), timeout=10)
        finally:
            subscriber.close()
    finally:
        other.stop()


async def test_a_database_error_while_stepping_down_does_not_end_the_relay(
    database_url: str, own_broker: Mosquitto, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The broker goes away and giving the lock back meets a database error (injected: the
    connection dropped at that moment): the relay logs it and carries on, as for any database
    error of a pass. It ended the relay's task before: nothing was published again."""
    async with _relay(database_url, own_broker, poll_interval_s=0.2) as (relay, pool):
        step_down = relay._step_down
        failures = 0

        async def failing_once() -> None:
            nonlocal failures
            if failures == 0:
                failures += 1
                raise asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed in the middle of operation")
            await step_down()

        monkeypatch.setattr(relay, "_step_down", failing_once)
        own_broker.stop()
        await wait_until(lambda: failures == 1, timeout=10)
        own_broker.start()
        await _store(pool, "after")
        await wait_until(lambda: _all_sent(pool), timeout=30)


async def test_an_idle_relay_is_quiet_and_its_brokers_return_wakes_it_at_once(
    database_url: str, own_broker: Mosquitto
) -> None:
    """With nothing to send, the relay waits for a notification: its poll is 10 s (stop 34; at 1 s
    it was a statement a second all day). What waits for the broker is sent when the broker is
    back, not at the next poll."""
    async with _relay(database_url, own_broker) as (relay, pool):
        await asyncio.sleep(0.5)
        with RoundTrips() as trips:
            await asyncio.sleep(3)
        assert trips.count == 0, trips.by_statement

        own_broker.stop()
        await wait_until(lambda: not relay.publisher.connected.is_set(), timeout=10)
        await _store(pool, "away")
        own_broker.start()
        await wait_until(relay.publisher.connected.is_set, timeout=30)
        loop = asyncio.get_running_loop()
        back = loop.time()
        await wait_until(lambda: _all_sent(pool), timeout=30)
        assert loop.time() - back < POLL_S / 2


async def _store_carrying(relay: OutboxRelay, pool: asyncpg.Pool, camera: str, *, fail: bool = False) -> list[int]:
    """A store as the result stage makes it since stop 37: its outbox insert writes the marks of
    the rows the relay sent (``fail``: its transaction then rolls back); the marks it carried."""
    marks: list[int] = []
    committed = False
    try:
        async with pool.acquire() as conn, conn.transaction():
            marks = relay.marks.take()
            added = await outbox.add_many(conn, [(f"hsi/cameras/{camera}/state", camera.encode(), True)], marks)
            if fail:
                raise RuntimeError("the store failed")
        committed = True
        relay.offer(added)
    except RuntimeError:
        assert fail
    finally:
        relay.marks.settle(marks, committed=committed)
    return marks


def _unsent(pool: asyncpg.Pool) -> Awaitable[list[str]]:
    return pool.fetchval(  # type: ignore[no-any-return]
        "SELECT coalesce(array_agg(convert_from(payload, 'UTF8') ORDER BY id), '{}') FROM outbox WHERE sent_at IS NULL"
    )


async def test_the_marks_of_what_the_relay_sent_ride_on_the_next_store(
    database_url: str, own_broker: Mosquitto
) -> None:
    """A camera sending a picture a second: the rows of each store are sent, and their marks are
    written by the next store's outbox insert, not by a statement of the relay's own (it was one
    a picture, and a commit). Meanwhile a pass that reads back what waits does not send them again;
    the last store's mark, which no store carries, the relay writes after ``MARK_WAIT_S``."""
    subscriber = await Subscriber(own_broker.url, "hsi/cameras/+/state").ready(timeout=20)
    try:
        async with _relay(database_url, own_broker, poll_interval_s=60) as (relay, pool):
            with RoundTrips() as trips:
                carried: list[list[int]] = []
                for n in range(3):
                    carried.append(await _store_carrying(relay, pool, f"c{n}"))
                    await subscriber.wait_for(lambda m, n=n: m.topic == f"hsi/cameras/c{n}/state", timeout=10)
                    await wait_until(lambda: relay.marks.held(), timeout=10)  # acknowledged, not marked
                    # What was stored before this picture is marked; this picture's row waits.
                    assert await _unsent(pool) == [f"c{n}"]
                # A pass that reads back what waits (a notification without ids, a poll).
                relay._read = True
                relay._wakeup.set()
                await asyncio.sleep(0.5)
                assert await _unsent(pool) == ["c2"]
            assert not [t for t in trips.by_statement if t.startswith("UPDATE outbox")], trips.by_statement
            assert [len(m) for m in carried] == [0, 1, 1]
            await wait_until(lambda: _all_sent(pool), timeout=outbox.MARK_WAIT_S + 5)
            assert relay.marks.held() == []
            await asyncio.sleep(0.3)  # anything sent twice would have arrived by now
        assert [m.payload for m in subscriber.drain()] == [b"c0", b"c1", b"c2"]
    finally:
        subscriber.close()


async def test_the_marks_a_failed_store_carried_are_written_all_the_same(
    database_url: str, own_broker: Mosquitto
) -> None:
    """A store whose transaction rolls back wrote no mark: the marks it took wait again, and the
    relay (or the next store) writes them; nothing is sent twice meanwhile."""
    subscriber = await Subscriber(own_broker.url, "hsi/cameras/+/state").ready(timeout=20)
    try:
        async with _relay(database_url, own_broker, poll_interval_s=60) as (relay, pool):
            await _store_carrying(relay, pool, "sent")
            await wait_until(lambda: relay.marks.held(), timeout=10)
            assert len(await _store_carrying(relay, pool, "failed", fail=True)) == 1
            assert await _unsent(pool) == ["sent"]
            assert len(relay.marks.held()) == 1
            await wait_until(lambda: _all_sent(pool), timeout=outbox.MARK_WAIT_S + 5)
            await asyncio.sleep(0.3)
        assert [m.payload for m in subscriber.drain()] == [b"sent"]
    finally:
        subscriber.close()


async def test_a_relay_that_stops_writes_the_marks_it_holds(database_url: str, own_broker: Mosquitto) -> None:
    """Stopped before ``MARK_WAIT_S`` with a sent row unmarked, the relay marks it as it ends (so
    the next start does not send it again)."""
    async with _relay(database_url, own_broker, poll_interval_s=60) as (relay, pool):
        await _store_carrying(relay, pool, "a")
        await wait_until(lambda: relay.marks.held(), timeout=10)
        assert await _unsent(pool) == ["a"]
    check = await asyncpg.connect(database_url)
    try:
        assert await check.fetchval("SELECT count(*) = 0 FROM outbox WHERE sent_at IS NULL")
    finally:
        await check.close()


async def test_the_server_s_stores_write_the_marks_of_what_its_relay_sent(
    make_settings: Callable[..., Settings], pose_detector: UltralyticsDetector, own_broker: Mosquitto
) -> None:
    """The server as wired: a camera's pictures a moment apart, each stored with its messages
    (four people, then two, then four: each changes the camera's state); the rows its relay sent
    are marked by the next picture's store, the relay writes no mark of its own meanwhile (it
    was a statement and a commit a picture)."""
    settings = make_settings(mqtt_url=own_broker.url, fast_path={}, batch_window_s=300, batch_idle_s=120)
    async with running(settings, pose_detector) as server:
        relay, ingestor = server._relay, server.ingestor
        assert relay is not None and ingestor is not None
        await cameras.create(server.pool, CameraCreate(id="porch", name="Porch"))
        raw = [demo_assets.image(name).read_bytes() for name in ("bus.jpg", "zidane.jpg")]
        await wait_until(lambda: _all_sent(server.pool), timeout=outbox.MARK_WAIT_S + 5)  # the start's messages
        with RoundTrips() as trips:
            for n in range(3):
                before = await server.pool.fetchval("SELECT coalesce(max(id), 0) FROM outbox")
                result = await ingestor.ingest_bytes(
                    "porch", with_comment(raw[n % 2], f"n{n}"), captured_at=None, original_name=None
                )
                await wait_until(
                    lambda job=result.job_id: server.pool.fetchval(
                        "SELECT state = 'done' FROM jobs WHERE id = $1", job
                    ),
                    30,
                )
                # This picture's rows were written; everything before them is marked (by this store).
                assert await server.pool.fetchval("SELECT count(*) > 0 FROM outbox WHERE id > $1", before)
                assert (
                    await server.pool.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL AND id <= $1", before)
                    == 0
                )
                await wait_until(lambda: relay.marks.held(), timeout=10)  # this picture's rows, sent
        assert trips.by_statement.get(_MARK, 0) == 0, trips.by_statement
        await wait_until(lambda: _all_sent(server.pool), timeout=outbox.MARK_WAIT_S + 5)


async def test_the_same_scene_s_stores_write_the_marks_though_they_queue_no_message(
    make_settings: Callable[..., Settings], pose_detector: UltralyticsDetector, own_broker: Mosquitto
) -> None:
    """The same picture a moment apart queues no message (its state unchanged, its snapshot not
    due: stop 40), so no outbox insert carries the marks of what the relay sent; the store's own
    statement does, and the relay writes no mark of its own (it did, 2 s after each first one)."""
    settings = make_settings(
        mqtt_url=own_broker.url, fast_path={}, batch_window_s=300, batch_idle_s=120, snapshot_publish_interval_s=3600
    )
    async with running(settings, pose_detector) as server:
        relay, ingestor = server._relay, server.ingestor
        assert relay is not None and ingestor is not None
        await cameras.create(server.pool, CameraCreate(id="porch", name="Porch"))
        raw = demo_assets.image("bus.jpg").read_bytes()
        await wait_until(lambda: _all_sent(server.pool), timeout=outbox.MARK_WAIT_S + 5)  # the start's messages

        async def picture(n: int) -> None:
            result = await ingestor.ingest_bytes(
                "porch", with_comment(raw, f"n{n}"), captured_at=None, original_name=None
            )
            await wait_until(
                lambda: server.pool.fetchval("SELECT state = 'done' FROM jobs WHERE id = $1", result.job_id), 30
            )

        for n in range(2):  # the first sighting, then the rules' live risk of people still there
            await picture(n)
        await wait_until(lambda: relay.marks.held(), timeout=10)  # the second one's rows, sent
        with RoundTrips() as trips:
            for n in range(2, 5):
                before = await server.pool.fetchval("SELECT coalesce(max(id), 0) FROM outbox")
                await picture(n)
                assert await server.pool.fetchval("SELECT count(*) FROM outbox WHERE id > $1", before) == 0
                assert await _all_sent(server.pool)  # marked by this picture's store
        assert trips.by_statement.get(_MARK, 0) == 0, trips.by_statement
        assert not any(text.startswith("WITH marked AS") for text in trips.by_statement), trips.by_statement


async def test_a_row_offered_while_a_pass_reads_it_back_is_not_sent_again(
    database_url: str, own_broker: Mosquitto, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store's notification woke a pass that reads the row back; the store's offer came
    while that read was on its way (before the pass knew the row's id), so the next pass sent
    the row a second time from the offer (CI saw a camera's state twice)."""
    subscriber = await Subscriber(own_broker.url, "hsi/cameras/+/state").ready(timeout=20)
    try:
        async with _relay(database_url, own_broker, poll_interval_s=60) as (relay, pool):
            real_pending = outbox.pending
            stored: asyncio.Future[list[outbox.OutboxMessage]] = asyncio.get_running_loop().create_future()

            async def offered_during_the_read(*args: Any, **kwargs: Any) -> list[outbox.OutboxMessage]:
                relay.offer(await stored)  # the store's offer, arriving while this read is on its way
                return await real_pending(*args, **kwargs)

            monkeypatch.setattr(outbox, "pending", offered_during_the_read)
            async with pool.acquire() as conn, conn.transaction():
                added = await outbox.add_many(conn, [("hsi/cameras/raced/state", b"raced", True)])
            await asyncio.sleep(0.3)  # the notification has woken the pass, which reads
            stored.set_result(added)
            await subscriber.wait_for(lambda m: m.topic == "hsi/cameras/raced/state", timeout=10)
            monkeypatch.setattr(outbox, "pending", real_pending)
            await asyncio.sleep(0.5)  # the pass the offer woke is done by now
        assert [m.payload for m in subscriber.drain()] == [b"raced"]
    finally:
        subscriber.close()
