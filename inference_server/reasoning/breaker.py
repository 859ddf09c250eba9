"""The LLM's circuit breaker: after a run of failures callers skip the LLM for a while."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

CircuitState = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    """Opens after ``failures`` consecutive failures; while open, callers skip the LLM.

    After ``reset_s`` it lets exactly one trial call through (half-open): success closes it,
    failure opens it for another ``reset_s``.
    """

    def __init__(self, failures: int, reset_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.threshold = failures
        self.reset_s = reset_s
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._probing = False

    @property
    def state(self) -> CircuitState:
        """``closed``, ``open``, or ``half_open`` (cooling-down over or a trial call running)."""
        if self._opened_at is None:
            return "closed"
        if self._probing or self._clock() - self._opened_at >= self.reset_s:
            return "half_open"
        return "open"

    @property
    def consecutive_failures(self) -> int:
        return self._failures

    def blocks(self) -> bool:
        """Whether a call now would be skipped (without claiming the half-open trial)."""
        if self._opened_at is None:
            return False
        return self._probing or self._clock() - self._opened_at < self.reset_s

    def allow(self) -> bool:
        """Whether to call the LLM now; in half-open state the first caller claims the one trial."""
        if self.blocks():
            return False
        if self._opened_at is not None:
            self._probing = True
        return True

    def success(self) -> None:
        self._failures = 0
        self._opened_at = None
        self._probing = False

    def failure(self) -> None:
        self._failures += 1
        if self._probing or self._failures >= self.threshold:
            self._opened_at = self._clock()
            self._probing = False

    def abandon(self) -> None:
        """A call ended without verdict (cancelled): free the half-open trial for the next caller."""
        self._probing = False
