"""Camera snapshots on MQTT are rate-limited per camera while the camera sees the same objects,
and a snapshot is drawn only when it is used: published, or an event's picture (issue 20: drawn
once per published snapshot, not per image).

Four people-pictures of one camera arrive together at noon. No fast path, a long batch, and people
at noon without context are judged below the alert level: none of them opens or rescores an event,
so only the interval decides which snapshots go through the outbox. Images of one camera stored in
one transaction publish the camera's retained state and snapshot once, for the latest of them.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import aiohttp
import pytest
from PIL import Image

from inference_server import demo_assets
from inference_server.comms.topics import Topics
from inference_server.config import Settings
from inference_server.detection.ultralytics_backend import UltralyticsDetector
from inference_server.domain import Detection
from inference_server.pipeline.messages import SnapshotThrottle
from inference_server.pipeline.snapshot import Snapshot
from inference_server.telemetry.metrics import REGISTRY
from tests.server.ingest.conftest import with_comment
from tests.support.waiting import wait_until

from ..conftest import auth_headers, running

IMAGES = 4


def _snapshots_drawn() -> float:
    return REGISTRY.get_sample_value("hsi_stage_seconds_count", {"stage": "snapshot"}) or 0.0


@pytest.mark.parametrize(("interval_s", "most"), [(0.0, IMAGES), (3600.0, 1)])
async def test_camera_snapshots_are_published_at_most_once_per_interval_and_drawn_only_then(
    make_settings: Callable[..., Settings],
    pose_detector: UltralyticsDetector,
    interval_s: float,
    most: int,
) -> None:
    settings = make_settings(snapshot_publish_interval_s=interval_s, fast_path={}, batch_idle_s=120, batch_window_s=300)
    source = demo_assets.image("zidane.jpg").read_bytes()
    drawn_before = _snapshots_drawn()
    async with running(settings, pose_detector) as server:
        folder = settings.cameras_path / "porch"
        folder.mkdir(parents=True)
        for n in range(IMAGES):
            (folder / f"MDAlarm_20261124-12000{n}.jpg").write_bytes(with_comment(source, f"shot {n}"))
        await wait_until(
            lambda: server.pool.fetchval("SELECT count(*) = $1 FROM jobs WHERE state = 'done'", IMAGES), 60
        )
        assert await server.pool.fetchval("SELECT count(*) FROM events") == 0
        sent = await server.pool.fetch(
            "SELECT payload FROM outbox WHERE topic = 'hsi/cameras/porch/snapshot' ORDER BY id"
        )
        assert 1 <= len(sent) <= most
        # A snapshot only published leaves no file: no row would name it, and before stop 34 one
        # a second per active camera piled up in snapshots/ for ever.
        assert list(settings.snapshots_path.glob("porch/*")) == []
        for row in sent:
            published = Image.open(io.BytesIO(bytes(row["payload"])))
            assert (published.format, published.size) == ("JPEG", (1280, 720))
        # Drawn only when published.
        assert _snapshots_drawn() - drawn_before == len(sent)


async def test_an_event_opened_when_its_batch_closes_gets_its_picture_drawn_then(
    make_settings: Callable[..., Settings], pose_detector: UltralyticsDetector
) -> None:
    """No image is in memory when the batch closer opens an event: its picture is drawn from the
    stored file and stored detections, at full size, and served over REST."""
    settings = make_settings(snapshot_publish_interval_s=3600.0, fast_path={}, batch_idle_s=0.3, batch_window_s=300)
    source = demo_assets.image("zidane.jpg").read_bytes()
    async with running(settings, pose_detector) as server:
        folder = settings.cameras_path / "porch"
        folder.mkdir(parents=True)
        for n in range(3):
            (folder / f"MDAlarm_20261124-12000{n}.jpg").write_bytes(with_comment(source, f"shot {n}"))
        event = await wait_until(
            lambda: server.pool.fetchrow("SELECT id, image_id, snapshot_path FROM events WHERE camera_id = 'porch'"),
            60,
        )
        assert event["snapshot_path"] == str(settings.snapshots_path / "porch" / f"{event['image_id']}.jpg")
        drawn = {int(p.stem) for p in (settings.snapshots_path / "porch").glob("*.jpg")}
        published = await server.pool.fetchval("SELECT count(*) FROM outbox WHERE topic = 'hsi/cameras/porch/snapshot'")
        # One published while the batch was open (interval 3600 s), and only the event's picture on disk.
        assert drawn == {event["image_id"]} and published >= 1
        headers = await auth_headers(server)
        async with (
            aiohttp.ClientSession(base_url=server.api_url, headers=headers) as http,
            http.get(f"/api/v1/events/{event['id']}/snapshot.jpg") as resp,
        ):
            assert resp.status == 200
            assert Image.open(io.BytesIO(await resp.read())).size == (1280, 720)


PERSON = Detection("person", 0.9, (0.1, 0.1, 0.4, 0.9))
CAR = Detection("car", 0.8, (0.5, 0.5, 0.9, 0.8))


async def test_a_snapshot_showing_other_objects_is_published_at_once_the_same_scene_once_per_interval(
    make_settings: Callable[..., Settings],
) -> None:
    """A parked car on a windy afternoon sends the same picture every second: one snapshot per
    interval. A person walking up to it changes what is seen: published at once, and again when
    they leave. Before stop 34 the interval alone decided (the person waited up to 1 s, and at
    1 s the parked car's snapshot went out every second)."""
    settings = make_settings()
    throttle = SnapshotThrottle(Topics(), interval_s=3600)
    source = demo_assets.image("bus.jpg")
    drawn_before = _snapshots_drawn()

    async def publish(image_id: int, *detections: Detection, always: bool = False) -> int:
        shot = Snapshot(settings, "drive", image_id, source, detections)
        return len(await throttle.messages("drive", shot, always=always))

    published = [
        await publish(1, CAR),  # the first snapshot
        await publish(2, CAR),  # the same scene
        await publish(3, CAR, PERSON),  # someone arrives
        await publish(4, PERSON, CAR),  # the same objects, in another order
        await publish(5, CAR, PERSON, PERSON),  # a second person
        await publish(6, CAR),  # they leave
        await publish(7, CAR, always=True),  # an event's picture goes out whatever it shows
        await publish(8, CAR),
    ]

    assert published == [1, 0, 1, 0, 1, 1, 1, 0]
    assert _snapshots_drawn() - drawn_before == 5  # one drawing per message, none for the others
    assert throttle.due("other", Snapshot(settings, "other", 9, source, [CAR]))  # per camera
