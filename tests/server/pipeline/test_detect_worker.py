"""pipeline/detect.py: what a batch holds between inference and its store."""

from __future__ import annotations

import asyncio
import io
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np
import pytest
from PIL import Image

from bench.roundtrips import RoundTrips
from bench.store_stage import store_pipeline
from inference_server import buffers, demo_assets
from inference_server.config import Settings
from inference_server.detection.detector import build_detector
from inference_server.detection.onnx_backend import Letterboxed, OnnxDetector
from inference_server.ingest.ingestor import Ingestor
from inference_server.ingest.validate import InvalidImage
from inference_server.jobs.queue import ClaimedJob
from inference_server.pipeline import detect as detect_module
from inference_server.pipeline import result as result_module
from inference_server.pipeline.decode import Picture, decode_picture
from inference_server.pipeline.decode import decode as decode_pillow
from inference_server.pipeline.detect import DetectWorker, _Item, _let_go
from inference_server.pipeline.tamper import features as tamper_features
from inference_server.schemas import CameraCreate
from inference_server.server import Server
from inference_server.store import cameras
from inference_server.store.db import create_pool
from inference_server.store.migrate import migrate
from inference_server.telemetry.metrics import REGISTRY
from tests.server.conftest import coco_settings, running
from tests.support.waiting import wait_until


@asynccontextmanager
async def _bus_loaded(
    settings: Settings, pool: asyncpg.Pool
) -> AsyncIterator[tuple[DetectWorker, ClaimedJob, Picture, Any]]:
    """A detect worker (not running) with bus.jpg ingested, its job claimed and loaded as a decode
    thread loads it: (worker, job, picture, model input); the worker's threads end with the block."""
    worker, ingestor, queue = await store_pipeline(settings, pool, build_detector(settings), ["front"])
    try:
        await ingestor.ingest_bytes(
            "front", demo_assets.image("bus.jpg").read_bytes(), captured_at=None, original_name=None
        )
        [job] = await queue.claim(1)
        picture, model_input, _ = worker._load(Path(job.image_path))
        yield worker, job, picture, model_input
    finally:
        worker._infer_pool.shutdown()
        worker._decode_pool.shutdown()


async def test_the_model_input_is_let_go_once_inferred(
    make_settings: Callable[..., Settings], pool: asyncpg.Pool
) -> None:
    """The detector's prepared input (a float tensor, 2 MB an image at 416 px, made on a decode
    thread) is released when inference is done, not held while the batch waits to be stored."""
    # The add-on's backend (ultralytics' predictor keeps its own last batch, whatever we do).
    settings = make_settings(**coco_settings(), detector_backend="onnx")
    async with _bus_loaded(settings, pool) as (worker, job, image, model_input):
        assert isinstance(model_input, Letterboxed) and model_input.tensor.nbytes > 1_000_000
        block = model_input.tensor.base  # the detector's pooled memory the tensor is a view of
        assert isinstance(block, np.ndarray)
        item = _Item(job, image, [], model_input)
        del model_input
        decoded: asyncio.Queue[list[_Item] | None] = asyncio.Queue()
        inferred: asyncio.Queue[list[_Item] | None] = asyncio.Queue()
        decoded.put_nowait([item])
        decoded.put_nowait(None)

        await worker._infer_loop(decoded, inferred, asyncio.Event())

        assert inferred.get_nowait() == [item] and inferred.get_nowait() is None
        assert [d.label for d in item.detections].count("person") >= 3  # bus.jpg's people
        assert item.model_input is None, "the inferred batch still holds the model's input"
        # Let go by the batch: back in the detector's bounded pool, for the next picture.
        _, again, _ = worker._load(Path(job.image_path))
        assert isinstance(again, Letterboxed) and again.tensor.base is block


