"""The add-on image, built and run: scripts/test-addon-image builds it on the stand-in base and runs
this file with ``HSI_ADDON_IMAGE`` (the tag) and ``DOCKER_HOST`` set; without them it is skipped.

The container runs as the Supervisor runs it: ``--network host``, ``/data/options.json`` with every
option, a camera folder in ``/share``, ``SUPERVISOR_TOKEN``; the MQTT broker is a real mosquitto on
loopback that refuses anonymous clients, whose login the add-on gets from the Supervisor API. The
Supervisor is a FAKE (``tests/support/fake_supervisor.py``: ``GET /services/mqtt``, and ``POST
/discovery``, whose body it checks as the Supervisor does): nothing else can stand for it here.
The stand-in base has no s6-overlay: ``tests/deploy/standin/init`` runs the services' steps
(``hsi-addon <step>``) in s6's order (docs/decisions.md).
"""

from __future__ import annotations

import asyncio
import getpass
import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import paho.mqtt.client as mqtt
import pytest
import yaml
from aiohttp import web
from paho.mqtt.enums import CallbackAPIVersion

from inference_server import demo_assets
from tests.support.fake_supervisor import TOKEN, FakeSupervisor
from tests.support.mosquitto import start_mosquitto
from tests.support.net import free_port

ROOT = Path(__file__).resolve().parents[2]
IMAGE = os.environ.get("HSI_ADDON_IMAGE", "")
DOCKER = shutil.which("docker") or "/usr/bin/docker"

pytestmark = pytest.mark.skipif(not IMAGE, reason="scripts/test-addon-image builds the image and runs this")


def _docker(*args: str, check: bool = True, timeout: float = 120) -> str:
    """Docker's output (stdout; for ``logs``, the container's stdout and stderr together)."""
    if args[0] == "logs":
        both = subprocess.run([DOCKER, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False)
        return both.stdout
    result = subprocess.run([DOCKER, *args], capture_output=True, text=True, timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)}: {result.stderr[-2000:]}")
    return result.stdout.strip()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[tuple[int, str, str]]:
    """A mosquitto on loopback that only lets in the login the fake Supervisor hands out."""
    folder = tmp_path / "mosquitto"
    folder.mkdir()
    user, password = "addons", uuid.uuid4().hex
    subprocess.run(
        ["mosquitto_passwd", "-c", "-b", str(folder / "passwd"), user, password], check=True, capture_output=True
    )
    os.chmod(folder / "passwd", 0o644)
    port = free_port()
    conf = folder / "mosquitto.conf"
    conf.write_text(
        # It stays the user that runs the test (as root it would drop to ``mosquitto``, which
        # cannot read the test's private folder).
        f"listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {folder / 'passwd'}\n"
        f"persistence false\nuser {getpass.getuser()}\n",
        encoding="utf-8",
    )
    proc = start_mosquitto(conf, port)
    yield port, user, password
    proc.terminate()
    proc.wait(10)


class Recorder:
    """A real MQTT client with the add-on's login, as Home Assistant would be."""

    def __init__(self, port: int, user: str, password: str) -> None:
        self.messages: list[mqtt.MQTTMessage] = []
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"test-{uuid.uuid4().hex[:8]}")
        self.client.username_pw_set(user, password)
        self.client.on_connect = lambda c, *_: c.subscribe("hsi/#", qos=1)
        self.client.on_message = lambda c, u, m: self.messages.append(m)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def payloads(self, topic: str) -> list[Any]:
        return [json.loads(m.payload) for m in list(self.messages) if m.topic == topic]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


