"""Outbox rows are marked sent only after the broker acknowledged them: an event created while
the broker is down is published once it is back."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from inference_server import demo_assets
from inference_server.config import Settings
from inference_server.detection.ultralytics_backend import UltralyticsDetector
from inference_server.schemas import CameraState
from tests.support.mqtt import Subscriber
from tests.support.net import free_port
from tests.support.waiting import wait_until

from ..conftest import drop, running


class Mosquitto:
    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.conf = folder / "mosquitto.conf"
        self.conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.proc = subprocess.Popen([binary, "-c", str(self.conf)], stderr=subprocess.DEVNULL)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(5)
            self.proc = None


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[Mosquitto]:
    broker = Mosquitto(tmp_path)
    broker.start()
    yield broker
    broker.stop()


async def test_event_made_during_broker_outage_is_published_after_it_returns(
    make_settings: Callable[..., Settings], pose_detector: UltralyticsDetector, own_broker: Mosquitto
) -> None:
    settings = make_settings(mqtt_url=own_broker.url)
    async with running(settings, pose_detector) as server:
        own_broker.stop()
        await wait_until(lambda: not server._publisher.connected.is_set(), timeout=10)  # type: ignore[union-attr]

        drop(demo_assets.image("zidane.jpg"), settings.cameras_path / "porch" / "MDAlarm_20261124-220000.jpg")
        event_id = await wait_until(
            lambda: server.pool.fetchval("SELECT id FROM events WHERE ended_at IS NOT NULL"), timeout=30
        )
        topics = [r["topic"] for r in await server.pool.fetch("SELECT topic FROM outbox WHERE sent_at IS NULL")]
        # All waiting for the broker: the live camera state while the person was seen, then the
        # event opened and ended when the camera went quiet, and the quiet camera state.
        assert sorted(topics) == sorted(
            [
                "hsi/cameras/porch/state",
                "hsi/cameras/porch/objects/person",
                "hsi/cameras/porch/snapshot",
                "hsi/events",
                "hsi/events",
                "hsi/cameras/porch/state",
                "hsi/cameras/porch/objects/person",
            ]
        )

        own_broker.start()
        await wait_until(
            lambda: server.pool.fetchval("SELECT count(*) = 0 FROM outbox WHERE sent_at IS NULL"), timeout=60
        )
        # The restarted broker keeps nothing from before the outage: what a subscriber finds
        # retained now was published by the relay after the broker came back.
        subscriber = await Subscriber(own_broker.url, "hsi/cameras/porch/state").ready(timeout=20)
        try:
            message = await subscriber.wait_for(lambda m: m.topic == "hsi/cameras/porch/state", timeout=10)
            assert message.retain
            assert CameraState.model_validate_json(message.payload).last_event_id == event_id
        finally:
            subscriber.close()