@pytest.mark.parametrize("backend", ["onnx", "ultralytics"])
async def test_a_picture_without_its_prepared_input_is_prepared_on_the_inference_thread_alike(
    make_settings: Callable[..., Settings], pool: asyncpg.Pool, backend: str
) -> None:
    """An item without its model input (a lone picture that found the model idle) has it made on
    the inference thread from its picture's pixels (a view of the RGBX array): each backend takes
    them as RGB and finds the same as prepared on a decode thread."""
    settings = make_settings(**coco_settings(), detector_backend=backend)
    async with _bus_loaded(settings, pool) as (worker, job, picture, model_input):
        assert picture.rgbx() is not None
        prepared, bare = _Item(job, picture, [], model_input), _Item(job, picture, [], None)
        await worker._detect([prepared])
        await worker._detect([bare])
        assert [d.label for d in bare.detections].count("person") >= 3
        assert [(d.label, round(d.confidence, 2)) for d in bare.detections] == [
            (d.label, round(d.confidence, 2)) for d in prepared.detections
        ]


async def test_reused_buffers_leave_each_image_its_own_detections(make_settings: Callable[..., Settings]) -> None:
    """The server with the add-on's backend, pictures of two shapes from two cameras in batches
    of 4: the tensors and the decoded pictures are reused from image to image, and every image's
    stored detections are what the detector finds in it alone (decoded by Pillow, not into a
    reused array)."""
    settings = make_settings(
        **coco_settings(),
        detector_backend="onnx",
        detector_batch_size=4,
        detector_batch_wait_ms=1000,
        fast_path={},
        buffers_idle_s=3600,  # kept while the test runs: the idle hand-back is the next test's
    )
    # A batch first, stored before the rest arrive: its arrays are in the pools then, and the next
    # batch is decoded into them (when everything comes at once, up to seven batches are in flight
    # before the first is stored, so whether any of six is decoded into a given-back array depends
    # on how long the first store takes: the test failed once in CI that way). Then five batches
    # at once, decoded while earlier ones are inferred and stored, into what those give back.
    names = ["bus.jpg", "zidane.jpg", "bus.jpg", "zidane.jpg", "zidane.jpg", "bus.jpg"] * 4
    async with running(settings) as server:
        ingestor, detector, worker = server.ingestor, server.detector, server.detect_worker
        assert ingestor is not None and isinstance(detector, OnnxDetector) and worker is not None
        for camera in ("front", "back"):
            await cameras.create(server.pool, CameraCreate(id=camera, name=camera))
        jobs: list[tuple[int, str]] = []

        async def ingest(first: int, last: int) -> None:
            for n in range(first, last):
                data = _copy(names[n], n)
                result = await ingestor.ingest_bytes(
                    ("front", "back")[n % 2], data, captured_at=None, original_name=names[n]
                )
                assert result.job_id is not None
                jobs.append((result.job_id, names[n]))
            await wait_until(
                lambda: server.pool.fetchval("SELECT count(*) = $1 FROM jobs WHERE state = 'done'", last), timeout=120
            )

        await ingest(0, 4)
        # Given back once stored (just after the commit the test saw), kept for the next batch.
        await wait_until(lambda: worker._pictures.held_bytes > 0 and detector._tensors.held_bytes > 0, timeout=10)
        pictures_reused, tensors_reused = worker._pictures.reused, detector._tensors.reused
        await ingest(4, len(names))
        assert detector._tensors.reused > tensors_reused
        assert worker._pictures.reused > pictures_reused
        alone_detector = build_detector(settings)
        for job_id, name in jobs:
            stored = await server.pool.fetch(
                "SELECT d.label, d.confidence FROM detections d JOIN jobs j ON j.image_id = d.image_id"
                " WHERE j.id = $1 ORDER BY d.confidence DESC, d.label",
                job_id,
            )
            [alone] = alone_detector.detect([decode_pillow(demo_assets.image(name), settings.detector_imgsz)])
            expected = sorted(((d.label, round(d.confidence, 4)) for d in alone), key=lambda d: (-d[1], d[0]))
            assert [(r["label"], round(r["confidence"], 4)) for r in stored] == expected, name