async def _until(what: str, check: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await check()
        if value:
            return value
        await asyncio.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture
async def supervisor(broker: tuple[int, str, str]) -> AsyncIterator[tuple[FakeSupervisor, int]]:
    port, user, password = broker
    fake = FakeSupervisor({"host": "127.0.0.1", "port": port, "ssl": False, "username": user, "password": password})
    runner = web.AppRunner(fake.app())
    await runner.setup()
    api_port = free_port()
    await web.TCPSite(runner, "127.0.0.1", api_port).start()
    yield fake, api_port
    await runner.cleanup()


def _options(cameras: str, ftp_port: int) -> dict[str, Any]:
    """/data/options.json as the Supervisor writes it: every option, defaults filled in."""
    config = yaml.safe_load((ROOT / "addon" / "config.yaml").read_text(encoding="utf-8"))
    options: dict[str, Any] = dict(config["options"])
    options.update(cameras_dir=cameras, ftp_port=ftp_port, detector_confidence=0.4, batch_idle_s=2, batch_window_s=10)
    return options


def _rss_mb(container: str) -> float:
    """Resident memory of the server process (python -m inference_server serve), in MB."""
    for line in _docker("top", container, "-eo", "pid,rss,args").splitlines()[1:]:
        _pid, rss, args = line.split(None, 2)
        if "inference_server serve" in args:
            return int(rss) / 1024
    raise AssertionError("no server process in the container")


async def test_the_addon_image_finds_a_person_survives_a_restart_and_stays_lean(
    tmp_path: Path, broker: tuple[int, str, str], supervisor: tuple[FakeSupervisor, int]
) -> None:
    fake, supervisor_port = supervisor
    mqtt_port, user, password = broker
    data, share = tmp_path / "data", tmp_path / "share"
    (share / "hsi" / "cameras" / "front").mkdir(parents=True)
    data.mkdir()
    api_port, ftp_port = free_port(), free_port()
    (data / "options.json").write_text(json.dumps(_options("/share/hsi/cameras", ftp_port)), encoding="utf-8")
    name = f"hsi-addon-test-{uuid.uuid4().hex[:8]}"
    recorder = Recorder(mqtt_port, user, password)
    run = [
        "run", "-d", "--name", name, "--network", "host",
        "-v", f"{data}:/data", "-v", f"{share}:/share",
        "-v", f"{ROOT / 'tests/deploy/standin/init'}:/standin-init:ro",
        "-e", f"SUPERVISOR_TOKEN={TOKEN}", "-e", f"HSI_SUPERVISOR_URL=http://127.0.0.1:{supervisor_port}",
        # Only because the test shares the host's ports with other tests (the add-on listens on 8765).
        "-e", f"HSI_API_PORT={api_port}",
        "--entrypoint", "/standin-init", IMAGE,
    ]  # fmt: skip
    started = time.monotonic()
    _docker(*run)
    base = f"http://127.0.0.1:{api_port}/api/v1"
    try:
        async with aiohttp.ClientSession() as http:

            async def live() -> bool:
                try:
                    async with http.get(f"{base}/health/live") as resp:
                        return resp.status == 200
                except aiohttp.ClientError as err:
                    if _docker("inspect", "-f", "{{.State.Running}}", name) != "true":
                        logs = _docker("logs", name, check=False)[-3000:]
                        raise AssertionError(f"the container stopped: {logs}") from err
                    return False

            await _until("the server to answer", live, 300)
            ready_s = time.monotonic() - started
            # Discovery went through the (fake) Supervisor with a working API key.
            await _until("the discovery", lambda: asyncio.sleep(0, fake.discoveries), 120)
            [announced] = fake.discoveries
            assert announced["service"] == "home_security_intelligence"
            assert announced["config"]["port"] == api_port and fake.unauthorised == 0 and not fake.refused
            key = announced["config"]["api_key"]
            headers = {"Authorization": f"Bearer {key}"}
            async with http.get(f"{base}/system/status", headers=headers) as resp:
                status = await resp.json()
            assert resp.status == 200 and status["detector"].startswith("onnx:detector.onnx"), status
            idle_mb = _rss_mb(name)

            shutil.copy(demo_assets.image("bus.jpg"), share / "hsi" / "cameras" / "front" / "bus.jpg")

            async def event() -> list[Any]:
                async with http.get(f"{base}/events", headers=headers) as resp:
                    return list((await resp.json())["events"])

            [stored] = await _until("an event over REST", event, 180)
            assert stored["camera_id"] == "front" and stored["objects"].get("person", 0) >= 3, stored
            published = await _until(
                "the event over MQTT", lambda: asyncio.sleep(0, recorder.payloads("hsi/events")), 60
            )
            assert published[0]["id"] == stored["id"]
            loaded_mb = _rss_mb(name)

            # Restart: the database in /data survives, and the server comes back with it.
            _docker("stop", "-t", "60", name, timeout=90)
            _docker("start", name)
            await _until("the server after the restart", live, 300)
            after = await event()
            assert [e["id"] for e in after] == [stored["id"]]
            # Open Web UI's page (ingress_entry) lists it.
            async with http.get(f"{base}/ui", headers=headers) as resp:
                page = await resp.text()
            assert resp.status == 200 and "onnx:detector.onnx" in page and stored["summary"][:20] in page
        size_mb = int(_docker("image", "inspect", "-f", "{{.Size}}", IMAGE)) / 1e6
        figures = {"image_mb": round(size_mb), "cold_start_to_live_s": round(ready_s, 1)}
        figures |= {"idle_rss_mb": round(idle_mb), "after_one_image_rss_mb": round(loaded_mb)}
        print(f"addon-image figures: {json.dumps(figures)}")
        assert size_mb <= 1500, figures
        assert idle_mb <= 500, figures
    finally:
        recorder.close()
        logs = _docker("logs", name, check=False)
        (tmp_path / "container.log").write_text(logs)
        _docker("rm", "-f", name, check=False)
