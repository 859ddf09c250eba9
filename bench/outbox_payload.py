"""The outbox's large payloads (snapshots): PostgreSQL's backend CPU per message queued.

    YOLO_OFFLINE=1 XDG_RUNTIME_DIR=/tmp .venv/bin/python -m bench.outbox_payload [--messages 300 --rounds 3]

A snapshot goes to MQTT through the outbox: its JPEG (50-200 kB) is a row's payload. PostgreSQL
tries to compress any value that makes a row longer than 2 kB (pglz) before it moves it out of
line; a JPEG does not compress, so that is CPU for nothing. Migration 0012 stores the payload as
it is (``STORAGE EXTERNAL``); this bench queues the same messages through ``outbox.add_many`` (one
snapshot and the camera's state, as a store queues them) into a fresh embedded PostgreSQL
migrated as the server migrates it, with the column as migrated against the column set back to
PostgreSQL's default (``EXTENDED``, what it was before), in interleaved rounds, and prints the
backend's CPU (``/proc/<pid>/stat``, user + system) and the wall time per message queued.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.report import process_cpu_s, show
from inference_server import demo_assets
from inference_server.config import Settings
from inference_server.server import open_database
from inference_server.store import outbox

STATE_TOPIC = "hsi/cameras/front/state"


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="hsi-outbox-bench-"))
    settings = Settings(data_dir=work, database_url=None)
    pool, embedded = await open_database(settings)
    jpegs = [demo_assets.image(name).read_bytes() for name in ("bus.jpg", "zidane.jpg")]
    state = b'{"risk_score": 12, "risk_level": "low", "objects": {"person": 4, "bus": 1}, "enabled": true}'
    results: dict[str, list[dict[str, float]]] = {"EXTERNAL (as migrated)": [], "EXTENDED (before)": []}
    try:
        async with pool.acquire() as conn:
            migrated = await conn.fetchval(
                "SELECT attstorage FROM pg_attribute WHERE attrelid = 'outbox'::regclass AND attname = 'payload'"
            )
            if migrated != b"e":
                raise SystemExit(f"outbox.payload is stored as {migrated!r}, not EXTERNAL: migration 0012 missing?")
            pid = await conn.fetchval("SELECT pg_backend_pid()")
            for _ in range(args.rounds):  # interleaved: the machine's drift hits both
                for storage in results:
                    await conn.execute(f"ALTER TABLE outbox ALTER COLUMN payload SET STORAGE {storage.split()[0]}")
                    cpu, wall = process_cpu_s(pid), time.perf_counter()
                    for n in range(args.messages):
                        # Distinct bytes each time (a camera's snapshot changes): a comment's worth appended.
                        snapshot = jpegs[n % 2] + n.to_bytes(4, "little")
                        async with conn.transaction():
                            messages = [("hsi/cameras/front/snapshot", snapshot, True), (STATE_TOPIC, state, True)]
                            await outbox.add_many(conn, messages)
                    cpu, wall = process_cpu_s(pid) - cpu, time.perf_counter() - wall
                    await conn.execute("DELETE FROM outbox")
                    row = {"cpu_ms": 1000 * cpu / args.messages, "wall_ms": 1000 * wall / args.messages}
                    results[storage].append(row)
                    say = f"{storage:24s} backend CPU {row['cpu_ms']:.3f} ms, wall {row['wall_ms']:.3f} ms a snapshot"
                    print(say, flush=True)
            await conn.execute("ALTER TABLE outbox ALTER COLUMN payload SET STORAGE EXTERNAL")
    finally:
        await pool.close()
        if embedded is not None:
            await embedded.stop()
    best = {k: min(r["cpu_ms"] for r in v) for k, v in results.items()}
    after, before = best.values()
    return {
        "messages": args.messages,
        "snapshot_bytes": [len(j) for j in jpegs],
        "rounds": results,
        "best_cpu_ms": best,
        "cpu_ms_saved_a_snapshot": round(before - after, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=300, help="snapshots queued per round and storage")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    show(asyncio.run(main_async(args)), args.json)


if __name__ == "__main__":
    main()
