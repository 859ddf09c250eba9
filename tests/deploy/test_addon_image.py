"""The add-on image and compose.yaml's server image, built and run: scripts/test-addon-image builds
one on the stand-in base and runs this file with ``HSI_ADDON_IMAGE`` (the tag),
``HSI_ADDON_IMAGE_TARGET`` (``addon``, the Dockerfile's last stage, or ``gpu``) and ``DOCKER_HOST``
set; without them it is skipped.

The add-on runs as the Supervisor runs it: ``--network host``, ``/data/options.json`` with every
option, a camera folder in ``/share``, ``SUPERVISOR_TOKEN``; the MQTT broker is a real mosquitto on
loopback that refuses anonymous clients, whose login the add-on gets from the Supervisor API. The
Supervisor is a FAKE (``tests/support/fake_supervisor.py``: ``GET /services/mqtt``, and ``POST
/discovery``, whose body it checks as the Supervisor does): nothing else can stand for it here.
The stand-in base has no s6-overlay: ``tests/deploy/standin/init`` runs the services' steps
(``hsi-addon <step>``) in s6's order (docs/decisions.md).

The GPU server image runs as compose.yaml runs it, with its entrypoint and environment as
``docker-compose config`` resolves them, on CPU (no GPU here). Its broker is compose's own (its
mosquitto.conf, ACL and mosquitto-init, ``tests/deploy/test_compose.py``). Its PostgreSQL is a
STAND-IN: compose's ``postgres:17`` cannot be pulled, so Debian's PostgreSQL runs on a loopback
port set up as that image sets itself up (superuser ``hsi`` with ``HSI_DB_PASSWORD``, database
``hsi``, password logins only), and ``DATABASE_URL`` points there instead of at ``postgres:5432``.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import glob
import json
import os
import pwd
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import paho.mqtt.client as mqtt
import pytest
import yaml
from aiohttp import web
from paho.mqtt.enums import CallbackAPIVersion

from inference_server import demo_assets
from tests.deploy.test_compose import PASSWORDS, _config, _run_compose_broker
from tests.support.fake_supervisor import TOKEN, FakeSupervisor
from tests.support.mosquitto import start_mosquitto
from tests.support.net import free_port

ROOT = Path(__file__).resolve().parents[2]
IMAGE = os.environ.get("HSI_ADDON_IMAGE", "")
TARGET = os.environ.get("HSI_ADDON_IMAGE_TARGET", "addon")
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
    """A real MQTT client with Home Assistant's login (the add-on's, or compose's read-only one)."""

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


def _rss_mb(container: str) -> float:
    """Resident memory of the server process (python -m inference_server serve), in MB."""
    for line in _docker("top", container, "-eo", "pid,rss,args").splitlines()[1:]:
        _pid, rss, args = line.split(None, 2)
        if "inference_server serve" in args:
            return int(rss) / 1024
    raise AssertionError("no server process in the container")


def _live(http: aiohttp.ClientSession, base: str, name: str) -> Callable[[], Awaitable[bool]]:
    """Whether the server answers ``/health/live``; fails with its log once the container stopped."""

    async def live() -> bool:
        try:
            async with http.get(f"{base}/health/live") as resp:
                return resp.status == 200
        except aiohttp.ClientError as err:
            if _docker("inspect", "-f", "{{.State.Running}}", name) != "true":
                logs = _docker("logs", name, check=False)[-3000:]
                raise AssertionError(f"the container stopped: {logs}") from err
            return False

    return live


