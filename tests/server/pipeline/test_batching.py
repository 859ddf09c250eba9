"""Dynamic batching in the detect worker: N jobs in, N results out, each to its own job."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

from PIL import Image

from inference_server import demo_assets
from inference_server.config import Settings
from inference_server.detection.ultralytics_backend import UltralyticsDetector
from inference_server.domain import Detection
from inference_server.schemas import CameraCreate
from inference_server.store import cameras
from tests.support.waiting import wait_until

from ..conftest import enqueue_stored, running

GOOD = ("bus.jpg", "zidane.jpg", "astronaut.png")


class RecordingDetector:
    """The real detector, recording the size of every batch it is handed (a spy, not a fake)."""

    name = "recording"

    def __init__(self, inner: UltralyticsDetector) -> None:
        self.inner = inner
        self.batches: list[int] = []
        self._lock = threading.Lock()

    def prepare(self, image: Image.Image) -> Any:
        return self.inner.prepare(image)

    def detect(self, images: Sequence[Any]) -> list[list[Detection]]:
        with self._lock:
            self.batches.append(len(images))
        return self.inner.detect(images)

    def warmup(self) -> None:
        return None

    def describe(self) -> str:
        return "recording " + self.inner.describe()


def _corrupt_jpeg() -> bytes:
    data = bytearray(demo_assets.image("bus.jpg").read_bytes())
    dht = data.index(b"\xff\xc4")
    data[dht + 5 : dht + 21] = b"\xff" * 16  # passes the ingest checks, fails to decode in the worker
    return bytes(data)


def _jpeg(name: str) -> bytes:
    path = demo_assets.image(name)
    if path.suffix == ".jpg":
        return path.read_bytes()
    import io

    buf = io.BytesIO()
    with Image.open(path) as img:
        img.convert("RGB").save(buf, format="JPEG", quality=90)
    return buf.getvalue()


async def test_jobs_arriving_within_the_wait_share_one_inference_and_keep_their_own_results(
    make_settings: Callable[..., Settings], pose_detector: UltralyticsDetector
) -> None:
    spy = RecordingDetector(pose_detector)
    settings = make_settings(detector_batch_size=8, detector_batch_wait_ms=1000, fast_path={})
    async with running(settings, spy) as server:
        ingestor = server.ingestor
        assert ingestor is not None
        for i in range(len(GOOD)):
            await cameras.create(server.pool, CameraCreate(id=f"cam{i}", name=f"Camera {i}"))
        job_of: dict[str, int] = {}
        for i, name in enumerate(GOOD):
            result = await ingestor.ingest_bytes(f"cam{i}", _jpeg(name), captured_at=None, original_name=f"{name}")
            assert result.job_id is not None
            job_of[name] = result.job_id
        await wait_until(lambda: server.pool.fetchval("SELECT count(*) = 3 FROM jobs WHERE state = 'done'"), timeout=60)
        # One claim, topped up while the other two arrived: one inference for all three.
        assert spy.batches == [3]
        for name, job_id in job_of.items():
            stored = await server.pool.fetch(
                "SELECT d.label, d.confidence FROM detections d JOIN jobs j ON j.image_id = d.image_id"
                " WHERE j.id = $1 ORDER BY d.confidence DESC",
                job_id,
            )
            with Image.open(demo_assets.image(name)) as img:
                alone = pose_detector.detect([img.convert("RGB")])[0]
            assert [r["label"] for r in stored] == [d.label for d in alone], name
            assert all(abs(r["confidence"] - d.confidence) < 0.02 for r, d in zip(stored, alone, strict=True))


async def test_a_corrupt_image_in_a_batch_is_dead_lettered_and_the_others_complete(
    make_settings: Callable[..., Settings], pose_detector: UltralyticsDetector
) -> None:
    spy = RecordingDetector(pose_detector)
    settings = make_settings(detector_batch_size=8, detector_batch_wait_ms=1000, file_stable_s=0.05)
    async with running(settings, spy) as server:
        folder = settings.cameras_path / "porch"
        folder.mkdir(parents=True, exist_ok=True)
        for n, name in enumerate(("bus.jpg", "zidane.jpg")):
            tmp = folder / f".part{n}"
            tmp.write_bytes(_jpeg(name))
            tmp.rename(folder / f"MDAlarm_20261124-02000{n}.jpg")
        # The door decodes every file, so a corrupt one never becomes a job there: this one went
        # bad in the image store after it was accepted (a failing disk); only the worker finds it.
        stored = settings.images_path / "porch" / "damaged" / "MDAlarm_20261124-020002.jpg"
        await enqueue_stored(server.pool, "porch", stored, _corrupt_jpeg())
        await wait_until(
            lambda: server.pool.fetchval("SELECT count(*) = 3 FROM jobs WHERE state IN ('done', 'dead')"),
            timeout=60,
        )
        states = await server.pool.fetch(
            "SELECT i.original_name, j.state, j.last_error FROM jobs j JOIN images i ON i.id = j.image_id"
            " ORDER BY i.original_name"
        )
        outcome = {r["original_name"].rsplit("/", 1)[-1]: (r["state"], r["last_error"]) for r in states}
        assert outcome["MDAlarm_20261124-020000.jpg"][0] == "done"
        assert outcome["MDAlarm_20261124-020001.jpg"][0] == "done"
        state, error = outcome["MDAlarm_20261124-020002.jpg"]
        assert state == "dead" and error.startswith("corrupt_image")
        # The two good pictures went through the model together, without the broken one.
        assert spy.batches == [2]
        people = await server.pool.fetchval("SELECT count(*) FROM detections WHERE label = 'person'")
        assert people == 4 + 2
