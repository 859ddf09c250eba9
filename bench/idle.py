"""An idle server's own load: the statements it sends PostgreSQL a second, by statement, and the
CPU it and PostgreSQL take, with no camera sending anything (the state of a home server most of
the day). The whole server runs (embedded PostgreSQL, in-process broker, the detector loaded, no
LLM; FTP off unless ``--ftp``: on with a login, as the add-on has it); the count starts ``--settle`` seconds after
start-up and lasts ``--seconds``.

``--history N`` first stores N done images and jobs, spread over the last 13 days (inside
retention), as a home's database holds them after a few weeks: what the server reads on its own
every few seconds then costs what it costs on a real install, not on an empty database.

    YOLO_OFFLINE=1 XDG_RUNTIME_DIR=/tmp/hsi-runtime-0 .venv/bin/python -m bench.idle [--history 300000]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import logging
import tempfile
import time
from pathlib import Path
from typing import Any, get_args

from bench.pipeline_cpu import CpuMeter, cpu_delta
from bench.report import show
from bench.roundtrips import RoundTrips
from inference_server import demo_assets, event_loop
from inference_server.clock import SystemClock
from inference_server.config import Settings
from inference_server.server import Server


async def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="hsi-idle-"))
    settings = Settings(
        data_dir=work / "data",
        mqtt_url=None,
        mqtt_embedded_port=0,
        api_port=0,
        detector_weights=demo_assets.pose_weights(),
        detector_device="cpu",
        ftp_enabled=args.ftp,
        ftp_users=[{"username": "bench", "password": "bench-password"}] if args.ftp else [],
        ftp_host="127.0.0.1",
        ftp_port=0,
        ftp_passive_ports="0",
    )
    server = Server(settings, clock=SystemClock())
    await server.start()
    try:
        if args.history:
            await _history(server, args.history)
        meter = CpuMeter()
        meter.find_postgres(settings.data_dir)
        await asyncio.sleep(args.settle)
        before, cpu = meter.snapshot(), time.process_time()
        profiler = cProfile.Profile() if args.profile else None
        if profiler is not None:
            profiler.enable()  # the event loop's thread only
        with RoundTrips() as trips:
            started = time.perf_counter()
            await asyncio.sleep(args.seconds)
            elapsed = time.perf_counter() - started
        own = time.process_time() - cpu
        after = meter.snapshot()
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(args.profile)
    finally:
        await server.stop()
    postgres = None if after.postgres is None or before.postgres is None else after.postgres - before.postgres
    delta = cpu_delta(before, after)
    return {
        "event_loop": event_loop.describe(),
        "seconds": round(elapsed, 1),
        "statements_per_s": round(trips.count / elapsed, 2),
        "server_cpu_percent_of_a_core": round(100 * own / elapsed, 2),
        "postgres_cpu_percent_of_a_core": None if postgres is None else round(100 * postgres / elapsed, 2),
        "server_cpu_ms_per_s_by_thread": {
            group: round(1000 * secs / elapsed, 2)
            for group, secs in sorted(delta["threads_cpu_s"].items(), key=lambda kv: -kv[1])
            if secs > 0
        },
        "server_wakeups_per_s_by_thread": {
            group: round(n / elapsed, 2)
            for group, n in sorted(delta["wakeups"].items(), key=lambda kv: -kv[1])
            if n > 0
        },
        "by_statement_per_s": {text[:120]: round(n / elapsed, 2) for text, n in trips.by_statement.most_common(10)},
    }


async def _history(server: Server, count: int) -> None:
    """``count`` done images and jobs of one camera over the last 13 days, then vacuumed and
    analysed (as autovacuum leaves a table that has grown)."""
    assert server.pool is not None
    started = time.perf_counter()
    await server.pool.execute("INSERT INTO cameras (id, name) VALUES ('history', 'History') ON CONFLICT DO NOTHING")
    await server.pool.execute(
        "WITH img AS (INSERT INTO images (camera_id, sha256, path, source, media_type, width, height, size_bytes,"
        " captured_at, captured_at_source, received_at)"
        " SELECT 'history', sha256(int8send(g)), '/history/' || g || '.jpg', 'folder', 'image/jpeg', 1280, 720,"
        " 100000, t, 'mtime', t FROM generate_series(1, $1) AS g,"
        " LATERAL (SELECT now() - make_interval(secs => g * 13 * 86400.0 / $1)) AS at (t) RETURNING id, received_at)"
        " INSERT INTO jobs (image_id, camera_id, state, attempts, max_attempts, created_at, updated_at, finished_at)"
        " SELECT id, 'history', 'done', 1, 5, received_at, received_at, received_at + interval '0.4 s' FROM img",
        count,
    )
    async with server.pool.acquire() as conn:
        await conn.execute("VACUUM ANALYZE images")
        await conn.execute("VACUUM ANALYZE jobs")
    print(f"history: {count} done images and jobs stored in {time.perf_counter() - started:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--settle", type=float, default=10, help="seconds after start-up before counting")
    parser.add_argument("--history", type=int, default=0, help="done images and jobs stored first (13 days' worth)")
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--event-loop", choices=get_args(event_loop.EventLoopChoice), default="uvloop", help="the server's: uvloop"
    )
    parser.add_argument("--profile", type=Path, help="cProfile the event loop while counting, stats to this file")
    parser.add_argument("--ftp", action="store_true", help="the FTP receiver on (with a login), as the add-on has it")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    show(event_loop.run(run(args), args.event_loop), args.json)


if __name__ == "__main__":
    main()
