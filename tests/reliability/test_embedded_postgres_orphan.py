"""A server killed with SIGKILL orphans its embedded PostgreSQL; the next start adopts it and the
next clean stop stops it (issue 13, item 17; docs/decisions.md "An orphaned embedded PostgreSQL")."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.support.waiting import wait_until

from .conftest import ServerProcess, server_env

pytestmark = pytest.mark.slow


def _postmaster(pgdata: Path) -> psutil.Process | None:
    """The PostgreSQL server running on ``pgdata`` (its ``postmaster.pid``), or None."""
    try:
        pid = int((pgdata / "postmaster.pid").read_text().split("\n", 1)[0])
        process = psutil.Process(pid)
    except (FileNotFoundError, ValueError, psutil.NoSuchProcess):
        return None
    return process if _running(process) else None


def _running(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _postgres_of(pgdata: Path) -> list[psutil.Process]:
    """Live ``postgres`` processes started on ``pgdata`` (the postmaster names it on its command line)."""
    found = []
    for process in psutil.process_iter(["name", "cmdline"]):
        cmdline = process.info["cmdline"] or []
        if process.info["name"] == "postgres" and str(pgdata) in cmdline and _running(process):
            found.append(process)
    return found


@pytest.fixture
def pgdata(tmp_path: Path) -> Iterator[Path]:
    """The embedded PostgreSQL's data folder; whatever still runs on it is stopped at the end."""
    path = (tmp_path / "data" / "postgres").resolve()
    # Run as root, the wheel runs PostgreSQL as its own user: the folder must not be under /root.
    assert not path.is_relative_to("/root"), path
    yield path
    for process in _postgres_of(path):
        with contextlib.suppress(psutil.NoSuchProcess):
            process.terminate()
            process.wait(10)


async def test_a_postgres_orphaned_by_sigkill_is_adopted_and_stopped_by_the_next_clean_stop(
    tmp_path: Path, pgdata: Path, mosquitto_url: str, server_process: list[ServerProcess]
) -> None:
    env = server_env(tmp_path / "data", "", mosquitto_url)
    for name in ("DATABASE_URL", "HSI_DATABASE_URL"):
        env.pop(name, None)  # no URL: the server starts the embedded PostgreSQL in <data_dir>/postgres
    log = tmp_path / "server.log"
    server = ServerProcess(env, log)
    server_process.append(server)

    def started_times() -> int:
        return log.read_text(errors="replace").count("server started")

    server.start()
    await wait_until(lambda: started_times() == 1, 180, interval=0.2)
    first = _postmaster(pgdata)
    assert first is not None, server.tail()

    await asyncio.to_thread(server.kill)
    assert _running(first), "precondition: SIGKILL leaves the server's PostgreSQL running"

    server.start()
    await wait_until(lambda: started_times() == 2, 180, interval=0.2)
    adopted = _postmaster(pgdata)
    assert adopted is not None and adopted.pid == first.pid  # one PostgreSQL, not a second one

    code = await asyncio.to_thread(server.stop)
    assert code == 0, server.tail()
    assert "server stopped" in server.tail()
    await wait_until(lambda: not _running(first) and not _postgres_of(pgdata), 30, interval=0.2)
    assert not (pgdata / "postmaster.pid").exists()
    text = log.read_text(errors="replace")
    assert "adopting it" in text and f"postgres_pid={first.pid}" in text, server.tail()
