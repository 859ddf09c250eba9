"""SIGTERM at any moment of start-up stops the server cleanly (exit 0), as s6 or Docker expect.

A service manager stops the add-on whenever the user restarts it, which can be while the model is
still loading. The signal handlers are installed before start-up; a stop asked for during it lets
the start finish (nothing half-opened is leaked) and then stops at once.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest

from tests.support.waiting import wait_until

from .conftest import ServerProcess, server_env

pytestmark = pytest.mark.slow


async def test_sigterm_during_start_up_exits_cleanly(tmp_path: Path, database_url: str, mosquitto_url: str) -> None:
    log = tmp_path / "server.log"
    server = ServerProcess(server_env(tmp_path / "data", database_url, mosquitto_url), log)
    server.start()
    assert server.proc is not None
    try:
        # After the database is ready the model still has to load: well inside start-up.
        await wait_until(lambda: "database ready" in log.read_text(errors="replace"), 60, interval=0.01)
        assert "server started" not in log.read_text()
        server.proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(server.proc.wait, 60)
    finally:
        if server.alive():
            server.proc.kill()
    text = log.read_text(errors="replace")
    assert code == 0, text[-3000:]
    assert "stop requested during start-up" in text
    assert "server stopped" in text
