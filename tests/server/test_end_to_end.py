"""A file dropped in a camera folder becomes a detection, an event, an MQTT message and a REST resource."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from inference_server import __version__, demo_assets
from inference_server.config import Settings
from inference_server.detection.ultralytics_backend import UltralyticsDetector
from inference_server.schemas import CameraState, Event, EventMessage
from tests.support.mqtt import Subscriber
from tests.support.waiting import wait_until

from .conftest import auth_headers, drop, running


@pytest.fixture(params=["mosquitto", "amqtt"])
def broker_url(request: pytest.FixtureRequest) -> str:
    url: str = request.getfixturevalue(f"{request.param}_url")
    return url


async def test_dropped_file_becomes_event_on_mqtt_and_rest(
    make_settings: Callable[..., Settings], pose_detector: UltralyticsDetector, broker_url: str
) -> None:
    settings = make_settings(mqtt_url=broker_url)
    subscriber = await Subscriber(broker_url).ready()
    try:
        async with running(settings, pose_detector) as server:
            # (A broker shared by earlier tests may first replay their retained "offline".)
            online = await subscriber.wait_for(lambda m: m.topic == "hsi/availability" and m.payload == b"online")
            assert online.payload == b"online"
            discovery = await subscriber.wait_for(
                lambda m: m.topic == "hsi/discovery" and json.loads(m.payload)["url"] == server.api_url
            )
            assert json.loads(discovery.payload)["version"] == __version__

            drop(demo_assets.image("bus.jpg"), settings.cameras_path / "Front Door" / "MDAlarm_20261124-021000.jpg")

            message = await subscriber.wait_for(lambda m: m.topic == "hsi/events")
            published = EventMessage.model_validate_json(message.payload)
            assert published.type == "new"
            assert published.camera_id == "front_door"
            assert published.camera_name == "Front Door"
            assert published.objects == {"person": 4}
            assert published.analysis_source == "rules"
            assert published.started_at.isoformat() == "2026-11-24T02:10:00+00:00"
            assert published.risk_level == "high"  # four people at 02:10
            # rules-v3: one image is not corroboration enough for critical, so the score is capped at high.
            assert {f.name for f in published.risk_factors} == {"person_seen", "group", "night", "cap"}

            rows = await server.pool.fetch("SELECT label, confidence FROM detections ORDER BY confidence DESC")
            assert [r["label"] for r in rows] == ["person"] * 4
            assert (await server.pool.fetchval("SELECT count(*) FROM events")) == 1

            # While the activity lasts, the camera's live object count says what is seen now...
            live = await subscriber.wait_for(lambda m: m.topic == "hsi/cameras/front_door/objects/person")
            assert live.payload == b"4"
            # ...and when the camera goes quiet the batch closes: the event ends, the count drops to 0.
            ended = EventMessage.model_validate_json(
                (await subscriber.wait_for(lambda m: m.topic == "hsi/events" and b'"type":"end"' in m.payload)).payload
            )
            assert ended.id == published.id and ended.ended_at is not None

            # A client that subscribes later (Home Assistant restarting) gets the camera's retained state.
            late = await Subscriber(broker_url, "hsi/cameras/front_door/#").ready()
            try:
                state = await late.wait_for(lambda m: m.topic == "hsi/cameras/front_door/state")
                assert state.retain
                camera_state = CameraState.model_validate_json(state.payload)
                assert camera_state.last_event_id == published.id
                assert (camera_state.objects, camera_state.risk_score) == ({}, 0)
                snapshot = await late.wait_for(lambda m: m.topic == "hsi/cameras/front_door/snapshot")
                assert snapshot.retain and snapshot.payload[:2] == b"\xff\xd8"
                count = await late.wait_for(lambda m: m.topic == "hsi/cameras/front_door/objects/person")
                assert count.payload == b"0"
            finally:
                late.close()

            async with aiohttp.ClientSession(headers=await auth_headers(server)) as http:
                async with http.get(f"{server.api_url}/api/v1/events/{published.id}") as resp:
                    assert resp.status == 200
                    over_rest = Event.model_validate(await resp.json())
                async with http.get(f"{server.api_url}/api/v1/events", params={"camera": "front_door"}) as resp:
                    listed: dict[str, Any] = await resp.json()
            assert over_rest == Event.model_validate(ended.model_dump(exclude={"type"}))
            assert [e["id"] for e in listed["events"]] == [str(published.id)]
            assert await wait_until(
                lambda: server.pool.fetchval("SELECT count(*) = 0 FROM outbox WHERE sent_at IS NULL")
            )
    finally:
        subscriber.close()


async def test_same_bytes_twice_make_one_image_and_one_event(
    make_settings: Callable[..., Settings], pose_detector: UltralyticsDetector
) -> None:
    settings = make_settings()
    async with running(settings, pose_detector) as server:
        folder = settings.cameras_path / "porch"
        drop(demo_assets.image("zidane.jpg"), folder / "MDAlarm_20261124-100000.jpg")
        await wait_until(lambda: server.pool.fetchval("SELECT count(*) = 1 FROM jobs WHERE state = 'done'"))
        again = drop(demo_assets.image("zidane.jpg"), folder / "MDAlarm_20261124-100005.jpg")
        await wait_until(lambda: not again.exists())
        await wait_until(lambda: server.pool.fetchval("SELECT count(*) = 1 FROM events WHERE ended_at IS NOT NULL"))
        assert await server.pool.fetchval("SELECT count(*) FROM images") == 1
        assert await server.pool.fetchval("SELECT count(*) FROM jobs") == 1
        assert await server.pool.fetchval("SELECT count(*) FROM events") == 1
        assert await server.pool.fetchval("SELECT count(*) FROM quarantine") == 0


async def test_files_present_before_start_are_ingested(
    make_settings: Callable[..., Settings], pose_detector: UltralyticsDetector
) -> None:
    settings = make_settings()
    drop(demo_assets.image("bus.jpg"), settings.cameras_path / "garage" / "snap" / "Schedule_20261124-080000.jpg")
    async with running(settings, pose_detector) as server:
        await wait_until(lambda: server.pool.fetchval("SELECT count(*) = 1 FROM events"))
        camera = await server.pool.fetchrow("SELECT id, name, folder FROM cameras")
        assert dict(camera) == {"id": "garage", "name": "Garage", "folder": "garage"}


async def test_empty_scene_stores_no_event(
    make_settings: Callable[..., Settings], pose_detector: UltralyticsDetector
) -> None:
    settings = make_settings()
    async with running(settings, pose_detector) as server:
        drop(demo_assets.image("rocket.jpg"), settings.cameras_path / "yard" / "MDAlarm_20261124-120000.jpg")
        await wait_until(lambda: server.pool.fetchval("SELECT count(*) = 1 FROM jobs WHERE state = 'done'"))
        assert await server.pool.fetchval("SELECT count(*) FROM detections") == 0
        assert await server.pool.fetchval("SELECT count(*) FROM events") == 0


async def test_rest_reports_readiness_and_unknown_event(
    make_settings: Callable[..., Settings], pose_detector: UltralyticsDetector
) -> None:
    async with (
        running(make_settings(), pose_detector) as server,
        aiohttp.ClientSession(headers={"Authorization": "Bearer x"}) as anonymous,
    ):
        async with anonymous.get(f"{server.api_url}/api/v1/health/ready") as resp:
            assert resp.status == 401
            assert (await resp.json())["error"]["code"] == "unauthorized"
        http = aiohttp.ClientSession(headers=await auth_headers(server))
        async with http.get(f"{server.api_url}/api/v1/health/ready") as resp:
            body = await resp.json()
            assert resp.status == 200
            assert body["checks"]["database"]["ok"] and body["checks"]["mqtt"]["ok"]
        async with http.get(f"{server.api_url}/api/v1/events/00000000-0000-0000-0000-000000000000") as resp:
            assert resp.status == 404
            assert (await resp.json())["error"]["code"] == "not_found"
        async with http.get(f"{server.api_url}/api/v1/events", params={"cursor": "garbage!"}) as resp:
            assert resp.status == 400
            assert (await resp.json())["error"]["code"] == "bad_cursor"
        async with http.get(f"{server.api_url}/api/v1/events", params={"min_risk": "high"}) as resp:
            assert resp.status == 400
            assert (await resp.json())["error"]["code"] == "bad_parameter"
        await http.close()


async def test_polling_mode_for_network_shares_ingests_new_files(
    make_settings: Callable[..., Settings], pose_detector: UltralyticsDetector
) -> None:
    settings = make_settings(watch_polling=True, watch_poll_interval_s=0.1)
    async with running(settings, pose_detector) as server:
        drop(demo_assets.image("zidane.jpg"), settings.cameras_path / "nas_cam" / "MDAlarm_20261124-093000.jpg")
        summary = await wait_until(lambda: server.pool.fetchval("SELECT summary FROM events"), timeout=30)
        assert summary == "2 people at Nas Cam at 09:30"
