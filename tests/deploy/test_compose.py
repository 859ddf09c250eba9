"""compose.yaml: parsed by Docker Compose itself (no engine needed), and naming only what
exists — the add-on's Dockerfile, the image the add-on publishes, the server's settings."""

from __future__ import annotations

import contextlib
import os
import pwd
import queue
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import yaml
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from inference_server import __version__
from inference_server.config import Settings
from tests.support.mosquitto import start_mosquitto
from tests.support.net import free_port

ROOT = Path(__file__).resolve().parents[2]


def _compose_command() -> list[str]:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True, check=False).returncode == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    assert legacy, "neither 'docker compose' nor 'docker-compose' is installed (scripts/test installs docker-compose)"
    return [legacy]


def _config(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*_compose_command(), "-f", str(ROOT / "compose.yaml"), "config"],
        cwd=ROOT,
        env={"PATH": os.environ["PATH"], **env},
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


PASSWORDS = {
    "HSI_DB_PASSWORD": "test-password",
    "HSI_MQTT_PASSWORD": "server-secret-1",
    "HSI_MQTT_READER_PASSWORD": "reader-secret-2",
}


def test_compose_file_parses_and_refuses_to_start_without_a_database_password() -> None:
    missing = _config({})
    assert missing.returncode != 0 and "HSI_DB_PASSWORD" in missing.stderr
    for name in ("HSI_MQTT_PASSWORD", "HSI_MQTT_READER_PASSWORD"):
        without = _config({k: v for k, v in PASSWORDS.items() if k != name})
        assert without.returncode != 0 and name in without.stderr, f"compose starts without {name}"
    result = _config(PASSWORDS)
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = yaml.safe_load(result.stdout)
    services = config["services"]
    assert set(services) == {"server", "postgres", "mosquitto", "mosquitto-init"}
    for name, service in services.items():
        # The one-shot init step exits; the broker waits for it to have succeeded.
        assert "healthcheck" in service or name == "mosquitto-init", f"{name} has no healthcheck"
    assert services["mosquitto"]["depends_on"]["mosquitto-init"]["condition"] == "service_completed_successfully"
    # The server's probe must be a route that answers without an API key.
    assert services["server"]["healthcheck"]["test"][-1].endswith("/api/v1/health/live")
    server = services["server"]
    assert (ROOT / server["build"]["context"] / server["build"]["dockerfile"]).is_file()
    assert server["image"] == f"ghcr.io/home-security-intelligence/amd64-hsi:{__version__}"
    addon_image = yaml.safe_load((ROOT / "addon" / "config.yaml").read_text(encoding="utf-8"))["image"]
    assert server["image"].split(":")[0] == addon_image.replace("{arch}", "amd64")
    devices = server["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    env = server["environment"]
    assert env["DATABASE_URL"] == "postgresql://hsi:test-password@postgres:5432/hsi"
    # The server logs in as the broker's only user that may write hsi/# (deploy/mosquitto/acl).
    assert env["MQTT_URL"] == "mqtt://hsi:server-secret-1@mosquitto:1883"
    for name in env:
        if name in ("DATABASE_URL", "MQTT_URL"):
            continue
        assert name.startswith("HSI_") and name[4:].lower() in Settings.model_fields, f"{name} is no server setting"
    depends = server["depends_on"]
    assert {k: v["condition"] for k, v in depends.items()} == {
        "postgres": "service_healthy",
        "mosquitto": "service_healthy",
    }
    named = {v.split(":")[0] for s in services.values() for v in _volume_sources(s)}
    assert {"hsi-data", "hsi-postgres", "hsi-mosquitto"} <= named | set(config["volumes"])


def _volume_sources(service: dict[str, Any]) -> list[str]:
    out = []
    for volume in service.get("volumes", []):
        out.append(volume if isinstance(volume, str) else str(volume.get("source", "")))
    return out


# The broker compose ships, run for real: Debian's mosquitto with the very mosquitto.conf and ACL
# that compose.yaml mounts, and a password file written by compose's own mosquitto-init script.


def _host_path(path: str, mounts: dict[str, Path]) -> str:
    """Where a path inside the container lies here, through the mounts compose.yaml declares."""
    for target in sorted(mounts, key=len, reverse=True):
        if path == target or path.startswith(target.rstrip("/") + "/"):
            return str(mounts[target]) + path[len(target) :]
    raise AssertionError(f"{path} is on no volume compose.yaml mounts")


@pytest.fixture
def compose_broker() -> Iterator[int]:
    """compose's mosquitto-init, then its mosquitto, on a loopback port; yields the port."""
    if shutil.which("mosquitto_passwd") is None:
        pytest.fail("mosquitto is not installed (scripts/test installs it)")
    # Not pytest's tmp_path: mosquitto started as root drops to its own user, which must reach it.
    with tempfile.TemporaryDirectory(prefix="hsi-compose-broker-") as folder:
        yield from _run_compose_broker(Path(folder))


def _run_compose_broker(tmp_path: Path) -> Iterator[int]:
    services = yaml.safe_load((ROOT / "compose.yaml").read_text(encoding="utf-8"))["services"]
    mounts: dict[str, Path] = {}
    for volume in (*services["mosquitto"]["volumes"], *services["mosquitto-init"]["volumes"]):
        source, target = volume.split(":")[:2]
        if source.startswith("./"):  # a file of the repository, used as it is
            mounts[target] = ROOT / source
        else:  # a named volume: a folder shared by both services, as Docker would share it
            mounts[target] = tmp_path / source
            mounts[target].mkdir(exist_ok=True)
    # Mosquitto started as root drops to its own user, as the image's runs as uid 1883: the
    # password file must belong to that user, which the init step sees to.
    owner = pwd.getpwnam("mosquitto") if os.getuid() == 0 else pwd.getpwuid(os.getuid())
    os.chown(tmp_path, owner.pw_uid, owner.pw_gid)
    for folder in mounts.values():
        if not str(folder).startswith(str(ROOT)):
            os.chown(folder, owner.pw_uid, owner.pw_gid)
    script = services["mosquitto-init"]["command"][0].replace("$$", "$")
    assert "chown 1883:1883" in script
    script = script.replace("chown 1883:1883", f"chown {owner.pw_uid}:{owner.pw_gid}")
    for target in sorted(mounts, key=len, reverse=True):
        script = script.replace(target, str(mounts[target]))
    env = {"PATH": os.environ["PATH"] + ":/usr/sbin", **PASSWORDS, "HSI_MQTT_INGEST_PASSWORD": "ingest-secret-3"}
    subprocess.run(["/bin/sh", "-euc", script], env=env, check=True, timeout=30)

    port = free_port()
    conf_lines = []
    for line in mounts[services["mosquitto"]["command"][-1]].read_text(encoding="utf-8").splitlines():
        key, _, value = line.partition(" ")
        if key == "listener":
            line = f"listener {port} 127.0.0.1"
        elif value.startswith("/"):
            line = f"{key} {_host_path(value, mounts)}"
        conf_lines.append(line)
    conf = tmp_path / "mosquitto.conf"
    conf.write_text("\n".join(conf_lines) + "\n", encoding="utf-8")
    proc = start_mosquitto(conf, port)
    yield port
    proc.terminate()
    proc.wait(5)


class _Client:
    """A paho client that records what it receives."""

    def __init__(self, port: int, user: str | None = None, password: str | None = None) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"test-{user}-{uuid.uuid4().hex[:8]}")
        if user is not None:
            self.client.username_pw_set(user, password)
        self.received: queue.Queue[tuple[str, bytes, bool]] = queue.Queue()
        self._connack: queue.Queue[ReasonCode] = queue.Queue()
        self._subacks: queue.Queue[list[ReasonCode]] = queue.Queue()
        self.client.on_connect = lambda _c, _u, _f, rc, _p: self._connack.put(rc)
        self.client.on_subscribe = lambda _c, _u, _m, rcs, _p: self._subacks.put(rcs)
        self.client.on_message = lambda _c, _u, m: self.received.put((m.topic, bytes(m.payload), bool(m.retain)))
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.connack = self._connack.get(timeout=5)

    def subscribe(self, topic: str) -> None:
        self.client.subscribe(topic, qos=1)
        self._subacks.get(timeout=5)

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        # QoS 1: the broker acknowledges (mosquitto does so for a denied publish too, then drops it).
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)

    def messages(self, settle_s: float = 0.5) -> list[tuple[str, bytes, bool]]:
        out = []
        with contextlib.suppress(queue.Empty):
            while True:
                out.append(self.received.get(timeout=settle_s))
        return out

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_compose_broker_refuses_anonymous_clients(compose_broker: int) -> None:
    anonymous = _Client(compose_broker)
    try:
        assert anonymous.connack.is_failure and str(anonymous.connack) == "Not authorized"
    finally:
        anonymous.close()
    wrong = _Client(compose_broker, "hsi", "not-the-password")
    try:
        assert wrong.connack.is_failure
    finally:
        wrong.close()


