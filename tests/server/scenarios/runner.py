"""Runs the household cases (``cases.CASES``) through one whole server, one case after another,
each on its own camera and day: cameras, zones and the current context over REST, the context in
force at capture time stored with its ``set_at`` (REST cannot backdate), real pictures dropped
into the camera folder with the capture time in the file name, the events read back over REST
and the ``new`` messages taken from the real broker.

The server runs on a ``FakeClock``: arrival spacing between frames and the batch's idle time
are clock moves, so a five-minute activity takes seconds; the time to ``new`` counts them."""

from __future__ import annotations

import asyncio
import functools
import io
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from PIL import Image

from inference_server import demo_assets
from inference_server.comms.mqtt import BrokerAddress
from inference_server.config import LlmSettings, Settings
from inference_server.server import Server
from inference_server.store import api_keys, context
from tests.support.waiting import wait_until

from .cases import Case, day_of

log = logging.getLogger(__name__)

WHOLE_FRAME = [[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]
ALERT_LEVELS = ("high", "critical")
LEVEL_ORDER = {"low": 0, "medium": 1, "high": 2, "critical": 3}


def scenario_settings(data_dir: Path, database_url: str | None, llm: LlmSettings | None = None) -> Settings:
    """The server as shipped (batch idle 60 s, window 90 s, fast path 0.90, alerts open at high),
    quicker only at noticing files (0.1 s stable) and jobs; camera clocks in UTC."""
    values: dict[str, Any] = {}
    if llm is not None:
        values["llm"] = llm
    return Settings(
        data_dir=data_dir,
        database_url=database_url,
        mqtt_url=None,
        mqtt_embedded_port=0,
        api_port=0,
        detector_weights=demo_assets.pose_weights(),
        detector_device="cpu",
        file_stable_s=0.1,
        job_poll_interval_s=0.2,
        camera_timezone="UTC",
        **values,
    )


class Advancing:
    """The fake clock's moves, so a time measured on the monotonic clock can add them."""

    def __init__(self, clock: Any) -> None:
        self.clock = clock
        self.moves: list[tuple[float, float]] = []

    def advance(self, seconds: float) -> None:
        self.moves.append((time.monotonic(), seconds))
        self.clock.advance(seconds)

    def between(self, start: float, end: float) -> float:
        return sum(s for at, s in self.moves if start <= at <= end)


@dataclass
class Outcome:
    case: Case
    camera_id: str
    events: list[dict[str, Any]] = field(default_factory=list)
    persons_seen: int = 0  # person detections over the case's frames (GET /detections)
    to_new_s: float | None = None  # first frame landed → first ``new`` on the broker, with clock moves
    opened_at_once: bool | None = None  # ``new`` came before the batch closed (not when it closed)
    error: str | None = None

    @property
    def top(self) -> dict[str, Any] | None:
        return max(self.events, key=lambda e: (LEVEL_ORDER[e["risk_level"]], e["risk_score"]), default=None)

    @property
    def level(self) -> str:
        top = self.top
        return top["risk_level"] if top is not None else "none"

    @property
    def alerted(self) -> bool:
        return any(e["risk_level"] in ALERT_LEVELS for e in self.events)

    @property
    def naive_alert(self) -> bool:
        """A naive "person detected" alert would have fired."""
        return self.persons_seen > 0

    def problems(self) -> list[str]:
        """Why the outcome is not what the case expects (empty: as expected)."""
        if self.error is not None:
            return [self.error]
        found = []
        if self.case.kind == "threat" and not self.alerted:
            found.append(f"threat judged {self.level} (expected high or above): {self.describe()}")
        if self.case.kind == "benign" and self.alerted:
            found.append(f"benign case judged {self.level} (expected below high): {self.describe()}")
        if self.case.events is not None and len(self.events) != self.case.events:
            levels = [e["risk_level"] for e in self.events]
            found.append(f"{len(self.events)} events {levels} (expected {self.case.events})")
        if self.naive_alert != self.case.naive_alert:
            found.append(
                f"the detector saw {self.persons_seen} person(s); the table says naive_alert={self.case.naive_alert}"
            )
        return found

    def describe(self) -> str:
        top = self.top
        if top is None:
            return "no event"
        factors = ", ".join(f"{f['name']} {f['points']:+d}" for f in top["risk_factors"])
        return f"{top['risk_score']} [{factors}] {top['summary']!r} ({top['analysis_source']})"


class Subscriber:
    """First arrival (monotonic) of each (camera, type) on the events topic, from the real broker."""

    def __init__(self, url: str, topic: str) -> None:
        address = BrokerAddress.parse(url)
        self.arrivals: dict[tuple[str, str], float] = {}
        self.subscribed = asyncio.Event()
        loop = asyncio.get_running_loop()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="hsi-scenarios")
        self.client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *_: self._subscribed(loop)
        self.client.on_message = self._message
        if address.username:
            self.client.username_pw_set(address.username, address.password)
        self.client.connect(address.host, address.port)
        self.client.loop_start()

    def _subscribed(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.call_soon_threadsafe(self.subscribed.set)

    def _message(self, _c: Any, _u: Any, message: mqtt.MQTTMessage) -> None:
        body = json.loads(message.payload)
        self.arrivals.setdefault((body["camera_id"], body["type"]), time.monotonic())

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _frames(case: Case) -> list[bytes]:
    """The case's frames: the real picture, re-encoded once per frame (distinct bytes)."""
    source = Image.open(demo_assets.image(case.image)).convert("RGB")
    frames = []
    for n in range(case.frames):
        buf = io.BytesIO()
        source.save(buf, format="JPEG", quality=92 - n)
        frames.append(buf.getvalue())
    return frames


async def _processed(server: Server, camera_id: str, count: int) -> bool:
    """The camera's first ``count`` images are through detection (done, or dead-lettered)."""
    done: bool = await server.pool.fetchval(
        "SELECT count(*) >= $2 FROM jobs WHERE camera_id = $1 AND state IN ('done', 'dead')", camera_id, count
    )
    return done


async def _delivered(server: Server, mqtt_in: Subscriber, camera_id: str) -> None:
    """An event the image opened has its ``new`` on the broker before the clock moves on (else the
    move would count in its time to ``new``)."""
    if await server.pool.fetchval("SELECT count(*) > 0 FROM events WHERE camera_id = $1", camera_id):
        await wait_until(lambda: (camera_id, "new") in mqtt_in.arrivals, timeout=10, interval=0.02)


async def run_case(
    server: Server,
    clock: Advancing,
    http: aiohttp.ClientSession,
    mqtt_in: Subscriber,
    index: int,
    case: Case,
    *,
    llm: bool,
) -> Outcome:
    settings = server.settings
    camera_id = f"c{index:02d}-{case.zone.replace(' ', '-')}"
    outcome = Outcome(case, camera_id)
    tz = ZoneInfo(settings.camera_timezone)
    first = datetime.combine(day_of(index), case.at, tzinfo=tz)

    async with http.post("/api/v1/cameras", json={"id": camera_id, "name": case.zone.title()}) as resp:
        assert resp.status == 201, await resp.text()
    zones = {"zones": [{"name": case.zone, "polygon": WHOLE_FRAME, "sensitivity": case.sensitivity}]}
    async with http.put(f"/api/v1/cameras/{camera_id}/zones", json=zones) as resp:
        assert resp.status == 200, await resp.text()
    await context.put(server.pool, case.context, "scenario", set_at=first - timedelta(hours=case.set_hours_before))
    # What Home Assistant sends now (set_at now): the current context while the pictures are processed.
    current = case.current or case.context
    async with http.put("/api/v1/context", json=current.model_dump(mode="json")) as resp:
        assert resp.status == 200, await resp.text()

    folder = settings.cameras_path / camera_id
    folder.mkdir(parents=True, exist_ok=True)
    staging = settings.data_dir / "scenario-staging"
    staging.mkdir(parents=True, exist_ok=True)
    landed = 0.0
    for n, data in enumerate(_frames(case)):
        captured = first + timedelta(seconds=n * case.spacing_s)
        name = f"MDAlarm_{captured.strftime('%Y%m%d-%H%M%S')}.jpg"
        part = staging / f"{camera_id}-{name}"
        part.write_bytes(data)
        if n == 0:
            landed = time.monotonic()
        part.rename(folder / name)  # whole, at once: as an FTP server's final rename
        await wait_until(functools.partial(_processed, server, camera_id, n + 1), timeout=120, interval=0.05)
        await _delivered(server, mqtt_in, camera_id)
        if n < case.frames - 1:
            clock.advance(case.spacing_s)
    # The activity is over: the batch's idle time passes (then, if need be, its window), it
    # closes and the event ends, as the server's own closer would do it.
    closing = time.monotonic()
    for wait in (settings.batch_idle_s + 0.5, settings.batch_window_s):
        clock.advance(wait)
        await server.batches.close_due()
        if await server.pool.fetchval(
            "SELECT count(*) = 0 FROM batches WHERE camera_id = $1 AND closed_at IS NULL", camera_id
        ):
            break
    else:
        outcome.error = "the batch did not close after its idle time and window"
    if llm:
        await wait_until(
            lambda: server.pool.fetchval(
                "SELECT count(*) = 0 FROM events WHERE camera_id = $1 AND llm_state IN ('pending', 'running')",
                camera_id,
            ),
            timeout=600,
            interval=0.2,
        )

    async with http.get("/api/v1/events", params={"camera": camera_id, "limit": "100"}) as resp:
        assert resp.status == 200, await resp.text()
        outcome.events = list(reversed((await resp.json())["events"]))  # oldest first
    async with http.get("/api/v1/detections", params={"camera": camera_id, "label": "person", "limit": "500"}) as resp:
        assert resp.status == 200, await resp.text()
        outcome.persons_seen = len((await resp.json())["detections"])
    if outcome.events:
        try:
            arrived: float = await wait_until(
                lambda: mqtt_in.arrivals.get((camera_id, "new")), timeout=10, interval=0.02
            )
        except TimeoutError:
            outcome.error = "no `new` message on the broker for its event"
        else:
            outcome.to_new_s = arrived - landed + clock.between(landed, arrived)
            outcome.opened_at_once = arrived < closing
    return outcome


async def run_cases(
    server: Server,
    clock: Any,
    cases: tuple[Case, ...],
    *,
    llm: bool = False,
    progress: Callable[[Outcome], None] | None = None,
) -> list[Outcome]:
    """Each case in turn on ``server`` (started with ``clock``, a ``FakeClock``)."""
    key = await api_keys.create(server.pool, "scenarios")
    mqtt_in = Subscriber(server.mqtt_url, server.topics.events)
    advancing = Advancing(clock)
    outcomes = []
    try:
        await asyncio.wait_for(mqtt_in.subscribed.wait(), 10)
        async with aiohttp.ClientSession(base_url=server.api_url, headers={"Authorization": f"Bearer {key}"}) as http:
            for index, case in enumerate(cases):
                try:
                    outcome = await run_case(server, advancing, http, mqtt_in, index, case, llm=llm)
                except (TimeoutError, AssertionError) as err:
                    log.exception("scenario %s did not run through", case.name)
                    outcome = Outcome(case, f"c{index:02d}", error=f"did not run through: {err!r}")
                outcomes.append(outcome)
                if progress is not None:
                    progress(outcome)
    finally:
        mqtt_in.close()
    return outcomes
