"""An idle server's own load: the statements it sends PostgreSQL a second, by statement, and the
CPU it and PostgreSQL take, with no camera sending anything (the state of a home server most of
the day). The whole server runs (embedded PostgreSQL, in-process broker, the detector loaded, no
LLM); the count starts ``--settle`` seconds after start-up and lasts ``--seconds``.

    YOLO_OFFLINE=1 XDG_RUNTIME_DIR=/tmp/hsi-runtime-0 .venv/bin/python -m bench.idle
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.pipeline_cpu import CpuMeter, cpu_delta
from bench.report import show
from bench.roundtrips import RoundTrips
from inference_server import demo_assets
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
    )
    server = Server(settings, clock=SystemClock())
    await server.start()
    try:
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
    return {
        "seconds": round(elapsed, 1),
        "statements_per_s": round(trips.count / elapsed, 2),
        "server_cpu_percent_of_a_core": round(100 * own / elapsed, 2),
        "postgres_cpu_percent_of_a_core": None if postgres is None else round(100 * postgres / elapsed, 2),
        "server_cpu_ms_per_s_by_thread": {
            group: round(1000 * secs / elapsed, 2)
            for group, secs in sorted(cpu_delta(before, after)["threads_cpu_s"].items(), key=lambda kv: -kv[1])
            if secs > 0
        },
        "by_statement_per_s": {text[:120]: round(n / elapsed, 2) for text, n in trips.by_statement.most_common(10)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--settle", type=float, default=10, help="seconds after start-up before counting")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--profile", type=Path, help="cProfile the event loop while counting, stats to this file")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    show(asyncio.run(run(args)), args.json)


if __name__ == "__main__":
    main()
