"""The finish loop stores several cameras' results side by side, each camera's in arrival order,
every image exactly once (real PostgreSQL, real detections of real images)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from bench.store_stage import store_pipeline
from inference_server import demo_assets
from inference_server.config import Settings
from inference_server.detection.ultralytics_backend import UltralyticsDetector
from inference_server.pipeline.decode import decode_picture
from inference_server.pipeline.detect import _Item
from inference_server.server import open_database
from tests.server.ingest.conftest import with_comment

CAMERAS = ["front", "garden", "hall"]
PER_CAMERA = 4


async def test_cameras_are_stored_side_by_side_and_each_camera_in_order(
    make_settings: Callable[..., Settings], pose_detector: UltralyticsDetector
) -> None:
    settings = make_settings(store_concurrency=3, fast_path={})
    pool, embedded = await open_database(settings)
    assert embedded is None
    try:
        worker, ingestor, queue = await store_pipeline(settings, pool, pose_detector, CAMERAS)
        source = demo_assets.image("zidane.jpg")
        raw = source.read_bytes()
        picture = decode_picture(source, settings.detector_imgsz)
        found = pose_detector.detect([pose_detector.prepare(picture.pixels)])[0]
        assert found, "zidane.jpg has people"
        for n in range(len(CAMERAS) * PER_CAMERA):  # interleaved arrivals: front, garden, hall, front, ...
            await ingestor.ingest_bytes(
                CAMERAS[n % len(CAMERAS)], with_comment(raw, f"{n}"), captured_at=None, original_name=None
            )
        jobs = sorted(await queue.claim(100), key=lambda j: j.id)
        assert len(jobs) == len(CAMERAS) * PER_CAMERA
        results: asyncio.Queue[list[_Item] | None] = asyncio.Queue()
        results.put_nowait([_Item(job, picture, list(found)) for job in jobs])  # one batch, all cameras
        results.put_nowait(None)
        await worker._finish_loop(results)
        worker._infer_pool.shutdown()
        worker._decode_pool.shutdown()

        assert await pool.fetchval("SELECT count(*) FROM jobs WHERE state = 'done'") == len(jobs)
        # Each image's detections stored once, each image in exactly one activity batch.
        assert await pool.fetchval("SELECT count(DISTINCT image_id) FROM detections") == len(jobs)
        assert await pool.fetchval("SELECT count(*) FROM detections") == len(jobs) * len(found)
        assert await pool.fetchval("SELECT count(*) FROM batch_images") == len(jobs)
        for camera in CAMERAS:
            # Completed one after another in arrival order (a transaction's now() is its start).
            done_order = await pool.fetch(
                "SELECT image_id FROM jobs WHERE camera_id = $1 ORDER BY updated_at, id", camera
            )
            ids = [r["image_id"] for r in done_order]
            assert ids == sorted(ids) and len(ids) == PER_CAMERA
            assert await pool.fetchval("SELECT count(*) FROM batches WHERE camera_id = $1", camera) == 1
    finally:
        await pool.close()
