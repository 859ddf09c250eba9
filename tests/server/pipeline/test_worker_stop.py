"""pipeline/detect.py and server.py: how a stop ends the work in hand.

A stop finishes the batch in the model and stores it; what was claimed but not yet in the model
goes back to the queue at once, its attempt returned. Cancelled (a stop past its grace), the
worker still ends, with its queues full, and gives back every job it holds."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

import asyncpg
import pytest
from PIL import Image

from bench.scale_out import distinct_jpeg
from bench.store_stage import store_pipeline
from inference_server import demo_assets
from inference_server import server as server_module
from inference_server.config import Settings
from inference_server.detection.detector import Detector, RgbPixels, build_detector
from inference_server.domain import Detection
from inference_server.jobs.queue import JobQueue
from inference_server.pipeline.detect import DetectWorker
from tests.server.conftest import coco_settings, running
from tests.support.waiting import wait_until


class GatedDetector:
    """The real detector held at a gate the test opens: the test stops or cancels the worker
    while an image is in the model (timing control; what runs is the model itself)."""

    def __init__(self, inner: Detector) -> None:
        self.inner = inner
        self.name = inner.name
        self.gate = threading.Event()
        self.entered = threading.Event()

    def prepare(self, image: Image.Image | RgbPixels) -> Any:
        return self.inner.prepare(image)

    def detect(self, images: Sequence[Any]) -> list[list[Detection]]:
        self.entered.set()
        if not self.gate.wait(60):
            raise TimeoutError("the test never opened the gate")
        return self.inner.detect(images)

    def warmup(self) -> None:
        self.inner.warmup()

    def release_idle(self) -> None:
        self.inner.release_idle()

    def describe(self) -> str:
        return f"gated {self.inner.describe()}"


async def _busy_worker(
    make_settings: Callable[..., Settings], pool: asyncpg.Pool, images: int = 6
) -> tuple[DetectWorker, JobQueue, GatedDetector, list[int], asyncio.Event, asyncio.Task[None]]:
    """A worker (batches of one) with one image in the model and three decoded behind it, two
    in its queue and one waiting to go in: as full as its bounded queues let it be."""
    settings = make_settings(
        **coco_settings(), detector_backend="onnx", detector_batch_size=1, detector_batch_wait_ms=0
    )
    detector = GatedDetector(build_detector(settings))
    worker, ingestor, queue = await store_pipeline(settings, pool, detector, ["front"])
    bus = demo_assets.image("bus.jpg").read_bytes()
    jobs: list[int] = []
    for n in range(images):
        result = await ingestor.ingest_bytes("front", distinct_jpeg(bus, str(n)), captured_at=None, original_name=None)
        assert result.job_id is not None
        jobs.append(result.job_id)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    await asyncio.to_thread(detector.entered.wait, 30)
    await wait_until(
        lambda: pool.fetchval("SELECT count(*) = 4 FROM jobs WHERE state = 'running'"), timeout=30, what="4 claimed"
    )
    # The fourth is decoded (milliseconds) and waits to be queued behind the two; no fifth is claimed.
    await wait_until(lambda: len(worker._held) == 4 and not worker._started - {jobs[0]}, timeout=10, what="decoded")
    return worker, queue, detector, jobs, stop, task


async def _states(pool: asyncpg.Pool, jobs: list[int]) -> list[tuple[str, int, bool, str | None]]:
    rows = await pool.fetch(
        "SELECT state, attempts, lease_until IS NULL AS unleased, last_error FROM jobs"
        " WHERE id = ANY($1::bigint[]) ORDER BY id",
        jobs,
    )
    return [(r["state"], r["attempts"], r["unleased"], r["last_error"]) for r in rows]


async def test_a_stop_finishes_the_image_in_the_model_and_gives_back_the_decoded_ones(
    make_settings: Callable[..., Settings], pool: asyncpg.Pool
) -> None:
    worker, queue, detector, jobs, stop, task = await _busy_worker(make_settings, pool)

    stop.set()
    detector.gate.set()
    await asyncio.wait_for(task, 30)

    states = await _states(pool, jobs)
    assert states[0][:2] == ("done", 1), "the image in the model is finished and stored"
    # Decoded but not in the model: back in the queue now, their attempt returned; the last two
    # were never claimed.
    assert states[1:] == [("queued", 0, True, None)] * 5
    assert not worker._held
    assert {j.id for j in await queue.claim(10)} == set(jobs[1:]), "claimable at once, no lease to wait out"


async def test_a_worker_cancelled_with_full_queues_ends_and_gives_back_every_job(
    make_settings: Callable[..., Settings], pool: asyncpg.Pool
) -> None:
    worker, queue, detector, jobs, _, task = await _busy_worker(make_settings, pool)

    task.cancel()
    detector.gate.set()  # the model's thread ends its image; the worker waits for it off the loop
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 30)

    states = await _states(pool, jobs)
    state, attempts, unleased, error = states[0]
    # Before, all four stayed leased ("running") until their lease ran out (60 s by default).
    # Cut off in the model: back at once, but it keeps its attempt (it may be what hangs the model).
    assert (state, attempts, unleased) == ("queued", 1, True)
    assert error is not None and error.startswith("stopped while it ran on worker")
    assert states[1:] == [("queued", 0, True, None)] * 5
    assert not worker._held
    assert len(await queue.claim(10)) == 6


async def test_a_cut_off_job_on_its_last_attempt_goes_to_the_dead_letters(
    make_settings: Callable[..., Settings], pool: asyncpg.Pool
) -> None:
    """A job that was in the model when the stop cut it off, on its last attempt, is dead-lettered
    as a reaped lease would be: an image that hangs the model cannot come back forever."""
    settings = make_settings(**coco_settings(), detector_backend="onnx")
    _, ingestor, queue = await store_pipeline(settings, pool, build_detector(settings), ["front"])
    bus = demo_assets.image("bus.jpg").read_bytes()
    result = await ingestor.ingest_bytes("front", bus, captured_at=None, original_name=None)
    await pool.execute("UPDATE jobs SET max_attempts = 1 WHERE id = $1", result.job_id)
    [job] = await queue.claim(1)

    assert await queue.release([job], tried=True) == {job.id}
    assert await pool.fetchval("SELECT state FROM jobs WHERE id = $1", job.id) == "dead"
    assert await queue.release([job], tried=True) == set(), "no longer held: left alone"


async def test_the_server_stops_when_a_component_ignores_its_cancellation(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Bounded after cancellation too: the rest closes and the stuck component's place is logged."""
    monkeypatch.setattr(server_module, "STOP_GRACE_S", 0.5)
    monkeypatch.setattr(server_module, "CANCEL_GRACE_S", 0.5)
    release = asyncio.Event()

    async def deaf() -> None:
        while not release.is_set():
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                continue

    async with running(make_settings(**coco_settings(), detector_backend="onnx")) as server:
        server._spawn(deaf(), "deaf")
        with caplog.at_level(logging.ERROR, logger="inference_server.server"):
            await asyncio.wait_for(server.stop(), 30)  # before: waited for it forever
        assert "component did not end when cancelled task=deaf" in caplog.text
        assert "in deaf" in caplog.text, "the log says where it is stuck"
        release.set()


async def test_a_component_failing_on_its_way_out_is_logged_by_the_stop(
    make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    """An error raised while stopping is said, with its traceback, by the stop (not swallowed, and
    not left to asyncio's "exception was never retrieved")."""

    async def fails_when_stopped(stop: asyncio.Event) -> None:
        await stop.wait()
        raise RuntimeError("made to fail on the way out by the test")

    async with running(make_settings(**coco_settings(), detector_backend="onnx")) as server:
        server._spawn(fails_when_stopped(server._stop), "failing")
        with caplog.at_level(logging.ERROR, logger="inference_server.server"):
            await server.stop()
        failed = [r for r in caplog.records if r.getMessage() == "component failed while stopping task=failing"]
        assert failed and failed[0].exc_info is not None
        assert "made to fail on the way out" in str(failed[0].exc_info[1])
