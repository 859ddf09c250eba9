"""No secret (API key, MQTT password, database password) in logs or diagnostic outputs.

The server runs in-process against a password-protected mosquitto and a DATABASE_URL that
carries a password; everything it logs (all loggers, DEBUG) is captured, and every place a
user might paste into a bug report is read: repr(settings), /system/status, /metrics,
/health/ready, the retained hsi/status and discovery messages, the api_keys table.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import secrets
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from inference_server import demo_assets, schemas
from inference_server.config import Settings, redact_url
from inference_server.store import api_keys, cameras
from tests.server.conftest import make_settings, running  # noqa: F401
from tests.support.mosquitto import start_mosquitto
from tests.support.net import free_port
from tests.support.waiting import wait_until

MQTT_USER = "hsi-server"


@pytest.fixture(scope="module")
def mqtt_password() -> str:
    return "mq-" + secrets.token_urlsafe(18)


@pytest.fixture(scope="module")
def protected_mosquitto(tmp_path_factory: pytest.TempPathFactory, mqtt_password: str) -> Iterator[str]:
    """mosquitto with anonymous access off and one user (mosquitto_passwd hashes the password)."""
    folder = tmp_path_factory.mktemp("mosquitto-auth")
    passwd = folder / "passwd"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(passwd), MQTT_USER, mqtt_password], check=True)
    passwd.chmod(0o600)
    port = free_port()
    conf = folder / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {passwd}\npersistence false\n"
        # As root, mosquitto would switch to its own user, which cannot read our 0600 file.
        "user root\n"
    )
    proc = start_mosquitto(conf, port)
    yield f"mqtt://{MQTT_USER}:{mqtt_password}@127.0.0.1:{port}"
    proc.terminate()
    proc.wait(5)


def _with_password(dsn: str, user: str, password: str) -> str:
    parts = urlsplit(dsn)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:{password}@{host}"))


class _Retained:
    """A client with the server's credentials reading the retained hsi/status and discovery."""

    def __init__(self, url: str, prefix: str) -> None:
        parts = urlsplit(url)
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"reader-{uuid.uuid4().hex[:8]}")
        self.client.username_pw_set(parts.username, parts.password)
        self.client.on_connect = lambda c, *_: c.subscribe(f"{prefix}/#", qos=1)
        self.client.on_message = lambda c, u, m: self.messages.put(m)
        self.client.connect(parts.hostname or "127.0.0.1", parts.port or 1883)
        self.client.loop_start()

    async def topics(self, wanted: set[str], timeout: float = 20) -> dict[str, bytes]:
        got: dict[str, bytes] = {}
        deadline = time.monotonic() + timeout
        while not wanted <= got.keys():
            if time.monotonic() > deadline:
                raise TimeoutError(f"missing {wanted - got.keys()}")
            try:
                message = self.messages.get_nowait()
            except queue.Empty:
                await asyncio.sleep(0.05)
                continue
            if "/ingest/" not in message.topic:  # the images this test publishes itself
                got[message.topic] = message.payload
        return got

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_redact_url_masks_only_the_password() -> None:
    assert redact_url("postgresql://hsi:s3cr%40t@db:5432/hsi?sslmode=require") == (
        "postgresql://hsi:***@db:5432/hsi?sslmode=require"
    )
    assert redact_url("mqtt://broker:1883") == "mqtt://broker:1883"
    assert redact_url("mqtt://user@broker") == "mqtt://user@broker"


async def test_no_secret_in_logs_diagnostics_mqtt_or_key_table(
    make_settings: Callable[..., Settings],  # noqa: F811
    protected_mosquitto: str,
    mqtt_password: str,
    database_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    db_password = "db-" + secrets.token_urlsafe(18)
    role = f"hsi_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(database_url)
    await admin.execute(f"CREATE ROLE {role} LOGIN SUPERUSER PASSWORD '{db_password}'")
    await admin.close()
    dsn = _with_password(database_url, role, db_password)
    settings = make_settings(database_url=dsn, mqtt_url=protected_mosquitto, mqtt_prefix="sec", role="api")
    caplog.set_level(logging.DEBUG)

    seen: dict[str, str] = {"repr(settings)": repr(settings), "str(settings)": str(settings)}
    async with running(settings) as server:
        key = await api_keys.create(server.pool, "secrets-test")
        headers = {"Authorization": f"Bearer {key}"}
        await cameras.create(server.pool, schemas.CameraCreate(id="porch", name="Porch"))
        reader = _Retained(protected_mosquitto, "sec")
        try:
            # MQTT ingest works through the protected broker, and refuses an oversized payload.
            assert server.mqtt_ingest is not None
            await asyncio.wait_for(server.mqtt_ingest.subscribed.wait(), 10)
            reader.publish("sec/ingest/porch", b"\xff\xd8" + b"\0" * settings.max_image_bytes)
            reader.publish("sec/ingest/porch", demo_assets.image("zidane.jpg").read_bytes())
            refused = await wait_until(
                lambda: server.pool.fetchval("SELECT reason FROM quarantine WHERE camera_id = 'porch'"), timeout=20
            )
            assert refused == "too_large"
            assert await wait_until(lambda: server.pool.fetchval("SELECT count(*) FROM images"), timeout=20) == 1

            async with aiohttp.ClientSession(base_url=server.api_url, headers=headers) as http:
                for path in ("/api/v1/system/status", "/api/v1/metrics", "/api/v1/health/ready", "/api/v1/cameras"):
                    async with http.get(path) as resp:
                        assert resp.status == 200, path
                        seen[path] = await resp.text()
                async with http.get("/api/v1/cameras", headers={"Authorization": "Bearer wrong-" + key}) as resp:
                    assert resp.status == 401
            retained = await reader.topics({"sec/status", "sec/discovery", "sec/availability"})
            seen.update({topic: payload.decode() for topic, payload in retained.items()})
        finally:
            reader.close()
        rows = await server.pool.fetch("SELECT * FROM api_keys")
        assert len(rows) == 1
        seen["api_keys table"] = repr([dict(r) for r in rows])
        seen["mqtt_ingest"] = repr(server.mqtt_ingest.address)

    seen["log"] = "\n".join(f"{r.name} {r.getMessage()}" for r in caplog.records)
    assert "server started" in seen["log"] and f"{role}:***@" in seen["repr(settings)"]
    for secret, what in ((key, "API key"), (mqtt_password, "MQTT password"), (db_password, "DB password")):
        leaks = [where for where, text in seen.items() if secret in text]
        assert leaks == [], f"{what} appears in {leaks}"
