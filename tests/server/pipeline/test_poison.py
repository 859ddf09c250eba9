"""What one image's job meets fails that job, never a stage (issue 13, item 1).

- Inference: a detector that raises on one picture (an error type the old loop did not expect) in
  a batch of four; the batch is run again image by image, so the other three still get their
  detections, and only the one job is retried and then dead-lettered with the error.
- Storing: one camera's images of a batch are stored in one transaction; a result the database
  refuses (a confidence above 1, from a detector that returns one for one picture) fails that
  transaction, and the four are stored again one by one, so only the one job fails.
- Batch closing: an activity batch that cannot be judged (a detection captured in 9999, seen in
  Europe/Berlin: year 10000) is closed unjudged; the batch stage keeps running and the camera's
  next activity becomes an event as usual.

The real server, database and yolo11n-pose; the detector wrapper is the only thing made up.
"""

from __future__ import annotations

import asyncio
import io
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import numpy as np
import pytest
from PIL import Image

from inference_server import demo_assets
from inference_server.config import Settings
from inference_server.detection.detector import RgbPixels
from inference_server.detection.ultralytics_backend import UltralyticsDetector
from inference_server.domain import Detection
from inference_server.telemetry import metrics
from tests.support.waiting import wait_until

from ..conftest import running
from ..ingest.conftest import with_comment

POISON_SIZE = (641, 479)


class _RaisesOnOnePicture:
    """The real detector, except that a batch holding a ``POISON_SIZE`` picture raises KeyError."""

    def __init__(self, inner: UltralyticsDetector) -> None:
        self.inner = inner
        self.name = inner.name
        self.batches: list[int] = []

    def prepare(self, image: Image.Image | RgbPixels) -> Any:
        # A Pillow image, as the detector takes unprepared: the test tells pictures by their size.
        return Image.fromarray(image) if isinstance(image, np.ndarray) else image

    def detect(self, images: Sequence[Any]) -> list[list[Detection]]:
        self.batches.append(len(images))
        if any(i.size == POISON_SIZE for i in images):
            raise KeyError("made to fail by the test")
        return self.inner.detect(images)

    def warmup(self) -> None:
        return None

    def release_idle(self) -> None:
        self.inner.release_idle()

    def describe(self) -> str:
        return "test wrapper: " + self.inner.describe()


def _poison_picture() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", POISON_SIZE, (90, 120, 150)).save(buf, "JPEG")
    return buf.getvalue()


async def test_an_inference_error_fails_only_that_images_job(
    make_settings: Callable[..., Settings], pose_detector: UltralyticsDetector
) -> None:
    settings = make_settings(
        detector_batch_size=4,
        detector_batch_wait_ms=1000,
        job_max_attempts=2,
        job_backoff_base_s=0.2,
    )
    detector = _RaisesOnOnePicture(pose_detector)
    bus = demo_assets.image("bus.jpg").read_bytes()
    async with running(settings, detector) as server:  # type: ignore[arg-type]
        await server.pool.execute("INSERT INTO cameras (id, name) VALUES ('porch', 'Porch')")
        # Arriving together: the worker's claim waits up to a second to fill its batch of four.
        poison, *good = await asyncio.gather(
            server.ingestor.ingest_bytes("porch", _poison_picture(), captured_at=None, original_name="p"),
            *(
                server.ingestor.ingest_bytes("porch", with_comment(bus, f"{n}"), captured_at=None, original_name="g")
                for n in range(3)
            ),
        )

        async def settled() -> bool:
            n = await server.pool.fetchval("SELECT count(*) FROM jobs WHERE state IN ('done', 'dead')")
            return bool(n == 4)

        await wait_until(settled, timeout=60)
        assert detector.batches[0] == 4, detector.batches  # all four were in one batch
        row = await server.pool.fetchrow("SELECT state, attempts, last_error FROM jobs WHERE id = $1", poison.job_id)
        assert row is not None and row["state"] == "dead" and row["attempts"] == 2, dict(row or {})
        assert row["last_error"] == "inference: KeyError('made to fail by the test')"
        for result in good:
            state = await server.pool.fetchval("SELECT state FROM jobs WHERE id = $1", result.job_id)
            assert state == "done"
        assert await server.pool.fetchval("SELECT count(DISTINCT image_id) FROM detections") == 3
        assert server.failure is None and all(not t.done() for t in server._tasks)


class _OutOfRangeOnOnePicture(_RaisesOnOnePicture):
    """The real detector, except that a ``POISON_SIZE`` picture gets a detection with confidence 1.5."""

    def detect(self, images: Sequence[Any]) -> list[list[Detection]]:
        self.batches.append(len(images))
        found = self.inner.detect(images)
        return [
            [Detection("person", 1.5, (0.1, 0.1, 0.4, 0.9))] if i.size == POISON_SIZE else dets
            for i, dets in zip(images, found, strict=True)
        ]