async def test_reused_buffers_go_back_once_the_queue_is_dry_for_buffers_idle_s(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the queue has been dry for ``buffers_idle_s``, the pools are given back: the release
    finds the stored pictures' arrays and the inferred tensors in them, and leaves none."""
    settings = make_settings(
        **coco_settings(), detector_backend="onnx", detector_batch_size=4, fast_path={}, buffers_idle_s=1
    )
    found: list[tuple[int, int]] = []  # (pictures, tensors) bytes held when a release ran
    async with running(settings) as server:
        ingestor, detector, worker = server.ingestor, server.detector, server.detect_worker
        assert ingestor is not None and isinstance(detector, OnnxDetector) and worker is not None
        release_idle = buffers.release_idle

        def watched() -> int:
            found.append((worker._pictures.held_bytes, detector._tensors.held_bytes))
            return release_idle()

        monkeypatch.setattr(buffers, "release_idle", watched)
        await cameras.create(server.pool, CameraCreate(id="front", name="front"))
        for n, name in enumerate(["bus.jpg", "zidane.jpg"]):
            await ingestor.ingest_bytes("front", _copy(name, n), captured_at=None, original_name=name)
        await wait_until(lambda: server.pool.fetchval("SELECT count(*) = 2 FROM jobs WHERE state = 'done'"), timeout=60)
        await wait_until(lambda: any(pictures and tensors for pictures, tensors in found), timeout=10)
        assert worker._pictures.held_bytes == 0 and detector._tensors.held_bytes == 0


def _copy(name: str, n: int) -> bytes:
    """``name``'s demo JPEG with a comment: other bytes (not a duplicate), the same pixels."""
    original = demo_assets.image(name).read_bytes()
    note = f"copy {n}".encode()
    return original[:2] + b"\xff\xfe" + (len(note) + 2).to_bytes(2, "big") + note + original[2:]


async def test_a_picture_at_a_time_is_one_claim_and_reuses_the_memory(make_settings: Callable[..., Settings]) -> None:
    """A camera sending a picture now and then (the common case): the worker claims nothing more
    than the picture (it used to claim three times: its own, once more after the batch wait found
    nothing, and once more after the batch; since stop 36 an upload reaching the idle worker is
    handed to it, no claim at all), and the memory reused for decoding stays while the queue is
    dry for less than ``buffers_idle_s`` (it used to go back after every picture, and the next
    one faulted its pages in afresh)."""
    settings = make_settings(
        **coco_settings(),
        detector_backend="onnx",
        detector_batch_size=4,
        detector_batch_wait_ms=50,
        fast_path={},
        buffers_idle_s=30,
        job_poll_interval_s=30,  # no poll meanwhile: only the claims a picture needs
    )
    pictures = 4
    async with running(settings) as server:
        ingestor, worker = server.ingestor, server.detect_worker
        assert ingestor is not None and worker is not None
        await cameras.create(server.pool, CameraCreate(id="front", name="front"))

        async def one_picture(n: int) -> None:
            result = await ingestor.ingest_bytes("front", _copy("bus.jpg", n), captured_at=None, original_name=None)
            await wait_until(
                lambda: server.pool.fetchval("SELECT state = 'done' FROM jobs WHERE id = $1", result.job_id),
                timeout=60,
            )
            await asyncio.sleep(0.3)  # the worker finds the queue dry between pictures

        await one_picture(0)  # after the worker's first claim at start (counted or not, by timing)
        with RoundTrips() as trips:
            for n in range(1, pictures):
                await one_picture(n)
        claims = sum(n for text, n in trips.by_statement.items() if text.startswith("WITH picked AS"))
        assert claims == 0
        # Every picture after the first was decoded into the array the one before gave back.
        assert worker._pictures.made == 1
        assert worker._pictures.reused == pictures - 1


async def test_a_folder_picture_reaching_an_idle_worker_is_handed_to_it_without_a_claim(
    make_settings: Callable[..., Settings],
) -> None:
    """A camera folder's next picture, while the worker waits with nothing in hand, is inserted
    claimed for it and handed over: no notification to wake it, no claim (a statement a picture
    for a camera sending one a second: stop 35). Pictures that come while it is busy are queued
    and claimed as before; each is done once, at its first attempt."""
    settings = make_settings(
        **coco_settings(),
        detector_backend="onnx",
        detector_batch_size=4,
        detector_batch_wait_ms=50,
        fast_path={},
        file_stable_s=0.05,
        job_poll_interval_s=30,
    )
    folder = settings.cameras_path / "front"
    folder.mkdir(parents=True)
    async with running(settings) as server:

        def done() -> Any:
            return server.pool.fetchval("SELECT count(*) FROM jobs WHERE state = 'done'")

        (folder / "first.jpg").write_bytes(_copy("bus.jpg", 0))  # the folder's first: its camera is made
        await wait_until(lambda: server.pool.fetchval("SELECT count(*) = 1 FROM jobs WHERE state = 'done'"))
        await asyncio.sleep(0.3)
        with RoundTrips() as trips:
            for n in range(1, 4):
                (folder / f"next{n}.jpg").write_bytes(_copy("bus.jpg", n))
                await wait_until(
                    lambda n=n: server.pool.fetchval("SELECT count(*) = $1 FROM jobs WHERE state = 'done'", n + 1)
                )
                await asyncio.sleep(0.3)  # the worker waits again
        claims = sum(k for text, k in trips.by_statement.items() if text.startswith("WITH picked AS"))
        assert claims == 0, trips.by_statement

        # Three at once while the worker is busy with a fourth: that one is handed over, the
        # others queued and claimed.
        for n in range(4, 8):
            (folder / f"burst{n}.jpg").write_bytes(_copy("bus.jpg", n))
        await wait_until(lambda: server.pool.fetchval("SELECT count(*) = 8 FROM jobs WHERE state = 'done'"))
        rows = await server.pool.fetch("SELECT state, attempts FROM jobs")
        assert [(r["state"], r["attempts"]) for r in rows] == [("done", 1)] * 8
        assert await server.pool.fetchval("SELECT count(*) FROM detections") > 0


async def _stored(server: Server, jobs: int) -> None:
    """Until ``jobs`` jobs are done and the detect worker waits with nothing in hand again."""
    worker = server.detect_worker
    assert worker is not None
    await wait_until(
        lambda: server.pool.fetchval("SELECT count(*) = $1 FROM jobs WHERE state = 'done'", jobs), timeout=60
    )
    await wait_until(worker.wants_job, 30, what="the worker waiting again")


async def test_a_picture_handed_to_an_idle_worker_is_decoded_once_at_the_door(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An upload or a known folder's picture that reaches the worker waiting with nothing in hand
    (a new folder's first one too, since stop 50) is decoded once: the door's check decodes it
    into the worker's array at the model's scale
    (as strictly as its 1/8-scale check: tests/server/ingest/test_validate.py), and the worker
    detects on that array instead of decoding the stored file again. The pixels are exactly
    those of the worker's own decode; pictures the door does not decode for it (a PNG, one that
    came while it was busy) are decoded by the worker as before; every array goes back to the
    worker's pool. (A door's picture reaches the idle model without its input made: it is
    prepared on the inference thread, the test below.)"""
    settings = make_settings(
        **coco_settings(), detector_backend="onnx", fast_path={}, file_stable_s=0.05, job_poll_interval_s=30
    )
    (settings.cameras_path / "porch").mkdir(parents=True)
    async with running(settings) as server:
        ingestor, worker = server.ingestor, server.detect_worker
        assert ingestor is not None and worker is not None
        await cameras.create(server.pool, CameraCreate(id="front", name="front"))
        loads: list[tuple[str, bool, np.ndarray]] = []
        detect = worker._detect

        async def watched(items: list[_Item]) -> float:
            # An item without its model input is the door's picture (the worker's own decode
            # prepares it on a decode thread: ``_load``).
            loads.extend((Path(i.job.image_path).name, i.model_input is None, i.image.pixels.copy()) for i in items)
            return await detect(items)

        monkeypatch.setattr(worker, "_detect", watched)

        await wait_until(worker.wants_job, 30, what="the worker waiting")
        await ingestor.ingest_bytes("front", _copy("bus.jpg", 0), captured_at=None, original_name=None)
        await _stored(server, 1)
        png = io.BytesIO()
        Image.open(demo_assets.image("zidane.jpg")).save(png, "PNG")
        await ingestor.ingest_bytes("front", png.getvalue(), captured_at=None, original_name=None)
        await _stored(server, 2)
        (settings.cameras_path / "porch" / "first.jpg").write_bytes(_copy("zidane.jpg", 0))
        await _stored(server, 3)  # a new folder: its camera registered, then handed off as a known folder's
        (settings.cameras_path / "porch" / "second.jpg").write_bytes(_copy("zidane.jpg", 1))
        await _stored(server, 4)
        # Decoded at the door, then no job (the camera has these bytes): the array goes back.
        again = await ingestor.ingest_bytes("front", _copy("bus.jpg", 0), captured_at=None, original_name=None)
        assert again.status == "duplicate"
        await ingestor.ingest_bytes("front", _copy("bus.jpg", 1), captured_at=None, original_name=None)
        await _stored(server, 5)

        rows = await server.pool.fetch("SELECT path, original_name FROM images ORDER BY id")
        assert [door for _, door, _ in loads] == [True, False, True, True, True], [r["original_name"] for r in rows]
        for row, (name, _, pixels) in zip(rows, loads, strict=True):
            assert Path(row["path"]).name == name
            own = decode_picture(Path(row["path"]), settings.detector_imgsz, fit=worker.result.decode_fit)
            assert np.array_equal(pixels, own.pixels), row["original_name"]
        found = await server.pool.fetch("SELECT image_id, count(*) AS n FROM detections GROUP BY image_id")
        assert len(found) == 5  # people in every picture, the door's decodes included
        assert worker._door_pictures == {}
        assert worker._pictures.made == 2  # bus.jpg's size and zidane.jpg's; every other one reused


async def test_a_lone_picture_from_the_door_is_prepared_and_its_scene_measured_on_the_inference_thread(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A picture decoded at the door that finds the model idle is not handed to a decode thread
    for its letterbox and back: the inference thread prepares it right before the model runs,
    one hand-over (docs/decisions.md, "A lone picture in one hop"). The letterbox's time still
    counts as the decode stage's, not the model's; the detections are those of the decode
    threads' way; a picture the worker decodes itself (a PNG) is prepared on a decode thread as
    before. The scene's tamper features, measured on a thread of their own (``asyncio.to_thread``
    from the result stage) until stop 47, are measured where the model input is made: on the
    inference thread after the model, and on the PNG's decode thread; both checks are taken."""
    settings = make_settings(**coco_settings(), detector_backend="onnx", fast_path={}, job_poll_interval_s=30)
    async with running(settings) as server:
        ingestor, worker = server.ingestor, server.detect_worker
        assert ingestor is not None and worker is not None
        await cameras.create(server.pool, CameraCreate(id="front", name="front"))
        prepared_on: list[str] = []
        measured_on: list[str] = []
        prepare = worker.detector.prepare

        def watched(image: Any) -> Any:
            prepared_on.append(threading.current_thread().name.rstrip("_0123456789"))
            return prepare(image)

        def measured(image: Image.Image) -> Any:
            measured_on.append(threading.current_thread().name.rstrip("_0123456789"))
            return tamper_features(image)

        monkeypatch.setattr(worker.detector, "prepare", watched)
        monkeypatch.setattr(result_module, "features", measured)
        monkeypatch.setattr(detect_module, "features", measured, raising=False)

        def decode_stage() -> float:
            return REGISTRY.get_sample_value("hsi_stage_seconds_count", {"stage": "decode"}) or 0.0

        await wait_until(worker.wants_job, 30, what="the worker waiting")
        before = decode_stage()
        await ingestor.ingest_bytes("front", _copy("bus.jpg", 0), captured_at=None, original_name=None)
        await _stored(server, 1)
        assert prepared_on == ["infer"] and measured_on == ["infer"]
        assert decode_stage() == before + 1  # the letterbox (and the scene) observed as the decode stage
        png = io.BytesIO()
        Image.open(demo_assets.image("bus.jpg")).save(png, "PNG")
        await ingestor.ingest_bytes("front", png.getvalue(), captured_at=None, original_name=None)
        await _stored(server, 2)
        assert prepared_on == ["infer", "decode"] and measured_on == ["infer", "decode"]
        assert await server.pool.fetchval("SELECT learned FROM camera_tamper WHERE camera_id = 'front'") == 2
        rows = await server.pool.fetch(
            "SELECT label, round(confidence::numeric, 3) AS c FROM detections ORDER BY image_id, label, confidence"
        )
    by_image = [(r["label"], r["c"]) for r in rows]
    half = len(by_image) // 2
    assert half >= 3 and by_image[:half] == by_image[half:]  # the same picture, the same people either way


async def test_a_crowd_of_uploads_at_an_idle_worker_has_at_most_a_batch_decoded_ahead(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ten uploads at once, all finding the worker idle: the door decodes at most a batch of them
    for it (the others are checked at 1/8 scale, as before, and decoded by the worker), so a crowd
    of uploads holds a batch's pictures decoded ahead, not one each; every picture is stored
    once, and the count of pictures decoded ahead comes back to none."""
    settings = make_settings(
        **coco_settings(), detector_backend="onnx", detector_batch_size=2, fast_path={}, job_poll_interval_s=30
    )
    async with running(settings) as server:
        ingestor, worker = server.ingestor, server.detect_worker
        assert ingestor is not None and worker is not None
        await cameras.create(server.pool, CameraCreate(id="front", name="front"))
        ahead: list[int] = []
        lend = worker.picture_buffer

        def counted(size: tuple[int, int]) -> buffers.Lent | None:
            lent = lend(size)
            ahead.append(worker._door_ahead)
            return lent

        monkeypatch.setattr(worker, "picture_buffer", counted)
        await wait_until(worker.wants_job, 30, what="the worker waiting")

        await asyncio.gather(
            *(
                ingestor.ingest_bytes("front", _copy("bus.jpg", n), captured_at=None, original_name=None)
                for n in range(10)
            )
        )
        await wait_until(
            lambda: server.pool.fetchval("SELECT count(*) = 10 FROM jobs WHERE state = 'done'"), timeout=120
        )
        assert len(ahead) >= 2 and max(ahead) <= 2, ahead
        rows = await server.pool.fetch("SELECT attempts FROM jobs")
        assert [r["attempts"] for r in rows] == [1] * 10
        assert await server.pool.fetchval("SELECT count(DISTINCT image_id) FROM detections") == 10
        assert worker._door_ahead == 0 and worker._door_pictures == {}


async def test_an_upload_reaching_an_idle_worker_is_one_statement_and_handed_to_it(
    make_settings: Callable[..., Settings],
) -> None:
    """An upload (REST or MQTT) to a camera uploaded to before is one statement, as a known
    folder's picture is: no look-up of the camera before it, no transaction around it (it used to
    be five: the look-up, BEGIN, the look-up again, the insert, COMMIT), and while the worker
    waits with nothing in hand the job is inserted claimed for it and handed over (no claim).
    Its bytes are checked and placed in the image store in one hop to a thread (stop 43: two),
    and a bad one is refused with nothing placed."""
    settings = make_settings(**coco_settings(), detector_backend="onnx", fast_path={}, job_poll_interval_s=30)
    hops: list[str] = []
    to_thread = asyncio.to_thread

    async def counted(func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        if getattr(func, "__module__", None) == Ingestor.__module__:
            hops.append(func.__name__)
        return await to_thread(func, *args, **kwargs)

    async with running(settings) as server:
        await cameras.create(server.pool, CameraCreate(id="front", name="Front"))

        async def upload(n: int) -> None:
            await server.ingestor.ingest_bytes("front", _copy("bus.jpg", n), captured_at=None, original_name=None)

        async def done(n: int) -> None:
            await wait_until(lambda: server.pool.fetchval("SELECT count(*) = $1 FROM jobs WHERE state = 'done'", n))
            await asyncio.sleep(0.3)  # the worker waits again

        await upload(0)  # the camera's first upload looks it up
        await done(1)
        with RoundTrips() as trips, pytest.MonkeyPatch.context() as patch:
            patch.setattr(asyncio, "to_thread", counted)
            for n in range(1, 4):
                await upload(n)
                await done(n + 1)
            with pytest.raises(InvalidImage):
                await server.ingestor.ingest_bytes(
                    "front", _copy("bus.jpg", 9)[:5000], captured_at=None, original_name=None
                )
        assert hops == ["_check_and_place"] * 4, hops
        assert len([p for p in settings.images_path.rglob("*") if p.is_file()]) == 4  # nothing of the bad one
        ingest = {text: k for text, k in trips.by_statement.items() if "INSERT INTO images" in text}
        assert list(ingest.values()) == [3] and "FROM cameras WHERE id = $1" in next(iter(ingest)), ingest
        assert trips.by_statement["SELECT id, name, folder, enabled FROM cameras WHERE id = $1"] == 0
        claims = sum(k for text, k in trips.by_statement.items() if text.startswith("WITH picked AS"))
        assert claims == 0, trips.by_statement
        rows = await server.pool.fetch("SELECT state, attempts FROM jobs")
        assert [(r["state"], r["attempts"]) for r in rows] == [("done", 1)] * 4


async def test_jobs_handed_over_at_once_make_batches_of_at_most_the_batch_size(
    make_settings: Callable[..., Settings], database_url: str
) -> None:
    """Uploads that all found the worker waiting (racing each other: each looked before any was
    handed over) are all handed to it; its batches still hold at most ``detector_batch_size``
    (the first took every job handed over, however many)."""
    settings = make_settings(
        **coco_settings(), detector_backend="onnx", detector_batch_size=2, detector_batch_wait_ms=0
    )
    pool = await create_pool(database_url, 4)
    await migrate(pool)
    worker, ingestor, queue = await store_pipeline(settings, pool, build_detector(settings), ["front"])
    stop, decoded = asyncio.Event(), asyncio.Queue[list[_Item] | None]()
    claiming: asyncio.Task[None] | None = None
    try:
        for n in range(5):
            await ingestor.ingest_bytes("front", _copy("bus.jpg", n), captured_at=None, original_name=None)
        jobs = await queue.claim(5)
        worker._running = True
        claiming = asyncio.create_task(worker._claim_loop(stop, decoded))
        await wait_until(worker.wants_job, 30, what="the worker waiting")
        for job in jobs:
            await worker.take_job(job)
        sizes = []
        while sum(sizes) < len(jobs):
            items = await asyncio.wait_for(decoded.get(), 30)
            assert items is not None
            sizes.append(len(items))
            _let_go(items)
        assert sizes == [2, 2, 1]
    finally:
        stop.set()
        if claiming is not None:
            await asyncio.wait_for(claiming, 30)
        worker._infer_pool.shutdown()
        worker._decode_pool.shutdown()
        await queue.close()
        await pool.close()


async def test_a_job_handed_to_a_stopped_worker_goes_back_to_the_queue(
    make_settings: Callable[..., Settings], database_url: str
) -> None:
    """The ingest statement claimed the job while the worker waited; if the worker has stopped
    by the time the job is handed over, the job goes back to the queue at once (its attempt
    returned), not when its lease runs out."""
    settings = make_settings(**coco_settings(), detector_backend="onnx")
    pool = await create_pool(database_url, 4)
    await migrate(pool)
    try:
        worker, ingestor, queue = await store_pipeline(settings, pool, build_detector(settings), ["front"])
        try:
            result = await ingestor.ingest_bytes("front", _copy("bus.jpg", 0), captured_at=None, original_name=None)
            [job] = await queue.claim(1)
            assert not worker.wants_job()  # not running
            await worker.take_job(job)
            row = await pool.fetchrow("SELECT state, attempts, lease_until FROM jobs WHERE id = $1", result.job_id)
            assert dict(row) == {"state": "queued", "attempts": 0, "lease_until": None}
        finally:
            worker._infer_pool.shutdown()
            worker._decode_pool.shutdown()
    finally:
        await pool.close()
