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
"""

from __future__ import annotations

import asyncio
import logging

import asyncpg

from inference_server.comms.mqtt import MqttPublisher, PublishError
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

    def _on_notify(self, *_: object) -> None:
        self._wakeup.set()

    async def run(self, stop: asyncio.Event) -> None:
        # The last wait ran out without a wake-up: the poll for rows whose wake-up was missed (a
        # database restart, another process) looks before it takes a transaction.
        polled = False
        try:
            while not stop.is_set():
                if await self._listener.ensure():
                    # LISTEN again after a database restart (until then the relay polled).
                    log.info("outbox relay listening again")
                    self._wakeup.set()  # rows committed while nobody listened
                    polled = False
                # Cleared before the pass, not after: a row committed while the pass runs (after
                # it locked its rows) wakes the next pass instead of waiting for the poll.
                self._wakeup.clear()
                sent = 0
                try:
                    if not self.publisher.connected.is_set():
                        # This process cannot reach the broker: another relay may, let it send.
                        await self._step_down()
                        self._retry = False  # the broker's return wakes it
                    elif not polled or await outbox.any_pending(self.pool):
                        sent = await self.relay_once()
                except DB_ERRORS as err:
                    log.error("outbox relay database error: %r", err)
                    self._retry = True  # look again each _RETRY_S until the database answers
                    await asyncio.sleep(_RETRY_S)
                if sent == _BATCH:
                    continue
                waiters = [asyncio.ensure_future(self._wakeup.wait()), asyncio.ensure_future(stop.wait())]
                if not self.publisher.connected.is_set():
                    # Back to the broker: send (or lead again) at once, not at the next poll.
                    waiters.append(asyncio.ensure_future(self.publisher.connected.wait()))
                timeout = min(_RETRY_S, self.poll_interval_s) if self._retry else self.poll_interval_s
                await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                for waiter in waiters:
                    waiter.cancel()
                polled = not self._wakeup.is_set() and not self._retry
                if self.gather_s > 0 and self._wakeup.is_set() and not stop.is_set():
                    await asyncio.sleep(self.gather_s)
        finally:
            leading = self._leading
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
            return None
        if self._leading is conn:
            return conn
        if await conn.fetchval("SELECT pg_try_advisory_lock($1)", _LOCK_KEY):
            log.info("outbox relay sending (holds the relay lock)")
            self._leading = conn
            return conn
        self._leading = None
        return None

    async def _step_down(self) -> None:
        held = self._leading
        self._leading = None
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
        rows = await outbox.pending(conn, _BATCH)
        if not rows:
            return 0
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
            await outbox.mark_sent(conn, acked)
        if failed:
            self._retry = True
            await outbox.mark_failed(conn, failed, repr(err or PublishError("no acknowledgement in 10 s")))
            log.warning("outbox messages not acknowledged count=%d; will retry", len(failed))
        metrics.STAGE.labels("publish").observe((metrics.now() - started) / len(rows))
        metrics.PUBLISHED.inc(len(acked))
        return len(acked)
