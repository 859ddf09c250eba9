"""Outbox relay: sends committed outbox rows to MQTT and marks them sent after the PUBACK.

Rows are locked with ``SKIP LOCKED`` while in flight, so several relays (scale-out) share
the work. A row whose acknowledgement does not come stays unsent and is sent again:
delivery is at least once, and consumers de-duplicate by event id.
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


class OutboxRelay:
    """``gather_s``: once woken, wait this long before a pass, so that the stores of one inferred
    batch (a transaction per camera, committed milliseconds apart) go out in one pass of four
    round trips instead of one pass each (docs/decisions.md)."""

    def __init__(
        self, pool: asyncpg.Pool, publisher: MqttPublisher, poll_interval_s: float = 1.0, gather_s: float = 0.0
    ) -> None:
        self.pool = pool
        self.publisher = publisher
        self.poll_interval_s = poll_interval_s
        self.gather_s = gather_s
        self._wakeup = asyncio.Event()
        self._listener = Listener(pool, outbox.NOTIFY_CHANNEL, self._on_notify)

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
                if self.publisher.connected.is_set():
                    try:
                        if not polled or await outbox.any_pending(self.pool):
                            sent = await self.relay_once()
                    except DB_ERRORS as err:
                        log.error("outbox relay database error: %r", err)
                        await asyncio.sleep(_RETRY_S)
                if sent == _BATCH:
                    continue
                waiters = [asyncio.ensure_future(self._wakeup.wait()), asyncio.ensure_future(stop.wait())]
                await asyncio.wait(waiters, timeout=self.poll_interval_s, return_when=asyncio.FIRST_COMPLETED)
                for waiter in waiters:
                    waiter.cancel()
                polled = not self._wakeup.is_set()
                if self.gather_s > 0 and self._wakeup.is_set() and not stop.is_set():
                    await asyncio.sleep(self.gather_s)
        finally:
            await self._listener.close()

    async def relay_once(self) -> int:
        """Publish one batch of pending rows; return how many were acknowledged."""
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await outbox.lock_pending(conn, _BATCH)
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
                await outbox.mark_failed(conn, failed, repr(err or PublishError("no acknowledgement in 10 s")))
                log.warning("outbox messages not acknowledged count=%d; will retry", len(failed))
            metrics.STAGE.labels("publish").observe((metrics.now() - started) / len(rows))
            metrics.PUBLISHED.inc(len(acked))
            return len(acked)
