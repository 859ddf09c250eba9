"""The scheduled digest: each day at ``digest_at`` (camera_timezone) the period that just ended,
``digest_from`` .. ``digest_at``, is summarised and published once.

After a restart the latest period that has ended is sent if it was not yet (a server down at
07:00 sends the night's digest when it comes back, at most once, logged as a catch-up); older
periods are not sent: a server down for three nights sends the last one only.
Several server processes may run the scheduler: the digests table lets only one send a period.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

from inference_server.clock import Clock
from inference_server.reports.digest import DigestService
from inference_server.store import digests
from inference_server.store.db import DB_ERRORS

log = logging.getLogger(__name__)

#: A scheduled digest sent this long after its time is a catch-up (logged as one).
CATCH_UP_AFTER_S = 300.0


def _clock_time(text: str) -> time:
    hours, minutes = text.split(":")
    return time(int(hours), int(minutes))


def latest_period(now: datetime, start_at: str, end_at: str, tz: ZoneInfo) -> tuple[datetime, datetime]:
    """The latest period ``start_at`` .. ``end_at`` (local clock times) that ended at or before
    ``now``. A start at or after the end lies on the day before (22:00 .. 07:00 is the night)."""
    local = now.astimezone(tz)
    end_t, start_t = _clock_time(end_at), _clock_time(start_at)
    end_day = local.date() if local.time() >= end_t else local.date() - timedelta(days=1)
    end = datetime.combine(end_day, end_t, tzinfo=tz)
    start_day = end_day - timedelta(days=1) if start_t >= end_t else end_day
    start = datetime.combine(start_day, start_t, tzinfo=tz)
    # Through UTC: a wall time in a DST gap or fold resolves to a real instant.
    return start.astimezone(ZoneInfo("UTC")), end.astimezone(ZoneInfo("UTC"))


def next_end(now: datetime, end_at: str, tz: ZoneInfo) -> datetime:
    """The next time the period ends after ``now``."""
    local = now.astimezone(tz)
    end = datetime.combine(local.date(), _clock_time(end_at), tzinfo=tz)
    if end <= local:
        end = datetime.combine(local.date() + timedelta(days=1), _clock_time(end_at), tzinfo=tz)
    return end.astimezone(ZoneInfo("UTC"))


class DigestScheduler:
    """Sends the scheduled digest; sleeps until the next period's end in between."""

    def __init__(
        self,
        service: DigestService,
        clock: Clock,
        start_at: str,
        end_at: str,
        *,
        retry_s: float = 60.0,
        wake_s: float = 3600.0,
    ) -> None:
        self.service = service
        self.clock = clock
        self.start_at = start_at
        self.end_at = end_at
        self.retry_s = retry_s
        #: The longest sleep between two looks at the clock: a clock that jumps (NTP, a suspended
        #: host, a test's controllable clock) is noticed within this long.
        self.wake_s = wake_s

    async def send_due(self) -> bool:
        """Send the latest ended period's digest unless it was sent; whether one was sent now."""
        now = self.clock.now()
        since, until = latest_period(now, self.start_at, self.end_at, self.service.tz)
        if await digests.scheduled_sent(self.service.pool, since, until):
            return False
        digest = await self.service.compose(since, until, kind="scheduled", now=now)
        sent = await self.service.send(digest) is not None
        late_s = (now - until).total_seconds()
        if sent and late_s >= CATCH_UP_AFTER_S:
            log.info(
                "scheduled digest caught up (the server was not running at its time) period=%s..%s late_by_s=%.0f",
                since.isoformat(),
                until.isoformat(),
                late_s,
            )
        return sent

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            wait_s = self.retry_s
            try:
                await self.send_due()
                wait_s = max(
                    1.0, (next_end(self.clock.now(), self.end_at, self.service.tz) - self.clock.now()).total_seconds()
                )
            except DB_ERRORS as err:
                log.error("scheduled digest failed, retry_in_s=%.0f error=%r", self.retry_s, err)
            try:
                await asyncio.wait_for(stop.wait(), min(wait_s, self.wake_s))
            except TimeoutError:
                continue