def test_only_the_server_login_may_write_hsi_topics(compose_broker: int) -> None:
    server = _Client(compose_broker, "hsi", PASSWORDS["HSI_MQTT_PASSWORD"])
    reader = _Client(compose_broker, "homeassistant", PASSWORDS["HSI_MQTT_READER_PASSWORD"])
    ingest = _Client(compose_broker, "ingest", "ingest-secret-3")
    clients = [server, reader, ingest]
    try:
        assert all(not c.connack.is_failure for c in clients)
        server.subscribe("hsi/#")
        reader.subscribe("hsi/#")
        forged = b'{"id":"hsi","name":"HSI","version":"0.1.0","url":"http://attacker:8765"}'
        genuine = b'{"id":"hsi","name":"HSI","version":"0.1.0","url":"http://192.168.1.20:8765"}'
        reader.publish("hsi/discovery", forged, retain=True)
        reader.publish("hsi/ingest/porch", b"\xff\xd8 image from the reader")
        ingest.publish("hsi/discovery", forged, retain=True)
        ingest.publish("hsi/events", b'{"type":"new"}')
        ingest.publish("hsi/ingest/porch", b"\xff\xd8 image from an edge node")
        server.publish("hsi/discovery", genuine, retain=True)
        at_server = server.messages()
        # Of the writes, the server hears its own and the edge node's image: nothing forged.
        assert at_server == [
            ("hsi/ingest/porch", b"\xff\xd8 image from an edge node", False),
            ("hsi/discovery", genuine, False),
        ]
        # A read-only login reads hsi/ but never the cameras' images.
        assert reader.messages() == [("hsi/discovery", genuine, False)]
        # What a client that connects later gets retained is the server's own discovery.
        late = _Client(compose_broker, "homeassistant", PASSWORDS["HSI_MQTT_READER_PASSWORD"])
        clients.append(late)
        late.subscribe("hsi/discovery")
        assert late.messages() == [("hsi/discovery", genuine, True)]
    finally:
        for c in clients:
            c.close()