async def test_a_result_the_database_refuses_fails_only_that_images_job(
    make_settings: Callable[..., Settings], pose_detector: UltralyticsDetector
) -> None:
    settings = make_settings(
        detector_batch_size=4, detector_batch_wait_ms=1000, job_max_attempts=1, fast_path={}, batch_idle_s=60
    )
    detector = _OutOfRangeOnOnePicture(pose_detector)
    bus = demo_assets.image("bus.jpg").read_bytes()
    split_before = metrics.REGISTRY.get_sample_value("hsi_store_groups_split_total") or 0.0
    async with running(settings, detector) as server:  # type: ignore[arg-type]
        await server.pool.execute("INSERT INTO cameras (id, name) VALUES ('porch', 'Porch')")
        first, poison, *rest = await asyncio.gather(
            server.ingestor.ingest_bytes("porch", with_comment(bus, "a"), captured_at=None, original_name="a"),
            server.ingestor.ingest_bytes("porch", _poison_picture(), captured_at=None, original_name="p"),
            *(
                server.ingestor.ingest_bytes("porch", with_comment(bus, f"{n}"), captured_at=None, original_name="g")
                for n in range(2)
            ),
        )

        async def settled() -> bool:
            n = await server.pool.fetchval("SELECT count(*) FROM jobs WHERE state IN ('done', 'dead')")
            return bool(n == 4)

        await wait_until(settled, timeout=60)
        assert detector.batches[0] == 4, detector.batches  # all four were in one batch, one camera
        row = await server.pool.fetchrow("SELECT state, last_error FROM jobs WHERE id = $1", poison.job_id)
        assert row is not None and row["state"] == "dead", dict(row or {})
        assert row["last_error"].startswith("store: CheckViolationError"), row["last_error"]
        for result in (first, *rest):
            assert await server.pool.fetchval("SELECT state FROM jobs WHERE id = $1", result.job_id) == "done"
        stored = await server.pool.fetchval("SELECT count(DISTINCT image_id) FROM detections")
        assert stored == 3
        # The three are in the camera's activity batch, each once.
        in_batch = await server.pool.fetchval("SELECT count(*) FROM batch_images")
        assert in_batch == 3
        # They were stored together first: that transaction failed and was split once.
        assert metrics.REGISTRY.get_sample_value("hsi_store_groups_split_total") == split_before + 1
        assert server.failure is None and all(not t.done() for t in server._tasks)


async def _insert_unjudgeable_batch(conn: asyncpg.Connection, batch_id: uuid.UUID) -> None:
    # A batch as the result stage leaves one, except that its image was "taken" in 9999 (rows
    # from before the upload check): judging it converts that time to Berlin's, year 10000.
    image_id = await conn.fetchval(
        "INSERT INTO images (camera_id, sha256, path, source, original_name, media_type, width, height,"
        " size_bytes, captured_at, captured_at_source)"
        " VALUES ('porch', $1, '/nowhere.jpg', 'upload', 'old.jpg', 'image/jpeg', 640, 480, 1000,"
        " '9999-12-31T23:59:59Z', 'client') RETURNING id",
        uuid.uuid4().bytes,
    )
    await conn.execute(
        "INSERT INTO detections (image_id, camera_id, label, category, confidence, x1, y1, x2, y2, detected_at)"
        " VALUES ($1, 'porch', 'person', 'person', 0.6, 0.1, 0.1, 0.3, 0.6, '9999-12-31T23:59:59Z')",
        image_id,
    )
    an_hour_ago = datetime.now(UTC) - timedelta(hours=1)
    await conn.execute(
        "INSERT INTO batches (id, camera_id, opened_at, last_activity_at) VALUES ($1, 'porch', $2, $2)",
        batch_id,
        an_hour_ago,
    )
    await conn.execute("INSERT INTO batch_images (batch_id, image_id) VALUES ($1, $2)", batch_id, image_id)


async def test_a_batch_that_cannot_be_judged_is_closed_unjudged(
    make_settings: Callable[..., Settings], pose_detector: UltralyticsDetector, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(camera_timezone="Europe/Berlin")
    async with running(settings, pose_detector) as server:
        pool = server.pool
        await pool.execute("INSERT INTO cameras (id, name) VALUES ('porch', 'Porch')")
        async with pool.acquire() as conn, conn.transaction():  # the batch stage sees it whole
            await _insert_unjudgeable_batch(conn, batch_id := uuid.uuid4())

        closed = await wait_until(
            lambda: pool.fetchval("SELECT closed_at FROM batches WHERE id = $1", batch_id), timeout=30
        )
        assert closed is not None
        assert await pool.fetchval("SELECT count(*) FROM events") == 0  # nothing could be judged
        failed = [r for r in caplog.records if r.getMessage().startswith("closing batch failed, closing it unjudged")]
        assert failed and failed[0].exc_info is not None and isinstance(failed[0].exc_info[1], OverflowError)
        assert str(batch_id) in failed[0].getMessage()

        # The batch stage is still running: the camera's next activity becomes an event.
        bus = demo_assets.image("bus.jpg").read_bytes()
        result = await server.ingestor.ingest_bytes("porch", bus, captured_at=None, original_name="new.jpg")

        async def event() -> bool:
            n = await pool.fetchval(
                "SELECT count(*) FROM events e JOIN batch_images bi ON bi.batch_id = e.batch_id"
                " WHERE bi.image_id = $1 AND e.ended_at IS NOT NULL",
                result.image_id,
            )
            return bool(n == 1)

        await wait_until(event, timeout=60)
        assert server.failure is None and all(not t.done() for t in server._tasks)