@contextlib.asynccontextmanager
async def _container(
    name: str, args: list[str], api_port: int, recorder: Recorder, tmp_path: Path
) -> AsyncIterator[tuple[aiohttp.ClientSession, str, Callable[[], Awaitable[bool]], float]]:
    """The container ``docker run -d --name NAME --network host ARGS`` starts, once its server
    answers on ``api_port``: a session, the API's base URL, the server's liveness check and the
    seconds from ``docker run`` to its first answer. On leaving: ``recorder`` closed, the
    container's log kept in ``tmp_path``/container.log and the container removed."""
    started = time.monotonic()
    _docker("run", "-d", "--name", name, "--network", "host", *args)
    base = f"http://127.0.0.1:{api_port}/api/v1"
    try:
        async with aiohttp.ClientSession() as http:
            live = _live(http, base, name)
            await _until("the server to answer", live, 300)
            yield http, base, live, time.monotonic() - started
    finally:
        recorder.close()
        logs = _docker("logs", name, check=False)
        (tmp_path / "container.log").write_text(logs)
        _docker("rm", "-f", name, check=False)


async def _events(http: aiohttp.ClientSession, base: str, headers: dict[str, str]) -> list[Any]:
    async with http.get(f"{base}/events", headers=headers) as resp:
        return list((await resp.json())["events"])


async def _an_event_from_a_real_image(
    http: aiohttp.ClientSession, base: str, headers: dict[str, str], camera: Path, recorder: Recorder
) -> dict[str, Any]:
    """Drop bus.jpg into ``camera`` (a camera's folder seen from here): the event it makes, over
    REST and over MQTT."""
    shutil.copy(demo_assets.image("bus.jpg"), camera / "bus.jpg")
    [stored] = await _until("an event over REST", lambda: _events(http, base, headers), 180)
    assert stored["camera_id"] == camera.name and stored["objects"].get("person", 0) >= 3, stored
    published = await _until("the event over MQTT", lambda: asyncio.sleep(0, recorder.payloads("hsi/events")), 60)
    assert published[0]["id"] == stored["id"]
    return dict(stored)


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


@pytest.mark.skipif(TARGET != "addon", reason="the add-on image (HSI_ADDON_IMAGE_TARGET=addon)")
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
    args = [
        "-v", f"{data}:/data", "-v", f"{share}:/share",
        "-v", f"{ROOT / 'tests/deploy/standin/init'}:/standin-init:ro",
        "-e", f"SUPERVISOR_TOKEN={TOKEN}", "-e", f"HSI_SUPERVISOR_URL=http://127.0.0.1:{supervisor_port}",
        # Only because the test shares the host's ports with other tests (the add-on listens on 8765).
        "-e", f"HSI_API_PORT={api_port}",
        "--entrypoint", "/standin-init", IMAGE,
    ]  # fmt: skip
    async with _container(name, args, api_port, recorder, tmp_path) as (http, base, live, ready_s):
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

        camera = share / "hsi" / "cameras" / "front"
        stored = await _an_event_from_a_real_image(http, base, headers, camera, recorder)
        loaded_mb = _rss_mb(name)

        # Restart: the database in /data survives, and the server comes back with it.
        _docker("stop", "-t", "60", name, timeout=90)
        _docker("start", name)
        await _until("the server after the restart", live, 300)
        after = await _events(http, base, headers)
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


# --- compose.yaml's server image (the Dockerfile's `gpu` target) ----------------------------------


