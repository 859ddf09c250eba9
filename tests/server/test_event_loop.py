"""The process's event loop: uvloop by default, asyncio's own on request, and asyncio's own as a
labelled fallback (log and status) where uvloop cannot be imported."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest
import uvloop

from inference_server import event_loop
from tests.reliability.conftest import server_env
from tests.support.mqtt import Subscriber


def _start_server(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "inference_server", "serve"], env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT
    )


async def _pool_thread_name() -> str:
    return await asyncio.to_thread(lambda: threading.current_thread().name)


@pytest.mark.parametrize("choice", ["uvloop", "asyncio"])
def test_the_loop_asked_for_runs_with_asyncios_thread_names(choice: event_loop.EventLoopChoice) -> None:
    async def main() -> tuple[str, str, bool]:
        loop = asyncio.get_running_loop()
        return event_loop.describe(), await _pool_thread_name(), isinstance(loop, uvloop.Loop)

    described, thread, on_uvloop = event_loop.run(main(), choice)
    assert on_uvloop == (choice == "uvloop")
    assert described == (f"uvloop {uvloop.__version__}" if choice == "uvloop" else "asyncio")
    # uvloop's own default executor names its threads ThreadPoolExecutor-N_M: the pool keeps asyncio's names.
    assert thread.startswith("asyncio_")


def test_without_uvloop_the_loop_is_asyncios_labelled_a_fallback(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop raises ImportError

    async def main() -> tuple[str, bool]:
        return event_loop.describe(), isinstance(asyncio.get_running_loop(), uvloop.Loop)

    with caplog.at_level(logging.WARNING, logger="inference_server.event_loop"):
        described, on_uvloop = event_loop.run(main(), "uvloop")
    assert not on_uvloop
    assert described.startswith("asyncio (fallback: uvloop not importable: ")
    assert any("fallback" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    # Asking for asyncio's loop is no fallback.
    assert event_loop.run(main(), "asyncio")[0] == "asyncio"


@pytest.mark.parametrize("uvloop_importable", [True, False], ids=["uvloop", "no-uvloop"])
async def test_serve_names_its_event_loop_in_the_log_and_the_status(
    tmp_path: Path, database_url: str, mosquitto_url: str, uvloop_importable: bool
) -> None:
    data = tmp_path / "data"
    # A prefix of its own: the broker keeps another test's retained status.
    prefix = f"loop-{uuid.uuid4().hex[:8]}"
    env = server_env(
        data, database_url, mosquitto_url, HSI_STATUS_INTERVAL_S="0.5", HSI_ROLE="api", HSI_MQTT_PREFIX=prefix
    )
    if not uvloop_importable:
        # A package named uvloop ahead of site-packages whose import fails, as on a platform
        # without its wheel.
        blocker = tmp_path / "blocker" / "uvloop"
        blocker.mkdir(parents=True)
        (blocker / "__init__.py").write_text("raise ImportError('no uvloop on this platform (test)')\n")
        env["PYTHONPATH"] = f"{blocker.parent}:{env.get('PYTHONPATH', '')}"
    log = tmp_path / "server.log"
    subscriber = await Subscriber(mosquitto_url, f"{prefix}/status").ready()
    server = _start_server(env, log)
    try:
        message = await subscriber.wait_for(lambda m: b"event_loop" in m.payload, timeout=60)
    finally:
        server.terminate()
        assert server.wait(30) == 0, log.read_text()[-3000:]
        subscriber.close()
    status = json.loads(message.payload)
    text = log.read_text()
    if uvloop_importable:
        assert status["event_loop"] == f"uvloop {uvloop.__version__}"
        assert f"event_loop='uvloop {uvloop.__version__}'" in text
        assert "fallback" not in text
    else:
        assert status["event_loop"] == "asyncio (fallback: uvloop not importable: no uvloop on this platform (test))"
        assert "event loop: asyncio (fallback: uvloop not importable: no uvloop on this platform (test))" in text
