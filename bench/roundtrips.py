"""Counting the statements a piece of code sends to PostgreSQL (benches and tests)."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Awaitable
from typing import Any

import asyncpg


class RoundTrips:
    """Counts the statements sent to PostgreSQL (each one round trip), while entered: asyncpg's
    prepared-statement path and its simple-query path (``execute`` without arguments: BEGIN,
    COMMIT, NOTIFY)."""

    def __init__(self) -> None:
        self.count = 0
        #: Statements by their text (whitespace folded), for "which ones".
        self.by_statement: Counter[str] = Counter()
        #: Seconds from sending each statement to its result, by text (the round trip: PostgreSQL's
        #: work and the wait for the event loop), for "which ones take the time".
        self.seconds_by_statement: Counter[str] = Counter()

    def __enter__(self) -> RoundTrips:
        self._do_execute = asyncpg.connection.Connection._do_execute
        self._execute = asyncpg.connection.Connection.execute
        counter = self
        do_execute, execute = self._do_execute, self._execute
        # Each statement's folded text, by its text: the store's statement is kilobytes long, and
        # folding it again at every call charged the count's own CPU to the server's event loop.
        folded: dict[str, str] = {}

        async def counted(query: str, sent: Awaitable[Any]) -> Any:
            if (text := folded.get(query)) is None:
                text = folded[query] = " ".join(query.split())
            counter.count += 1
            counter.by_statement[text] += 1
            started = time.perf_counter()
            try:
                return await sent
            finally:
                counter.seconds_by_statement[text] += time.perf_counter() - started

        def counted_do_execute(conn: Any, query: str, *a: Any, **kw: Any) -> Any:
            return counted(query, do_execute(conn, query, *a, **kw))

        async def counted_execute(conn: Any, query: str, *args: Any, **kw: Any) -> Any:
            if args:  # sent through _do_execute, counted there
                return await execute(conn, query, *args, **kw)
            return await counted(query, execute(conn, query, *args, **kw))

        asyncpg.connection.Connection._do_execute = counted_do_execute  # type: ignore[method-assign]
        asyncpg.connection.Connection.execute = counted_execute  # type: ignore[method-assign]
        return self

    def __exit__(self, *_: object) -> None:
        asyncpg.connection.Connection._do_execute = self._do_execute  # type: ignore[method-assign]
        asyncpg.connection.Connection.execute = self._execute  # type: ignore[method-assign]
