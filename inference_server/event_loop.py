"""The process's event loop: uvloop (libuv's loop, the one asyncpg and aiohttp are fastest on)
where it is installed, else asyncio's own, labelled as a fallback in the log and in the status.

The event loop is where a picture's request, its statements' round trips and its messages are
handled: on uvloop it takes about 15 % less CPU a picture (docs/performance.md, stop 38). The
default executor (``asyncio.to_thread``) is given explicitly, with asyncio's own thread names
(``asyncio_0`` …) whichever loop runs: uvloop's would be anonymous ``ThreadPoolExecutor-…``
threads, and the benches and a ``py-spy dump`` tell the pool by its name.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

EventLoopChoice = Literal["uvloop", "asyncio"]

#: Why the process runs asyncio's loop though uvloop was asked for (it failed to import); None
#: when it runs what was asked for. Set by ``new_loop``, read by ``describe``.
_fallback: str | None = None


def new_loop(choice: EventLoopChoice = "uvloop") -> asyncio.AbstractEventLoop:
    """A new event loop of ``choice``; asyncio's when uvloop cannot be imported (logged as a
    fallback, and ``describe`` says so)."""
    global _fallback
    loop: asyncio.AbstractEventLoop
    if choice == "uvloop":
        try:
            import uvloop
        except ImportError as err:
            _fallback = f"uvloop not importable: {err}"
            log.warning("event loop: asyncio (fallback: %s)", _fallback)
            loop = asyncio.new_event_loop()
        else:
            _fallback = None
            loop = uvloop.new_event_loop()
    else:
        _fallback = None
        loop = asyncio.new_event_loop()
    # asyncio's default executor (ThreadPoolExecutor's own size), named as asyncio names it.
    loop.set_default_executor(ThreadPoolExecutor(thread_name_prefix="asyncio"))
    return loop


def run(main: Coroutine[Any, Any, T], choice: EventLoopChoice = "uvloop") -> T:
    """``asyncio.run(main)`` on a loop of ``choice`` (see ``new_loop``)."""
    with asyncio.Runner(loop_factory=lambda: new_loop(choice)) as runner:
        return runner.run(main)


def describe(loop: asyncio.AbstractEventLoop | None = None) -> str:
    """The running loop (or ``loop``) as the status shows it: ``uvloop 0.23.0``, ``asyncio``, or
    ``asyncio (fallback: …)`` when uvloop was asked for and could not be had."""
    loop = loop or asyncio.get_running_loop()
    module = type(loop).__module__.split(".")[0]
    if module == "uvloop":
        import uvloop

        return f"uvloop {getattr(uvloop, '__version__', '(version unknown)')}"
    return "asyncio" if _fallback is None else f"asyncio (fallback: {_fallback})"


def until_next(period_s: float, at_least_s: float = 0.0) -> float:
    """Seconds until the running loop's clock next reaches a whole multiple of ``period_s``, at
    least ``at_least_s`` from now. The server's periodic looks wait with it, so those that share
    a period (the status, the job poll, the outbox poll every 10 s; the batch closer's tick every
    second) wake the process together, once, and the looks after the first run while the code
    and data they share are still in the CPU's caches (docs/decisions.md, "Periodic looks on one
    beat"). A poll that work restarts (the job and outbox polls) waits at least half its interval
    (``at_least_s``): a camera sending pictures more often than that adds no look, as before,
    and an idle server still looks once a period (the next beat at least half a period after a
    look is the one after it), never later than one and a half periods after the last work. A
    multiple closer than ``_REACHED_S`` counts as reached (the look for it is the one that just
    ran): uvloop's clock counts whole milliseconds and its timers may fire up to one early, and
    "0 s to the beat" had a loop that waits for nothing else look again at once, over and over,
    until the clock's next millisecond (stop 49's CI: 295 looks in 2.5 s)."""
    due = asyncio.get_running_loop().time() + at_least_s
    rest = -due % period_s
    return at_least_s + (rest if rest >= _REACHED_S else rest + period_s)


#: How close to a beat the loop's clock counts as at it (``until_next``): two of uvloop's ticks.
_REACHED_S = 0.002


async def wait_any(*events: asyncio.Event, timeout: float) -> None:
    """Until one of ``events`` is set or ``timeout`` seconds have passed."""
    waits = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()
