"""Reliability tests: the real server as a subprocess, a real mosquitto, a persistent-session subscriber.

The fixtures of ``tests/server/conftest.py`` (embedded PostgreSQL, mosquitto, YOLO) are re-used;
what is added here is what a crash or outage test needs on top: a server process that can be
SIGKILLed and restarted, a mosquitto that can be stopped and restarted on the same port with
persistence on, and an MQTT subscriber with a persistent session (as Home Assistant uses QoS 1).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from inference_server import demo_assets
from inference_server.comms.mqtt import BrokerAddress
from tests.server.conftest import (  # noqa: F401  (fixtures re-exported for this folder)
    database_url,
    mosquitto_url,
    pg_uri,
    pytest_asyncio_loop_factories,
)
from tests.support.mosquitto import RestartableMosquitto


def server_env(data: Path, dsn: str, mqtt_url: str, **extra: str) -> dict[str, str]:
    """Environment for ``python -m inference_server serve`` on the test's PostgreSQL and broker."""
    env = {
        **os.environ,
        "HSI_DATA_DIR": str(data),
        "DATABASE_URL": dsn,
        "MQTT_URL": mqtt_url,
        "HSI_API_PORT": "0",
        "HSI_DETECTOR_WEIGHTS": str(demo_assets.pose_weights()),
        "HSI_DETECTOR_DEVICE": "cpu",
        "HSI_JOB_LEASE_S": "2",
        "HSI_FILE_STABLE_S": "0.1",
        "HSI_JOB_POLL_INTERVAL_S": "0.2",
        "HSI_CAMERA_TIMEZONE": "UTC",
        "HSI_BATCH_IDLE_S": "0.3",
        "HSI_BATCH_WINDOW_S": "5",
        "HSI_OPTIONS_FILE": str(data.parent / "no-options.json"),
    }
    env.update(extra)
    return env


class ServerProcess:
    """``python -m inference_server serve`` as a child process, its output appended to one log."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env = env
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "inference_server", "serve"], env=self.env, stdout=out, stderr=subprocess.STDOUT
            )
        self.starts += 1

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        assert self.proc.wait(10) == -signal.SIGKILL

    def stop(self) -> int:
        """SIGTERM, as a service manager would; return the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def api_url(self) -> str | None:
        """The API address the current process logged (``server started ... api=http://...``)."""
        text = self.log.read_text(errors="replace")
        marker = "api=http://"
        at = text.rfind(marker)
        if at < 0:
            return None
        return "http://" + text[at + len(marker) :].split()[0]

    def tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    def cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def server_process(tmp_path: Path) -> Iterator[list[ServerProcess]]:
    """Collects the test's server processes and kills any still running at the end."""
    made: list[ServerProcess] = []
    yield made
    for proc in made:
        proc.cleanup()


@pytest.fixture
def restartable_mosquitto(tmp_path: Path) -> Iterator[RestartableMosquitto]:
    folder = tmp_path / "mosquitto"
    folder.mkdir()
    broker = RestartableMosquitto(folder)
    broker.start()
    yield broker
    if broker.proc is not None:
        broker.stop()


def unique_jpeg(src: Path, tag: int) -> bytes:
    """A real camera JPEG made unique by a comment segment (COM, 0xFFFE) after its start marker:
    the server de-duplicates identical bytes, and these tests need many distinct images."""
    data = src.read_bytes()
    assert data[:2] == b"\xff\xd8"
    text = f"hsi-reliability-{tag:08d}".encode()
    return data[:2] + b"\xff\xfe" + (len(text) + 2).to_bytes(2, "big") + text + data[2:]


def put_file(dest: Path, data: bytes) -> None:
    """Write as an FTP upload would (a temporary name, then a rename into the camera folder)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.part"
    tmp.write_bytes(data)
    tmp.rename(dest)


class EdgeNode:
    """A camera-side publisher: QoS 1, each publish returns once the broker acknowledged it."""

    def __init__(self, url: str) -> None:
        address = BrokerAddress.parse(url)
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="edge-node-delivery")
        self.client.connect(address.host, address.port)
        self.client.loop_start()

    async def publish(self, topic: str, payload: bytes) -> None:
        info = self.client.publish(topic, payload, qos=1)
        await asyncio.to_thread(info.wait_for_publish, 10)
        assert info.is_published()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
