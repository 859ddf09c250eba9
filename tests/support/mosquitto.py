"""Debian's mosquitto, the reference broker, as a child process of the test."""

from __future__ import annotations

import contextlib
import getpass
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.net import free_port


def _mosquitto_binary() -> str:
    found = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
    if found is None:
        pytest.fail("mosquitto is not installed (scripts/test installs it)")
    return found


def start_mosquitto(conf: Path, port: int) -> subprocess.Popen[bytes]:
    """Debian's mosquitto with ``conf``, once it accepts connections on ``port`` (the test fails
    with mosquitto's own output if it does not start in 10 s). Its output goes to
    ``mosquitto.log`` beside ``conf``: a pipe nobody reads would stall it once full."""
    log = conf.parent / "mosquitto.log"
    with log.open("ab") as out:
        proc = subprocess.Popen([_mosquitto_binary(), "-c", str(conf)], stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return proc
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f"mosquitto did not start: {log.read_text(errors='replace')[-2000:]}")


def plain_mosquitto(folder: Path) -> tuple[subprocess.Popen[bytes], int]:
    """Mosquitto on a free loopback port, anonymous, no persistence (its files in ``folder``)."""
    port = free_port()
    conf = folder / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n", encoding="utf-8")
    return start_mosquitto(conf, port), port


class RestartableMosquitto:
    """Debian's mosquitto on a fixed loopback port, stoppable and restartable; with persistence
    (the default) it keeps retained messages and sessions across a restart, without it loses them."""

    def __init__(self, folder: Path, *, persistence: bool = True) -> None:
        self.port = free_port()
        self.folder = folder
        self.conf = folder / "mosquitto.conf"
        saved = f"persistence true\npersistence_location {folder}/\nautosave_interval 1\n"
        # Started as root, mosquitto drops to the ``mosquitto`` user, which cannot write a test's
        # private folder: it would log "Permission denied" on every save and restore nothing
        # (no session, no retained message) after a restart. It stays the user that runs the test.
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\nuser {getpass.getuser()}\n"
            + (saved if persistence else "persistence false\n")
            + "max_queued_messages 100000\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = start_mosquitto(self.conf, self.port)

    def stop(self) -> None:
        """SIGTERM: mosquitto saves its persistence file and exits."""
        assert self.proc is not None
        self.proc.terminate()
        self.proc.wait(10)
        self.proc = None
        log = (self.folder / "mosquitto.log").read_text(errors="replace")
        if "Error saving in-memory database" in log:
            pytest.fail(f"mosquitto could not save its persistence file: {log[-1000:]}")