class ComposePostgres:
    """A stand-in for compose's ``postgres`` service (``postgres:17``, which cannot be pulled here):
    Debian's PostgreSQL on a loopback port, its superuser and database named as compose names them
    (``POSTGRES_USER``/``POSTGRES_DB`` hsi, ``POSTGRES_PASSWORD`` = ``HSI_DB_PASSWORD``) and
    password logins only, as that image sets itself up. Run as ``postgres`` when the test is root
    (PostgreSQL refuses root), in a folder outside pytest's private one, which that user cannot reach."""

    def __init__(self, folder: Path) -> None:
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parts[-3]))
        if not found:
            pytest.fail("PostgreSQL is not installed (apt-get install postgresql)")
        self.bin = Path(found[-1]).parent
        self.folder, self.port = folder, free_port()
        self.data, self.log = folder / "data", folder / "postgres.log"
        self.owner = pwd.getpwnam("postgres") if os.getuid() == 0 else pwd.getpwuid(os.getuid())
        password = folder / "password"
        password.write_text(PASSWORDS["HSI_DB_PASSWORD"] + "\n", encoding="utf-8")
        for path in (folder, password):
            os.chown(path, self.owner.pw_uid, self.owner.pw_gid)
        self._as_owner(
            "initdb", "-D", str(self.data), "-U", "hsi", f"--pwfile={password}", "--auth=scram-sha-256", "-E", "UTF8"
        )
        password.unlink()
        self.start()
        env = {**os.environ, "PGPASSWORD": PASSWORDS["HSI_DB_PASSWORD"]}
        subprocess.run(
            [str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "hsi", "hsi"],
            env=env, check=True, capture_output=True, timeout=30,
        )  # fmt: skip

    def _as_owner(self, program: str, *args: str) -> None:
        root = os.getuid() == 0
        result = subprocess.run(
            [str(self.bin / program), *args],
            user=self.owner.pw_uid if root else None,
            group=self.owner.pw_gid if root else None,
            extra_groups=[] if root else None,
            cwd=self.folder,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if result.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            pytest.fail(f"{program} {' '.join(args)}: {result.stdout[-1000:]}{result.stderr[-1000:]}{log}")

    def start(self) -> None:
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.folder}"
        self._as_owner("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "60", "start")

    def stop(self) -> None:
        self._as_owner("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop")

    def url(self, compose_url: str) -> str:
        """compose's ``DATABASE_URL``, pointed at this server instead of ``postgres:5432``."""
        assert "@postgres:5432/" in compose_url, compose_url
        return compose_url.replace("@postgres:5432/", f"@127.0.0.1:{self.port}/")


@pytest.fixture
def compose_mosquitto() -> Iterator[int]:
    """compose's broker (its mosquitto.conf, ACL and mosquitto-init) on a loopback port."""
    # Not pytest's tmp_path: mosquitto started as root drops to its own user, which must reach it.
    with tempfile.TemporaryDirectory(prefix="hsi-compose-broker-") as folder:
        yield from _run_compose_broker(Path(folder))


@pytest.fixture
def compose_postgres() -> Iterator[ComposePostgres]:
    with tempfile.TemporaryDirectory(prefix="hsi-compose-postgres-") as folder:
        server = ComposePostgres(Path(folder))
        try:
            yield server
        finally:
            if (server.data / "postmaster.pid").exists():
                server.stop()


def _compose_server(mqtt_port: int, database_url: Callable[[str], str]) -> tuple[list[str], dict[str, str]]:
    """compose.yaml's server service as ``docker-compose config`` resolves it: the entrypoint, and
    the environment with the database and the broker on loopback instead of compose's services."""
    result = _config(PASSWORDS)
    assert result.returncode == 0, result.stderr
    server = yaml.safe_load(result.stdout)["services"]["server"]
    env = {name: str(value) for name, value in server["environment"].items()}
    env["DATABASE_URL"] = database_url(env["DATABASE_URL"])
    assert "@mosquitto:1883" in env["MQTT_URL"], env["MQTT_URL"]
    env["MQTT_URL"] = env["MQTT_URL"].replace("@mosquitto:1883", f"@127.0.0.1:{mqtt_port}")
    return list(server["entrypoint"]), env


@pytest.mark.skipif(TARGET != "gpu", reason="compose.yaml's server image (HSI_ADDON_IMAGE_TARGET=gpu)")
async def test_the_compose_server_image_finds_a_person_and_survives_a_restart(
    tmp_path: Path, compose_mosquitto: int, compose_postgres: ComposePostgres
) -> None:
    entrypoint, env = _compose_server(compose_mosquitto, compose_postgres.url)
    data, cameras, models = tmp_path / "data", tmp_path / "cameras", tmp_path / "models"
    for folder in (data, cameras / "front", models):
        folder.mkdir(parents=True)
    # The weights the add-on test exports (yolo11n-pose.pt: a person's keypoints, for recognition);
    # compose.yaml's example names yolo11n.pt, which no registry package here carries.
    weights = demo_assets.pose_weights()
    shutil.copy(weights, models / weights.name)
    api_port, ftp_port = free_port(), free_port()
    env |= {
        "HSI_DETECTOR_WEIGHTS": f"/models/{weights.name}",
        # Only because the test shares the host's network and ports with other tests: compose's
        # server listens on 0.0.0.0:8765 and :2121 inside a network of its own.
        "HSI_API_HOST": "127.0.0.1",
        "HSI_API_PORT": str(api_port),
        "HSI_FTP_HOST": "127.0.0.1",
        "HSI_FTP_PORT": str(ftp_port),
        # As the add-on test's options: the batch closes in seconds, not after the defaults' 60-90 s.
        "HSI_BATCH_IDLE_S": "2",
        "HSI_BATCH_WINDOW_S": "10",
    }
    name = f"hsi-server-test-{uuid.uuid4().hex[:8]}"
    recorder = Recorder(compose_mosquitto, "homeassistant", PASSWORDS["HSI_MQTT_READER_PASSWORD"])
    args = ["-v", f"{data}:/data", "-v", f"{cameras}:/cameras", "-v", f"{models}:/models:ro"]
    for key, value in env.items():
        args += ["-e", f"{key}={value}"]
    args += ["--entrypoint", entrypoint[0], IMAGE, *entrypoint[1:]]
    async with _container(name, args, api_port, recorder, tmp_path) as (http, base, live, ready_s):
        # The key as docs/install.md makes it (docker compose exec server ... apikey create).
        key = _docker("exec", name, entrypoint[0], "-m", "inference_server", "apikey", "create", "homeassistant")
        headers = {"Authorization": f"Bearer {key.splitlines()[-1]}"}
        async with http.get(f"{base}/system/status", headers=headers) as resp:
            status = await resp.json()
        detector = f"ultralytics:{weights.name} "
        assert resp.status == 200 and status["detector"].startswith(detector) and " cpu " in status["detector"]
        idle_mb = _rss_mb(name)

        first_image = time.monotonic()
        stored = await _an_event_from_a_real_image(http, base, headers, cameras / "front", recorder)
        event_s = time.monotonic() - first_image
        loaded_mb = _rss_mb(name)
        snapshot_url = f"{base}/events/{stored['id']}/snapshot.jpg"

        async def snapshot() -> bytes:
            async with http.get(snapshot_url, headers=headers) as resp:
                return await resp.read() if resp.status == 200 else b""

        before = await _until("the event's snapshot", snapshot, 60)

        # Restart the server's container and PostgreSQL (docker compose restart): the rows in
        # PostgreSQL and the files in /data survive, and the server comes back to both.
        stopping = time.monotonic()
        _docker("stop", "-t", "60", name, timeout=90)
        stop_s = time.monotonic() - stopping
        compose_postgres.stop()
        compose_postgres.start()
        restarted = time.monotonic()
        _docker("start", name)
        await _until("the server after the restart", live, 300)
        warm_s = time.monotonic() - restarted
        after = await _events(http, base, headers)
        assert [e["id"] for e in after] == [stored["id"]]
        assert await snapshot() == before
        async with http.get(f"{base}/ui", headers=headers) as resp:
            page = await resp.text()
        assert resp.status == 200 and detector.strip() in page and stored["summary"][:20] in page
    size_mb = int(_docker("image", "inspect", "-f", "{{.Size}}", IMAGE)) / 1e6
    figures = {"image_mb": round(size_mb), "cold_start_to_live_s": round(ready_s, 1)}
    figures |= {"idle_rss_mb": round(idle_mb), "after_one_image_rss_mb": round(loaded_mb)}
    figures |= {"image_to_event_s": round(event_s, 1), "stop_s": round(stop_s, 1)}
    figures |= {"restart_to_live_s": round(warm_s, 1), "detector": status["detector"]}
    print(f"gpu-image figures: {json.dumps(figures)}")
