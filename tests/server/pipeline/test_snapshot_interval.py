"""Camera snapshots on MQTT are rate-limited per camera; the annotated files on disk are not.

Four people-pictures of one camera arrive together at noon. No fast path, a long batch, and people
at noon without context are judged below the alert level: none of them opens or rescores an event,
so only the interval decides which snapshots go through the outbox.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from inference_server import demo_assets
from inference_server.config import Settings
from inference_server.detection.ultralytics_backend import UltralyticsDetector
from tests.server.ingest.conftest import with_comment
from tests.support.waiting import wait_until

from ..conftest import running

IMAGES = 4


@pytest.mark.parametrize(("interval_s", "published"), [(0.0, IMAGES), (3600.0, 1)])
async def test_camera_snapshots_are_published_at_most_once_per_interval(
    make_settings: Callable[..., Settings],
    pose_detector: UltralyticsDetector,
    interval_s: float,
    published: int,
) -> None:
    settings = make_settings(snapshot_publish_interval_s=interval_s, fast_path={}, batch_idle_s=120, batch_window_s=300)
    source = demo_assets.image("zidane.jpg").read_bytes()
    async with running(settings, pose_detector) as server:
        folder = settings.cameras_path / "porch"
        folder.mkdir(parents=True)
        for n in range(IMAGES):
            (folder / f"MDAlarm_20261124-12000{n}.jpg").write_bytes(with_comment(source, f"shot {n}"))
        await wait_until(
            lambda: server.pool.fetchval("SELECT count(*) = $1 FROM jobs WHERE state = 'done'", IMAGES), 60
        )
        assert await server.pool.fetchval("SELECT count(*) FROM events") == 0
        rows = await server.pool.fetchval("SELECT count(*) FROM outbox WHERE topic = 'hsi/cameras/porch/snapshot'")
        assert rows == published
        # Every image's annotated picture is on disk all the same (the evidence an event points at).
        assert len(list((settings.snapshots_path / "porch").glob("*.jpg"))) == IMAGES
