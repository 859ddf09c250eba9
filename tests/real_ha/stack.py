"""A real Home Assistant with the integration, a real mosquitto and the real HSI server, as plain
functions: the acceptance tests' fixtures (``conftest.py``) and ``scripts/dashboard-screenshots``
both start the stack with ``start_stack`` and stop it with ``Stack.close``.

- Home Assistant 2025.4.4 on Python 3.13 (``.venv-ha/bin/hass``), its config folder in a temporary
  folder, onboarded through its REST API (user, core config, analytics, integration) and given a
  long-lived access token over its websocket, as the frontend does.
- Debian's mosquitto without persistence (so a restart loses every retained message).
- ``python -m inference_server serve`` of ``.venv`` on that broker (embedded PostgreSQL), one
  folder per camera; HA's MQTT integration and this integration are added through config flows
  (this one from the server's MQTT discovery, as a user accepts the discovered card).

Only loopback addresses are used; every process writes its log into the temporary folder and is
killed by ``Stack.close``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from inference_server import demo_assets
from tests.reliability.conftest import ServerProcess, put_file, unique_jpeg
from tests.support.mosquitto import RestartableMosquitto
from tests.support.net import free_port
from tests.support.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
HASS = ROOT / ".venv-ha" / "bin" / "hass"
DOMAIN = "home_security_intelligence"
BUS_EVENT = f"{DOMAIN}_event"
#: Fired by the test's automation on the integration's device triggers (risk level high/critical).
DEVICE_TRIGGER_FIRED = "hsi_test_device_trigger_fired"
CLIENT_ID = "http://127.0.0.1/"  # any URL: HA's onboarding only checks the token exchange uses it again
PASSWORD = "hsi-acceptance-test"
#: The frontend pinned by homeassistant 2025.4.4: HA treats it as critical (without it, it starts
#: in recovery mode), and .venv-ha (the test harness's environment) lacks it, so it is installed
#: once into a cache folder put on hass's PYTHONPATH.
FRONTEND = "home-assistant-frontend==20250411.0"
FRONTEND_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "hsi" / FRONTEND.replace("==", "-")
BLUEPRINT = "home_security_intelligence/notify_on_risk.yaml"


class StackError(RuntimeError):
    """A part of the stack did not start or answer; the message carries the relevant log tail."""


def _tail(path: Path, chars: int = 4000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else f"({path} not written)"


def camera_file_name(when: datetime | None = None) -> str:
    """A Foscam-style name whose timestamp (UTC, the server's camera time zone here) is ``when``."""
    return f"MDAlarm_{(when or datetime.now(UTC)).strftime('%Y%m%d-%H%M%S')}.jpg"


# --- Home Assistant --------------------------------------------------------------------------


def frontend_path() -> str:
    """The folder holding ``hass_frontend``, installed there with pip on first use (~40 MB)."""
    if not (FRONTEND_DIR / "hass_frontend").is_dir():
        partial = FRONTEND_DIR.with_name(FRONTEND_DIR.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        subprocess.run(
            [
                str(HASS.parent / "python"),
                "-m",
                "pip",
                "install",
                "-q",
                "--no-deps",
                "--target",
                str(partial),
                FRONTEND,
            ],
            check=True,
            timeout=600,
        )
        partial.rename(FRONTEND_DIR)
    return str(FRONTEND_DIR)


def _configuration(port: int, folder: Path) -> str:
    parts = [
        "homeassistant:",
        "  name: HSI acceptance",
        # 0/0: the weather integration onboarding would add (met) declines to, so HA fetches no forecast.
        "  latitude: 0",
        "  longitude: 0",
        "  elevation: 0",
        "  unit_system: metric",
        "  time_zone: UTC",
        "  country: NL",
        "  currency: EUR",
        "http:",
        "  server_host: 127.0.0.1",
        f"  server_port: {port}",
        "api:",
        "config:",
        "onboarding:",
        "websocket_api:",
        "recorder:",
        f"  db_url: sqlite:///{folder}/home-assistant_v2.db",
        "  commit_interval: 0",
        "history:",
        "logbook:",
        "persistent_notification:",
        "notify:",
        "automation: !include automations.yaml",
        "frontend:",
        "lovelace:",
        "  mode: yaml",
        "logger:",
        "  default: warning",
        "  logs:",
        f"    custom_components.{DOMAIN}: debug",
    ]
    return "\n".join(parts) + "\n"


def _blueprint_inputs() -> dict[str, Any]:
    """The blueprint's current inputs (it is being reworked): what the test's automation passes."""
    path = ROOT / "blueprints" / "automation" / BLUEPRINT
    # Only the input section is read: its values carry no "!input" tags (HA's own YAML tag).
    data = yaml.safe_load(path.read_text(encoding="utf-8").replace("!input ", ""))
    inputs: dict[str, Any] = data["blueprint"]["input"]
    chosen: dict[str, Any] = {}
    for name in inputs:
        if name in ("notify_service", "notify_action", "service"):
            chosen[name] = "notify.persistent_notification"
        elif name == "notification_kind":  # the sidebar's notifications: no phone here
            chosen[name] = "persistent_notification"
        elif name == "min_level":
            chosen[name] = "high"
        elif name == "cooldown":
            chosen[name] = {"minutes": 0}
    return chosen


def prepare_config(folder: Path, port: int, dashboard: Path) -> None:
    """HA's config folder: configuration.yaml, a loopback-only network setting, the integration as
    a custom component, the blueprint and one automation made from it."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "configuration.yaml").write_text(_configuration(port, folder), encoding="utf-8")
    storage = folder / ".storage"
    storage.mkdir(exist_ok=True)
    # Only the loopback adapter: HA binds and announces nothing else.
    network = {
        "version": 1,
        "minor_version": 1,
        "key": "core.network",
        "data": {"configured_adapters": ["lo"]},
    }
    (storage / "core.network").write_text(json.dumps(network), encoding="utf-8")
    (folder / "custom_components").mkdir(exist_ok=True)
    (folder / "custom_components" / DOMAIN).symlink_to(ROOT / "custom_components" / DOMAIN)
    target = folder / "blueprints" / "automation" / BLUEPRINT
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ROOT / "blueprints" / "automation" / BLUEPRINT, target)
    automation = [
        {
            "id": "hsi_notify",
            "alias": "HSI notify",
            "use_blueprint": {"path": BLUEPRINT, "input": _blueprint_inputs()},
        }
    ]
    (folder / "automations.yaml").write_text(yaml.safe_dump(automation), encoding="utf-8")
    shutil.copyfile(dashboard, folder / "ui-lovelace.yaml")


@dataclass
class HassProcess:
    config: Path
    port: int
    pythonpath: str
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.config / "hass.out.log"

    def start(self, timeout: float = 120) -> None:
        env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": self.pythonpath}
        with self.log.open("ab") as out:
            # --skip-pip: everything is installed; HA must not try the network for requirements.
            self.proc = subprocess.Popen(
                [str(HASS), "-c", str(self.config), "--skip-pip"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.config,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            # Onboarding's API answers early in HA's start; ``onboard`` then waits for RUNNING.
            with contextlib.suppress(OSError), urllib.request.urlopen(f"{self.url}/api/onboarding", timeout=2):
                return
            time.sleep(0.3)
        self.stop()
        raise StackError(f"Home Assistant did not start in {timeout:.0f} s; log:\n{_tail(self.log)}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None


async def onboard(url: str) -> str:
    """Onboard a fresh HA as its owner does and return a long-lived access token."""
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        user = {"client_id": CLIENT_ID, "name": "Owner", "username": "owner", "password": PASSWORD, "language": "en"}
        async with http.post(f"{url}/api/onboarding/users", json=user) as resp:
            body = await resp.json()
            if resp.status != 200:
                raise StackError(f"onboarding/users: {resp.status} {body}")
        form = {"grant_type": "authorization_code", "code": body["auth_code"], "client_id": CLIENT_ID}
        async with http.post(f"{url}/auth/token", data=form) as resp:
            tokens = await resp.json()
            if resp.status != 200:
                raise StackError(f"auth/token: {resp.status} {tokens}")
        auth = {"Authorization": f"Bearer {tokens['access_token']}"}
        for step, payload in (
            ("core_config", {}),
            ("analytics", {}),
            ("integration", {"client_id": CLIENT_ID, "redirect_uri": f"{CLIENT_ID}?auth_callback=1"}),
        ):
            async with http.post(f"{url}/api/onboarding/{step}", json=payload, headers=auth) as resp:
                if resp.status != 200:
                    raise StackError(f"onboarding/{step}: {resp.status} {await resp.text()}")
        async with Hass(url, tokens["access_token"]) as ha:
            await wait_for(lambda: _running(ha), 120, "Home Assistant to be running")
            result = await ha.ws_call(
                {"type": "auth/long_lived_access_token", "client_name": "hsi acceptance", "lifespan": 1}
            )
            # Onboarding's core-config step adds a few integrations in the background (those whose
            # packages .venv-ha has); Radio Browser would look its servers up on the internet, which
            # this test must not reach: they are removed once the first of them appeared.
            await _remove_entries(ha, {"radio_browser", "google_translate", "shopping_list"})
        return str(result)


async def _running(ha: Hass) -> bool:
    config = await ha.ws_call({"type": "get_config"})
    return bool(config["state"] == "RUNNING")


async def _remove_entries(ha: Hass, domains: set[str]) -> None:
    async def entries() -> list[dict[str, Any]]:
        got: list[dict[str, Any]] = await ha.get("/api/config/config_entries/entry")
        return [e for e in got if e["domain"] in domains]

    await wait_for(lambda: _has(entries, 1), 20, f"onboarding's entries {sorted(domains)}")
    await asyncio.sleep(1)  # the others' flows were started in the same moment
    for entry in await entries():
        assert ha.http is not None
        async with ha.http.delete(f"{ha.url}/api/config/config_entries/entry/{entry['entry_id']}") as resp:
            resp.raise_for_status()


async def _has(entries: Callable[[], Any], count: int) -> bool:
    return len(await entries()) >= count


# --- talking to Home Assistant -----------------------------------------------------------------


@dataclass
class Hass:
    """REST and websocket access to HA with one token; ``events`` collects subscribed bus events."""

    url: str
    token: str
    http: aiohttp.ClientSession | None = None
    ws: aiohttp.ClientWebSocketResponse | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    _next_id: int = 1
    _pending: dict[int, asyncio.Future[Any]] = field(default_factory=dict)
    _reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Hass:
        self.http = aiohttp.ClientSession(
            headers={"Authorization": f"Bearer {self.token}"}, timeout=aiohttp.ClientTimeout(total=60)
        )
        self.ws = await self.http.ws_connect(f"{self.url}/api/websocket")
        hello = await self.ws.receive_json(timeout=10)
        assert hello["type"] == "auth_required", hello
        await self.ws.send_json({"type": "auth", "access_token": self.token})
        answer = await self.ws.receive_json(timeout=10)
        if answer["type"] != "auth_ok":
            raise StackError(f"websocket auth: {answer}")
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self.ws is not None:
            await self.ws.close()
        if self.http is not None:
            await self.http.close()

    async def _read(self) -> None:
        assert self.ws is not None
        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(msg.data)
            if data.get("type") == "event":
                event = data["event"]
                event["received_monotonic"] = time.monotonic()
                event["received_wall"] = time.time()
                self.events.append(event)
            elif (future := self._pending.pop(data.get("id", -1), None)) is not None and not future.done():
                if data.get("success", True):
                    future.set_result(data.get("result"))
                else:
                    future.set_exception(StackError(f"websocket error: {data.get('error')}"))

    async def ws_call(self, message: dict[str, Any], timeout: float = 30) -> Any:
        assert self.ws is not None
        msg_id = self._next_id
        self._next_id += 1
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[msg_id] = future
        await self.ws.send_json({**message, "id": msg_id})
        return await asyncio.wait_for(future, timeout)

    async def subscribe(self, event_type: str) -> None:
        await self.ws_call({"type": "subscribe_events", "event_type": event_type})

    async def get(self, path: str) -> Any:
        assert self.http is not None
        async with self.http.get(f"{self.url}{path}") as resp:
            if resp.status != 200:
                raise StackError(f"GET {path}: {resp.status} {await resp.text()}")
            return await resp.json()

    async def post(self, path: str, payload: dict[str, Any] | None = None, *, ok: tuple[int, ...] = (200,)) -> Any:
        assert self.http is not None
        async with self.http.post(f"{self.url}{path}", json=payload or {}) as resp:
            text = await resp.text()
            if resp.status not in ok:
                raise StackError(f"POST {path}: {resp.status} {text}")
            return json.loads(text) if text else None

    async def state(self, entity_id: str) -> dict[str, Any] | None:
        assert self.http is not None
        async with self.http.get(f"{self.url}/api/states/{entity_id}") as resp:
            if resp.status == 404:
                return None
            resp.raise_for_status()
            result: dict[str, Any] = await resp.json()
            return result

    async def call(self, domain: str, service: str, data: dict[str, Any], *, response: bool = False) -> Any:
        suffix = "?return_response" if response else ""
        return await self.post(f"/api/services/{domain}/{service}{suffix}", data)

    async def entities(self) -> list[dict[str, Any]]:
        """The integration's entity registry entries."""
        result = await self.ws_call({"type": "config/entity_registry/list"})
        return [e for e in result if e["platform"] == DOMAIN]

    async def entity_id(self, camera_id: str, key: str) -> str:
        """The entity id of camera ``camera_id``'s entity ``key`` (the end of its unique id)."""
        for entry in await self.entities():
            if entry["unique_id"].endswith(f"_{camera_id}_{key}"):
                return str(entry["entity_id"])
        raise StackError(f"no entity {key} for camera {camera_id}")

    def bus(self, event_type: str, match: Callable[[dict[str, Any]], bool] = lambda d: True) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event_type"] == event_type and match(e["data"])]


async def wait_for(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    """Await ``check()`` (sync or async) until truthy and return it; ``StackError`` naming ``what``."""
    try:
        return await wait_until(check, timeout, interval, what=what)
    except TimeoutError as err:
        raise StackError(f"timed out after {timeout:.0f} s waiting for {what}") from err


async def add_mqtt(ha: Hass, port: int) -> None:
    """HA's MQTT integration on the test's broker, through its config flow."""
    flow = await ha.post("/api/config/config_entries/flow", {"handler": "mqtt", "show_advanced_options": False})
    for _ in range(4):
        if flow["type"] == "create_entry":
            return
        if flow["type"] == "menu":
            flow = await ha.post(f"/api/config/config_entries/flow/{flow['flow_id']}", {"next_step_id": "broker"})
            continue
        if flow["type"] != "form":
            raise StackError(f"mqtt flow: {flow}")
        flow = await ha.post(
            f"/api/config/config_entries/flow/{flow['flow_id']}", {"broker": "127.0.0.1", "port": port}
        )
    raise StackError(f"mqtt flow did not finish: {flow}")


async def add_integration(ha: Hass, server_url: str, api_key: str, timeout: float = 30) -> str:
    """Accept the server's MQTT-discovered card with the API key; return the config entry id."""

    async def discovered() -> dict[str, Any] | None:
        flows = await ha.ws_call({"type": "config_entries/flow/progress"})
        return next((f for f in flows if f["handler"] == DOMAIN), None)

    found = await wait_for(discovered, timeout, "the integration's discovery card")
    flow = await ha.post(f"/api/config/config_entries/flow/{found['flow_id']}", {"url": server_url, "api_key": api_key})
    if flow["type"] != "create_entry":
        raise StackError(f"integration flow: {flow}")
    return str(flow["result"]["entry_id"])


# --- the HSI server -----------------------------------------------------------------------------


def server_env(data: Path, port: int, mqtt_url: str, **extra: str) -> dict[str, str]:
    """Environment for ``python -m inference_server serve``: embedded PostgreSQL, the test's broker,
    the server's default batching and fast path (what a user runs), the real YOLO on the CPU."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("HSI_")},
        "HSI_DATA_DIR": str(data),
        "HSI_API_PORT": str(port),
        "MQTT_URL": mqtt_url,
        "HSI_DETECTOR_WEIGHTS": str(demo_assets.pose_weights()),
        "HSI_DETECTOR_DEVICE": "cpu",
        "HSI_DETECT_CLASSES": "person",
        "HSI_FILE_STABLE_S": "0.1",
        "HSI_CAMERA_TIMEZONE": "UTC",
        "HSI_OPTIONS_FILE": str(data / "no-options.json"),
        "YOLO_OFFLINE": "1",
        "XDG_RUNTIME_DIR": os.environ.get("XDG_RUNTIME_DIR", f"/tmp/hsi-runtime-{os.getuid()}"),
    }
    env.update(extra)
    return env


def create_api_key(env: dict[str, str]) -> str:
    """An API key for Home Assistant, made before the server runs (the CLI opens the same database)."""
    Path(env["XDG_RUNTIME_DIR"]).mkdir(mode=0o700, exist_ok=True)
    out = subprocess.run(
        [sys.executable, "-m", "inference_server", "apikey", "create", "homeassistant"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    if out.returncode != 0:
        raise StackError(f"apikey create failed: {out.stderr[-3000:]}")
    return out.stdout.strip()


def wait_server(server: ServerProcess, url: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), urllib.request.urlopen(f"{url}/api/v1/health/live", timeout=2):
            return
        if not server.alive():
            break
        time.sleep(0.3)
    raise StackError(f"server did not start; log:\n{server.tail()}")


def server_request(url: str, key: str, method: str, path: str, payload: Any = None) -> Any:
    data = json.dumps(payload).encode() if payload is not None else None
    req = urllib.request.Request(
        f"{url}/api/v1{path}",
        data=data,
        method=method,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        body = resp.read()
    return json.loads(body) if body else None


# --- the whole stack ---------------------------------------------------------------------------

#: Camera folders: two a user sees on the dashboard, and more so that threat images can be
#: separate events at once (one image per camera) for the latency figure.
CAMERAS = ("back_door", "driveway", *(f"yard_{n}" for n in range(1, 11)))
#: Night, alarm armed away, nobody home: a person is a threat.
THREAT_CONTEXT = {"alarm_state": "armed_away", "people_home": [], "sun": "below_horizon", "open_entries": []}


def camera_name(camera_id: str) -> str:
    return camera_id.replace("_", " ").title()


@dataclass
class Stack:
    tmp: Path
    broker: RestartableMosquitto
    server: ServerProcess
    server_url: str
    api_key: str
    hass: HassProcess
    token: str = ""
    entry_id: str = ""
    _image_tag: int = 0

    def client(self) -> Hass:
        return Hass(self.hass.url, self.token)

    def drop_person(self, camera_id: str, *, asset: str = "bus.jpg", when: datetime | None = None) -> float:
        """Put a real photo with people into the camera's folder (as an FTP upload lands: a temporary
        name, then a rename); return ``time.time()`` just after it landed."""
        self._image_tag += 1
        data = unique_jpeg(demo_assets.image(asset), self._image_tag)
        name = camera_file_name(when)
        folder = self.tmp / "server" / "cameras" / camera_id
        dest = folder / name
        n = 0
        while dest.exists():
            n += 1
            dest = folder / name.replace(".jpg", f"_{n}.jpg")
        put_file(dest, data)
        return time.time()

    def set_context(self, context: dict[str, Any]) -> None:
        server_request(self.server_url, self.api_key, "PUT", "/context", context)

    def restart_server(self) -> None:
        self.server.stop()
        self.server.start()
        wait_server(self.server, self.server_url)

    def restart_broker(self) -> None:
        self.broker.stop()
        self.broker.start()

    def logs(self) -> str:
        parts = []
        for name, path in (
            ("hass", self.hass.config / "home-assistant.log"),
            ("hass stdout", self.hass.log),
            ("server", self.server.log),
            ("mosquitto", self.broker.folder / "mosquitto.log"),
        ):
            parts.append(f"===== {name} ({path}) =====\n{_tail(path)}")
        return "\n".join(parts)

    def _stop_server(self) -> None:
        if self.server.alive():
            self.server.stop()

    def close(self) -> None:
        errors: list[str] = []
        # SIGTERM first: the server stops its embedded PostgreSQL only on a clean stop.
        for stop in (self.hass.stop, self._stop_server, self.server.cleanup):
            try:
                stop()
            except Exception as err:
                errors.append(repr(err))
        if self.broker.proc is not None:
            self.broker.proc.kill()
            self.broker.proc.wait(10)
            self.broker.proc = None
        if errors:
            raise StackError(f"stopping the stack: {errors}")


@contextlib.contextmanager
def running_stack(tmp: Path, dashboard: Path = ROOT / "docs" / "dashboard.yaml") -> Iterator[Stack]:
    """The whole stack, set up as a user would; every process is stopped on exit. On a failure
    while starting, the logs of all three processes are part of the error."""
    broker_dir = tmp / "mosquitto"
    broker_dir.mkdir(parents=True)
    broker = RestartableMosquitto(broker_dir, persistence=False)
    data = tmp / "server"
    for camera in CAMERAS:
        (data / "cameras" / camera).mkdir(parents=True)
    server_port = free_port()
    env = server_env(data, server_port, broker.url)
    server = ServerProcess(env, data / "server.log")
    hass = HassProcess(tmp / "ha", free_port(), pythonpath=frontend_path())
    stack = Stack(tmp, broker, server, f"http://127.0.0.1:{server_port}", "", hass)
    try:
        broker.start()
        stack.api_key = create_api_key(env)
        server.start()
        prepare_config(hass.config, hass.port, dashboard)
        hass.start()
        wait_server(server, stack.server_url)
        for camera in CAMERAS:  # as the owner names them in the server's API before adding HA
            server_request(
                stack.server_url, stack.api_key, "POST", "/cameras", {"id": camera, "name": camera_name(camera)}
            )
        stack.token = asyncio.run(onboard(hass.url))
        asyncio.run(_connect(stack))
        stack.set_context(THREAT_CONTEXT)
        yield stack
    except BaseException as err:
        if isinstance(err, StackError | AssertionError | TimeoutError):
            raise StackError(f"{err}\n{stack.logs()}") from err
        raise
    finally:
        stack.close()


async def _connect(stack: Stack) -> None:
    async with stack.client() as ha:
        await add_mqtt(ha, stack.broker.port)
        stack.entry_id = await add_integration(ha, stack.server_url, stack.api_key)
        # The integration's entities for every camera folder exist once the server's retained
        # camera states arrived.
        await wait_for(lambda: _all_cameras(ha), 60, "an entity for every camera", interval=0.5)
        await add_device_trigger_automation(ha)


async def add_device_trigger_automation(ha: Hass) -> None:
    """An automation, made through HA's automation editor API, triggered by each camera device's
    "risk level high/critical" device triggers; it fires ``DEVICE_TRIGGER_FIRED`` with the event id
    so the tests count what a user's device-trigger automation would do."""
    devices = {e["unique_id"]: e["device_id"] for e in await ha.entities()}
    triggers = [
        {"trigger": "device", "domain": DOMAIN, "device_id": device_id, "type": f"risk_level_{level}"}
        for camera in CAMERAS
        for unique_id, device_id in devices.items()
        if unique_id.endswith(f"_{camera}_detection")
        for level in ("high", "critical")
    ]
    config = {
        "alias": "HSI device trigger probe",
        "mode": "parallel",
        "max": 100,
        "triggers": triggers,
        "actions": [
            {
                "event": DEVICE_TRIGGER_FIRED,
                "event_data": {
                    "event_id": "{{ trigger.event.data.event_id }}",
                    "risk_level": "{{ trigger.event.data.risk_level }}",
                },
            }
        ],
    }
    await ha.post("/api/config/automation/config/hsi_device_trigger_probe", config)

    async def loaded() -> bool:
        state = await ha.state("automation.hsi_device_trigger_probe")
        return state is not None and state["state"] == "on"

    await wait_for(loaded, 30, "the device-trigger automation")


async def _all_cameras(ha: Hass) -> bool:
    ids = {e["unique_id"] for e in await ha.entities()}
    return all(any(u.endswith(f"_{camera}_detection") for u in ids) for camera in CAMERAS)
