"""Waiting for what a test expects, without fixed sleeps."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any


async def wait_until(
    check: Callable[[], Any], timeout: float = 60, interval: float = 0.1, *, what: str = "condition"
) -> Any:
    """Await ``check()`` (sync or async) until truthy; return its value. ``TimeoutError`` names ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not met in time ({timeout:g} s)")
        await asyncio.sleep(interval)
