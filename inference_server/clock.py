"""Time source for batching: the real clock in production, a controllable one in tests."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware."""
        ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


def follows_real_time(clock: Clock) -> bool:
    """Whether a loop can sleep until a time of ``clock``: the system's clock moves with the
    event loop's; a controlled one (tests) moves when it is told, so a loop waiting for one of
    its times looks at each of its ticks instead."""
    return isinstance(clock, SystemClock)
