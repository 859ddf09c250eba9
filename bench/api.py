"""REST API benchmark: requests/s and latency of ``GET /api/v1/events`` and of image uploads.

The server runs here with role ``api`` (REST, ingest, MQTT relay; no detector, no worker) on an
embedded PostgreSQL in a temporary folder under /tmp. Before the timed runs it holds 10,000
events (with their images and detections, inserted with SQL straight into the store's tables,
shaped like the rows the pipeline writes) on four cameras over 30 days.

The load comes from a second process on loopback (this module with ``--client``: an aiohttp
client with bounded concurrency and a bounded number of requests), so the client's CPU is not
the server's. Each scenario runs a warm-up, then the measured requests; latency is from sending
a request to having read the whole answer, as the client sees it.

Scenarios:

- ``events``: ``GET /api/v1/events`` (newest 50 of 10,000, with their detections);
- ``events, filtered``: one camera, ``min_risk=60``;
- ``events, page 100``: 50 events after a cursor 5,000 events deep (keyset pagination);
- ``upload``: ``POST /api/v1/cameras/{id}/images`` with bus.jpg (137 kB, 810×1080), each upload with a
  different JPEG comment so no upload is a duplicate: validated, stored, queued as a job.

Run from the repository root::

    XDG_RUNTIME_DIR=/tmp .venv/bin/python -m bench.api --json /tmp/bench-api.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import struct
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp

from bench.report import finish, process_cpu_s, say
from inference_server import demo_assets
from inference_server.config import Settings
from inference_server.logging_setup import configure
from inference_server.server import Server
from inference_server.store import api_keys
from inference_server.store import events as events_store

CAMERAS = (("front_door", "Front Door"), ("driveway", "Driveway"), ("back_door", "Back Door"), ("garden", "Garden"))
UPLOAD_CAMERA = "front_door"
REPO = Path(__file__).resolve().parent.parent


def with_comment(jpeg: bytes, text: str) -> bytes:
    """The same picture with a JPEG COM segment after SOI: new bytes (and hash), same pixels."""
    body = text.encode()
    return jpeg[:2] + b"\xff\xfe" + struct.pack(">H", len(body) + 2) + body + jpeg[2:]


# --- data --------------------------------------------------------------------------------------

# Rows as the pipeline writes them: one image per event, 1-3 detections per image, the rules
# reasoner's factors and summary. Spread over 30 days, four cameras, ~1 in 5 reviewed.
_SEED_SQL = [
    """
    INSERT INTO images (camera_id, sha256, path, source, original_name, media_type, width, height,
                        size_bytes, captured_at, captured_at_source, received_at)
    SELECT c.id, sha256(int8send(g)), $2 || '/images/' || c.id || '/' || g || '.jpg', 'folder',
           'MDAlarm_' || to_char(t, 'YYYYMMDD-HH24MISS') || '.jpg', 'image/jpeg', 1920, 1080,
           250000 + (g * 7919) % 90000, t, 'filename', t + interval '2 seconds'
    FROM generate_series(1, $1) AS g,
         LATERAL (SELECT (ARRAY['front_door', 'driveway', 'back_door', 'garden'])[1 + g % 4] AS id) AS c,
         LATERAL (SELECT now() - make_interval(secs => g * 259.2) AS t) AS s
    ORDER BY g
    """,
    """
    INSERT INTO detections (image_id, camera_id, label, category, confidence, x1, y1, x2, y2, zone, detected_at)
    SELECT i.id, i.camera_id, d.label, d.category, 0.45 + ((i.id * 13 + n) % 50) / 100.0,
           0.1 + n * 0.2, 0.2, 0.25 + n * 0.2, 0.9, CASE WHEN n = 0 THEN 'porch' END, i.captured_at
    FROM images i,
         LATERAL generate_series(0, i.id % 3) AS n,
         LATERAL (SELECT (ARRAY['person', 'car', 'dog'])[1 + (i.id + n) % 3] AS label) AS l,
         LATERAL (SELECT l.label,
                         CASE l.label WHEN 'person' THEN 'person' WHEN 'car' THEN 'vehicle' ELSE 'animal' END
                         AS category) AS d
    """,
    """
    INSERT INTO events (id, camera_id, image_id, started_at, ended_at, risk_score, risk_level, summary,
                        reasoning, risk_factors, objects, analysis_source, is_fast_path, snapshot_path,
                        reviewed, notes, feedback)
    SELECT gen_random_uuid(), i.camera_id, i.id, i.captured_at, i.captured_at + interval '30 seconds',
           r.score,
           CASE WHEN r.score >= 85 THEN 'critical' WHEN r.score >= 60 THEN 'high'
                WHEN r.score >= 30 THEN 'medium' ELSE 'low' END,
           'Person seen at ' || initcap(replace(i.camera_id, '_', ' ')) || ' at night',
           'One or more people were detected near an entry point outside usual hours while the alarm '
           || 'was armed; no one is home. The person lingered for 30 seconds close to the door.',
           jsonb_build_array(
               jsonb_build_object('name', 'person_seen', 'points', 40, 'detail', 'a person is in view'),
               jsonb_build_object('name', 'night', 'points', 15, 'detail', 'between 22:00 and 06:00'),
               jsonb_build_object('name', 'zone', 'points', r.score - 55, 'detail', 'in zone porch')),
           jsonb_build_object('person', 1 + i.id % 3),
           'rules', false, $1 || '/snapshots/' || i.id || '.jpg',
           i.id % 5 = 0, CASE WHEN i.id % 10 = 0 THEN 'postman' END,
           CASE WHEN i.id % 20 = 0 THEN 'correct' END
    FROM images i, LATERAL (SELECT ((i.id * 37) % 100)::smallint AS score) AS r
    """,
]


async def seed(server: Server, count: int) -> dict[str, Any]:
    started = time.perf_counter()
    root = str(server.settings.data_dir)
    async with server.pool.acquire() as conn, conn.transaction():
        await conn.executemany("INSERT INTO cameras (id, name) VALUES ($1, $2)", CAMERAS)
        await conn.execute(_SEED_SQL[0], count, root)
        await conn.execute(_SEED_SQL[1])
        await conn.execute(_SEED_SQL[2], root)
    async with server.pool.acquire() as conn:
        await conn.execute("ANALYZE")
        counts = {
            table: await conn.fetchval(f"SELECT count(*) FROM {table}")
            for table in ("cameras", "images", "detections", "events")
        }
        deep = await conn.fetchrow(
            "SELECT started_at, id FROM events ORDER BY started_at DESC, id DESC OFFSET $1 LIMIT 1", count // 2 - 1
        )
    cursor = events_store.encode_cursor(deep["started_at"], deep["id"])
    return {"seconds": time.perf_counter() - started, "rows": counts, "deep_cursor": cursor}


# --- CPU accounting ----------------------------------------------------------------------------


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def postgres_cpu_s(pg_root: Path) -> float:
    """CPU time of the postmaster and its backends (children), alive now."""
    pid_file = next(pg_root.rglob("postmaster.pid"), None)
    if pid_file is None:
        return 0.0
    postmaster = pid_file.read_text().split()[0]
    total = process_cpu_s(postmaster)
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if stat[stat.rindex(")") + 2 :].split()[1] == postmaster:
            total += process_cpu_s(proc.name)
    return total


# --- load generator (the second process) ------------------------------------------------------


async def _load(spec: dict[str, Any], jpeg: bytes) -> dict[str, Any]:
    statuses: Counter[int] = Counter()
    latencies: list[float] = []
    connector = aiohttp.TCPConnector(limit=spec["concurrency"])
    async with aiohttp.ClientSession(spec["url"], headers=spec["headers"], connector=connector) as http:

        async def one(tag: str) -> None:
            started = time.perf_counter()
            if spec["kind"] == "upload":
                body = with_comment(jpeg, tag)
                resp = await http.post(spec["path"], data=body, headers={"Content-Type": "image/jpeg"})
            else:
                resp = await http.get(spec["path"], params=spec["params"])
            async with resp:
                await resp.read()
            latencies.append(time.perf_counter() - started)
            statuses[resp.status] += 1

        async def run(prefix: str, total: int) -> None:
            taken = iter(range(total))

            async def worker() -> None:
                for i in taken:
                    await one(f"{spec['run_id']} {prefix} {i}")

            await asyncio.gather(*(worker() for _ in range(spec["concurrency"])))

        await run("warmup", spec["warmup"])
        statuses.clear()
        latencies.clear()
        cpu0, wall0 = time.process_time(), time.perf_counter()
        await run("measured", spec["requests"])
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    return {"wall_s": wall, "client_cpu_s": cpu, "latencies": latencies, "statuses": dict(statuses)}


def client_main() -> int:
    """``--client``: read one scenario as JSON on stdin, run it, print the result as JSON."""
    spec = json.loads(sys.stdin.read())
    jpeg = Path(spec["jpeg"]).read_bytes() if spec["kind"] == "upload" else b""
    print(json.dumps(asyncio.run(_load(spec, jpeg))))
    return 0


# --- scenarios ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    kind: str  # "get" or "upload"
    path: str
    params: dict[str, str]
    requests: int


@dataclass(frozen=True, slots=True)
class Result:
    scenario: str
    concurrency: int
    requests: int
    errors: int
    statuses: dict[str, int]
    requests_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    client_cpu_s: float
    server_cpu_s: float
    postgres_cpu_s: float
    server_cpu_ms_per_request: float
    wall_s: float


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of already sorted values."""
    rank = max(1, min(len(sorted_values), round(q / 100 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


async def run_scenario(
    server: Server, key: str, scenario: Scenario, concurrency: int, warmup: int, run_id: str
) -> Result:
    spec = {
        "url": server.api_url,
        "headers": {"Authorization": f"Bearer {key}"},
        "kind": scenario.kind,
        "path": scenario.path,
        "params": scenario.params,
        "concurrency": concurrency,
        "requests": scenario.requests,
        "warmup": warmup,
        "jpeg": str(demo_assets.image("bus.jpg")),
        "run_id": f"{run_id} c{concurrency}",
    }
    cpu0, pg0 = process_cpu_s("self"), postgres_cpu_s(server.settings.postgres_path)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.api",
        "--client",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        cwd=REPO,
    )
    out, _ = await proc.communicate(json.dumps(spec).encode())
    if proc.returncode != 0:
        raise RuntimeError(f"load generator exited with {proc.returncode}")
    cpu, pg = process_cpu_s("self") - cpu0, postgres_cpu_s(server.settings.postgres_path) - pg0
    got = json.loads(out)
    lat = sorted(got["latencies"])
    ok = sum(n for status, n in got["statuses"].items() if 200 <= int(status) < 300)
    return Result(
        scenario=scenario.name,
        concurrency=concurrency,
        requests=len(lat),
        errors=len(lat) - ok,
        statuses=got["statuses"],
        requests_per_s=len(lat) / got["wall_s"],
        p50_ms=percentile(lat, 50) * 1000,
        p95_ms=percentile(lat, 95) * 1000,
        p99_ms=percentile(lat, 99) * 1000,
        max_ms=lat[-1] * 1000,
        client_cpu_s=got["client_cpu_s"],
        # Server and PostgreSQL CPU include the warm-up (the client cannot tell us when it ended).
        server_cpu_s=cpu,
        postgres_cpu_s=pg,
        server_cpu_ms_per_request=(cpu + pg) * 1000 / (len(lat) + warmup),
        wall_s=got["wall_s"],
    )


def table(results: Sequence[Result]) -> str:
    head = (
        f"{'scenario':<18} {'conc':>4} {'requests':>8} {'errors':>6} {'req/s':>8} "
        f"{'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} {'client CPU':>10} {'server CPU':>10} {'PG CPU':>7} {'CPU/req':>8}"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        lines.append(
            f"{r.scenario:<18} {r.concurrency:>4} {r.requests:>8} {r.errors:>6} {r.requests_per_s:>8.1f} "
            f"{r.p50_ms:>7.1f} {r.p95_ms:>7.1f} {r.p99_ms:>7.1f} {r.client_cpu_s:>9.1f}s "
            f"{r.server_cpu_s:>9.1f}s {r.postgres_cpu_s:>6.1f}s {r.server_cpu_ms_per_request:>5.1f} ms"
        )
    return "\n".join(lines)


async def amain(args: argparse.Namespace) -> dict[str, Any]:
    configure(args.log_level, "text")
    run_id = os.urandom(4).hex()
    root = Path(tempfile.mkdtemp(prefix="hsi-bench-api-", dir="/tmp"))
    say(f"HSI REST API benchmark — data in {root}; {os.cpu_count()} × {cpu_model()}")
    settings = Settings(
        role="api",
        data_dir=root / "data",
        database_url=None,
        mqtt_url=None,
        mqtt_embedded_port=0,
        api_host="127.0.0.1",
        api_port=0,
        camera_timezone="UTC",
        log_level=args.log_level,
    )
    server = Server(settings)
    try:
        started = time.perf_counter()
        await server.start()
        say(f"  server ready in {time.perf_counter() - started:.1f} s at {server.api_url} (role api)")
        seeded = await seed(server, args.events)
        rows = ", ".join(f"{n} {table}" for table, n in seeded["rows"].items())
        say(f"  seeded {rows} in {seeded['seconds']:.1f} s")
        key = await api_keys.create(server.pool, "bench")
        scenarios = [
            Scenario("events", "get", "/api/v1/events", {}, args.get_requests),
            Scenario(
                "events, filtered", "get", "/api/v1/events", {"camera": "driveway", "min_risk": "60"}, args.get_requests
            ),
            Scenario("events, page 100", "get", "/api/v1/events", {"cursor": seeded["deep_cursor"]}, args.get_requests),
            Scenario("upload", "upload", f"/api/v1/cameras/{UPLOAD_CAMERA}/images", {}, args.uploads),
        ]
        results: list[Result] = []
        for scenario in scenarios:
            for concurrency in args.concurrency:
                say(f"  {scenario.name}, concurrency {concurrency} ...")
                result = await run_scenario(server, key, scenario, concurrency, args.warmup, run_id)
                results.append(result)
                say(f"    {result.requests_per_s:.1f} req/s, p95 {result.p95_ms:.1f} ms, errors {result.errors}")
        stored = await server.pool.fetchval(
            "SELECT count(*) FROM images WHERE camera_id = $1 AND source = 'upload'", UPLOAD_CAMERA
        )
        uploads_sent = sum(r.requests for r in results if r.scenario == "upload") + args.warmup * len(args.concurrency)
        say()
        say(table(results))
        say()
        say(f"uploads stored as new images: {stored} of {uploads_sent} sent (no duplicates expected)")
        return {
            "machine": {"cpu": cpu_model(), "cpus": os.cpu_count(), "python": sys.version.split()[0]},
            "events_in_db": seeded["rows"]["events"],
            "seed": {k: v for k, v in seeded.items() if k != "deep_cursor"},
            "settings": {"db_pool_size": settings.db_pool_size, "role": settings.role},
            "args": {k: v for k, v in vars(args).items() if k != "json"},
            "results": [asdict(r) for r in results],
            "uploads_stored": stored,
            "uploads_sent": uploads_sent,
            "ok": all(r.errors == 0 for r in results) and stored == uploads_sent,
        }
    finally:
        await server.stop()
        shutil.rmtree(root, ignore_errors=True)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--events", type=int, default=10_000, help="events (and images) in the database")
    p.add_argument("--get-requests", type=int, default=2000, help="measured requests per GET scenario and level")
    p.add_argument("--uploads", type=int, default=400, help="measured uploads per concurrency level")
    p.add_argument("--warmup", type=int, default=50, help="requests before each measured run")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8], help="requests in flight (one run per level)")
    p.add_argument("--log-level", default="WARNING", help="server log level")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args(argv)
    if args.events < 2 or min(args.concurrency) < 1 or args.get_requests < 1 or args.uploads < 1:
        p.error("--events must be ≥ 2; --concurrency, --get-requests and --uploads ≥ 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv == ["--client"]:
        return client_main()
    args = parse_args(argv)
    return finish(
        asyncio.run(amain(args)), args.json, "some requests failed or some uploads were not stored: see the table above"
    )


if __name__ == "__main__":
    sys.exit(main())
