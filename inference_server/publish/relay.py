"""Outbox relay: sends committed outbox rows to MQTT and marks them sent after the PUBACK.

One relay sends at a time: the one holding the relay's session lock (``pg_try_advisory_lock``)
on its LISTEN connection, where it also reads the rows and marks them sent, each one statement
without a transaction (two round trips a pass; a pass with the rows locked in a transaction took
four). The relays of other processes (scale-out) stand by and try the lock at each pass: it is
free as soon as the leader's connection ends (its process stopped or died, PostgreSQL restarted)
or the leader lets it go while its broker is unreachable. A row whose acknowledgement does not
come stays unsent and is sent again: delivery is at least once (a leader cut off between the
broker's acknowledgement and marking the row sends it twice, as the rolled-back transaction
did), and consumers de-duplicate by event id. docs/decisions.md, "The outbox relay: one sender".

Rows this process has just committed are handed to the leading relay (``offer``): when every row
the notifications announced since the last pass was handed over, the pass sends those without
reading them back. Anything else (a row another process or an earlier version committed, a poll,
a leader taking over, a row that failed) makes the pass read what waits, in id order, as before.
docs/decisions.md, "The outbox relay: committed rows handed over".

The acknowledged rows' marks are written by this process's next outbox insert, in its own
statement (``outbox.SentMarks``), or by the relay once they have waited ``outbox.MARK_WAIT_S``:
a pass of handed-over rows is no statement at all. docs/decisions.md, "The relay's marks ride on
the next store".
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import asyncpg

from inference_server.comms.mqtt import MqttPublisher, PublishError
from inference_server.event_loop import until_next
from inference_server.store import outbox
from inference_server.store.db import DB_ERRORS, Listener
from inference_server.telemetry import metrics

log = logging.getLogger(__name__)

_BATCH = 200
_RETRY_S = 1.0
#: The look for rows nobody announced (a standby relay's turn to try the lock; a notification
#: missed). Rows are announced (NOTIFY) at commit, the broker's return and a LISTEN connection
#: made again wake the relay, and unacknowledged rows are tried again after ``_RETRY_S``: at 1 s
#: this poll was a statement a second all day (stop 34).
POLL_S = 10.0
#: The relay's session lock ("HSIR"; the migrations' is "HSI1").
_LOCK_KEY = 0x4853_4952
#: A wait for the marks may end this early (the loop's clock resolution).
_MARK_EARLY_S = 0.005
#: Row ids sent from offers whose notification has not come yet, at most (then forgotten: their
#: notifications make a pass read back, which finds nothing).
_HANDED_KEPT = 4 * _BATCH


class OutboxRelay:
    """``gather_s``: once woken, wait this long before a pass, so that the stores of one inferred
    batch (a transaction per camera, committed milliseconds apart) go out in one pass of two
    round trips instead of one pass each (docs/decisions.md)."""

    def __init__(
        self, pool: asyncpg.Pool, publisher: MqttPublisher, poll_interval_s: float = POLL_S, gather_s: float = 0.0
    ) -> None:
        self.pool = pool
        self.publisher = publisher
        self.poll_interval_s = poll_interval_s
        #: The last pass left rows unacknowledged: look again after ``_RETRY_S``, not the poll.
        self._retry = False
        self.gather_s = gather_s
        self._wakeup = asyncio.Event()
        self._listener = Listener(pool, outbox.NOTIFY_CHANNEL, self._on_notify)
        #: The listening connection on which this relay holds the relay lock (None: standing by).
        self._leading: asyncpg.Connection | None = None
        #: Rows committed by this process and handed over (``offer``), by id.
        self._offered: dict[int, outbox.OutboxMessage] = {}
        #: Row ids announced (notified) since the last pass and not sent yet.
        self._announced: set[int] = set()
        #: Ids sent before their notification came: it announces nothing new.
        self._handed: set[int] = set()
        #: The highest row id this relay has read or sent: an offer of a row at or below it comes
        #: after a pass that read the rows back, and is not sent again.
        self._seen_upto = 0
        #: The next pass reads the waiting rows back: at the start, after a notification that
        #: listed no ids, a poll, a new leader, a row left unsent or a full batch.
        self._read = True
        #: Rows the broker acknowledged, their marks written by this process's next outbox insert
        #: (the stores take them: the server hands this to them), else by ``_write_marks``.
        self.marks = outbox.SentMarks()

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        ids = outbox.announced(payload)
        if ids is None:
            self._read = True
        else:
            fresh = [i for i in ids if i not in self._handed]
            self._handed.difference_update(ids)
            if not fresh:
                return  # all sent already, from the offer
            self._announced.update(fresh)
        self._wakeup.set()

    def offer(self, messages: Sequence[outbox.OutboxMessage]) -> None:
        """Rows this process has just committed (``outbox.add_many``'s), handed over so that the
        next pass need not read them back. Only while this relay leads and its broker is there
        (else the leader, or this one later, reads them); their notification comes too."""
        if not messages or self._leading is None or not self.publisher.connected.is_set():
            return
        fresh = [m for m in messages if m.id > self._seen_upto]
        if len(self._offered) + len(fresh) > _BATCH:
            self._read = True
            return
        self._offered.update((m.id, m) for m in fresh)
        self._wakeup.set()

    def _forget_offers(self) -> None:
        """Not leading (or no broker): what was offered is read back by whoever sends it."""
        self._offered.clear()
        self._announced.clear()
        self._handed.clear()
        self._read = True

    async def run(self, stop: asyncio.Event) -> None:
        # The last wait ran out without a wake-up: the poll for rows whose wake-up was missed (a
        # database restart, another process) looks before it takes a transaction.
        polled = False
        #: The last wait ended for the marks alone (their time came): no pass after writing them.
        marks_only = False
        loop = asyncio.get_running_loop()
        try:
            while not stop.is_set():
                if await self._listener.ensure():
                    # LISTEN again after a database restart (until then the relay polled).
                    log.info("outbox relay listening again")
                    self._wakeup.set()  # rows committed while nobody listened
                    self._forget_offers()
                    polled = False
                # Cleared before the pass, not after: a row committed while the pass runs (after
                # it locked its rows) wakes the next pass instead of waiting for the poll.
                marks_only = marks_only and not self._wakeup.is_set()  # (woken meanwhile: a pass)
                self._wakeup.clear()
                sent = 0
                try:
                    if (due := self.marks.due(loop.time())) is not None and due <= _MARK_EARLY_S:
                        await self._write_marks()
                    if marks_only:
                        pass
                    elif not self.publisher.connected.is_set():
                        # This process cannot reach the broker: another relay may, let it send
                        # (what this one sent is marked first, so it is not sent again).
                        await self._write_marks()
                        await self._step_down()
                        self._retry = False  # the broker's return wakes it
                    elif not polled:
                        sent = await self.relay_once()
                    elif await outbox.any_pending(self.pool):
                        self._read = True  # rows nobody announced
                        sent = await self.relay_once()
                except DB_ERRORS as err:
                    log.error("outbox relay database error: %r", err)
                    self._forget_offers()
                    self._retry = True  # look again each _RETRY_S until the database answers
                    await asyncio.sleep(_RETRY_S)
                if sent == _BATCH:
                    continue
                waiters = [asyncio.ensure_future(self._wakeup.wait()), asyncio.ensure_future(stop.wait())]
                if not self.publisher.connected.is_set():
                    # Back to the broker: send (or lead again) at once, not at the next poll.
                    waiters.append(asyncio.ensure_future(self.publisher.connected.wait()))
                poll_s = self.poll_interval_s
                timeout = min(_RETRY_S, poll_s) if self._retry else until_next(poll_s, at_least_s=poll_s / 2)
                marks_due = self.marks.due(loop.time())
                done, _ = await asyncio.wait(
                    waiters,
                    timeout=timeout if marks_due is None else min(timeout, marks_due),
                    return_when=asyncio.FIRST_COMPLETED,
                )
                for waiter in waiters:
                    waiter.cancel()
                marks_only = not done and marks_due is not None and marks_due < timeout
                if marks_only:
                    continue  # the marks' time came, not the poll's
                polled = not self._wakeup.is_set() and not self._retry
                if self.gather_s > 0 and self._wakeup.is_set() and not stop.is_set():
                    await asyncio.sleep(self.gather_s)
        finally:
            leading = self._leading
            try:
                await self._write_marks()
            except DB_ERRORS as err:
                log.warning(
                    "outbox marks not written, those rows will be sent again count=%d: %r", len(self.marks.held()), err
                )
            try:
                await self._step_down()
            except DB_ERRORS as err:
                # Never back into the pool holding the lock (it is released without a reset).
                log.info("outbox relay lock not given back, closing its connection: %r", err)
                if leading is not None:
                    leading.terminate()
            await self._listener.close()

    async def _lead(self) -> asyncpg.Connection | None:
        """The connection to send from, holding the relay lock; None while another relay holds it
        or this one is not listening (it listens again at its next turn)."""
        conn = self._listener.connection
        if conn is None:
            self._leading = None  # the lock went with the connection
            self._forget_offers()
            return None
        if self._leading is conn:
            return conn
        self._forget_offers()  # a new leader reads what waits first
        if await conn.fetchval("SELECT pg_try_advisory_lock($1)", _LOCK_KEY):
            log.info("outbox relay sending (holds the relay lock)")
            self._leading = conn
            return conn
        self._leading = None
        return None

    async def _write_marks(self) -> None:
        """Mark the acknowledged rows no insert has taken (``SentMarks``), one statement; a
        database error leaves them waiting (and still not sent again by this relay)."""
        taken = self.marks.take()
        if not taken:
            return
        committed = False
        try:
            await outbox.mark_sent(self._leading or self.pool, taken)
            committed = True
        finally:
            self.marks.settle(taken, committed=committed)

    async def _step_down(self) -> None:
        held = self._leading
        self._leading = None
        self._forget_offers()
        conn = self._listener.connection
        if held is None or conn is None or held is not conn:
            return  # not leading, or the lock went with its connection
        await conn.execute(f"SELECT pg_advisory_unlock({_LOCK_KEY})")
        log.info("outbox relay standing by (relay lock given back)")

    async def relay_once(self) -> int:
        """Publish one batch of pending rows; return how many were acknowledged (0 as well while
        another relay holds the relay lock)."""
        self._retry = False
        conn = await self._lead()
        if conn is None:
            return 0
        offered, self._offered = self._offered, {}
        announced, self._announced = self._announced, set()
        if self._read or not announced <= offered.keys():
            self._read = False
            rows = await outbox.pending(conn, _BATCH, self.marks.held())
            self._read = len(rows) == _BATCH  # more wait
        else:
            # Every row announced since the last pass was handed over: send them as they are,
            # but not one an earlier pass read back and sent (offered while that pass read).
            rows = sorted((m for m in offered.values() if m.id > self._seen_upto), key=lambda m: m.id)
        if not rows:
            return 0
        self._seen_upto = max(self._seen_upto, rows[-1].id)
        started = metrics.now()
        futures = [self.publisher.send(r.topic, r.payload, retain=r.retain, qos=r.qos) for r in rows]
        done, _ = await asyncio.wait(futures, timeout=10.0)
        acked = [r.id for r, f in zip(rows, futures, strict=True) if f in done and f.exception() is None]
        acked_set = set(acked)
        failed = [r.id for r in rows if r.id not in acked_set]
        err = next((f.exception() for f in done if f.exception() is not None), None)
        for f in futures:
            if not f.done():
                f.cancel()
        if acked:
            # Marked by this process's next outbox insert, else by the relay after MARK_WAIT_S.
            self.marks.acked(acked, asyncio.get_running_loop().time())
            # Their notifications, still to come, announce nothing to send.
            if len(self._handed) > _HANDED_KEPT:
                self._handed.clear()
            self._handed.update(i for i in acked if i not in announced)
        if failed:
            self._retry = True
            self._read = True  # they are sent again, first
            await outbox.mark_failed(conn, failed, repr(err or PublishError("no acknowledgement in 10 s")))
            log.warning("outbox messages not acknowledged count=%d; will retry", len(failed))
        metrics.STAGE.labels("publish").observe((metrics.now() - started) / len(rows))
        metrics.PUBLISHED.inc(len(acked))
        return len(acked)
