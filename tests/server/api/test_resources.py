"""Cameras, zones, events, detections, DLQ, context, audit, status and metrics over REST."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp

from inference_server import demo_assets
from inference_server.config import Settings
from inference_server.detection.ultralytics_backend import UltralyticsDetector
from inference_server.schemas import EventMessage
from tests.support.mqtt import Subscriber
from tests.support.waiting import wait_until

from ..conftest import auth_headers, drop, enqueue_stored, running


async def _json(resp: aiohttp.ClientResponse, status: int) -> Any:
    assert resp.status == status, await resp.text()
    return await resp.json() if resp.content_type == "application/json" else None


async def test_camera_crud_and_zones(
    make_settings: Callable[..., Settings], pose_detector: UltralyticsDetector
) -> None:
    async with running(make_settings(), pose_detector) as server:
        headers = await auth_headers(server)
        async with aiohttp.ClientSession(base_url=server.api_url, headers=headers) as http:
            new = {"id": "back_door", "name": "Back door"}
            created = await _json(await http.post("/api/v1/cameras", json=new), 201)
            assert created["enabled"] is True and created["zones"] == []
            assert (await _json(await http.post("/api/v1/cameras", json=new), 409))["error"]["code"] == "conflict"
            bad = await _json(await http.post("/api/v1/cameras", json={"id": "Bad Id!", "name": "x"}), 422)
            assert bad["error"]["code"] == "validation_error"
            patched = await _json(await http.patch("/api/v1/cameras/back_door", json={"enabled": False}), 200)
            assert patched["enabled"] is False and patched["name"] == "Back door"

            zones = {
                "zones": [{"name": "door", "polygon": [[0.1, 0.2], [0.5, 0.2], [0.5, 0.9]], "sensitivity": "high"}]
            }
            assert await _json(await http.put("/api/v1/cameras/back_door/zones", json=zones), 200) == zones
            assert await _json(await http.get("/api/v1/cameras/back_door/zones"), 200) == zones
            outside = {"zones": [{"name": "x", "polygon": [[0, 0], [1.5, 0], [1, 1]]}]}
            await _json(await http.put("/api/v1/cameras/back_door/zones", json=outside), 422)
            broken = await _json(
                await http.put(
                    "/api/v1/cameras/back_door/zones", data=b"{", headers={"Content-Type": "application/json"}
                ),
                400,
            )
            assert broken["error"]["code"] == "bad_json"

            listed = await _json(await http.get("/api/v1/cameras"), 200)
            assert [c["id"] for c in listed["cameras"]] == ["back_door"]
            await _json(await http.delete("/api/v1/cameras/back_door"), 204)
            await _json(await http.get("/api/v1/cameras/back_door"), 404)
            await _json(await http.get("/api/v1/cameras/NOT%20VALID"), 404)

            audit = await _json(await http.get("/api/v1/audit"), 200)
            assert [(e["action"], e["target_id"], e["who"]) for e in audit["entries"]] == [
                ("DELETE /cameras/{camera_id}", "back_door", "tests"),
                ("PUT /cameras/{camera_id}/zones", "back_door", "tests"),
                ("PATCH /cameras/{camera_id}", "back_door", "tests"),
                ("POST /cameras", None, "tests"),
            ]


async def test_reviewing_an_event_stores_it_and_publishes_an_update(
    make_settings: Callable[..., Settings], pose_detector: UltralyticsDetector, mosquitto_url: str
) -> None:
    settings = make_settings(mqtt_url=mosquitto_url)
    subscriber = await Subscriber(mosquitto_url, "hsi/events").ready()
    try:
        async with running(settings, pose_detector) as server:
            drop(demo_assets.image("zidane.jpg"), settings.cameras_path / "hall" / "MDAlarm_20261124-120000.jpg")
            new = await subscriber.wait_for(lambda m: b'"type":"new"' in m.payload)
            event_id = EventMessage.model_validate_json(new.payload).id
            headers = await auth_headers(server)
            async with aiohttp.ClientSession(base_url=server.api_url, headers=headers) as http:
                change = {"reviewed": True, "notes": "the gardener", "feedback": "false_alarm"}
                patched = await _json(await http.patch(f"/api/v1/events/{event_id}", json=change), 200)
                assert (patched["reviewed"], patched["notes"], patched["feedback"]) == (
                    True,
                    "the gardener",
                    "false_alarm",
                )
                await _json(await http.patch(f"/api/v1/events/{event_id}", json={"feedback": "maybe"}), 422)
                await _json(await http.patch(f"/api/v1/events/{uuid.uuid4()}", json={"reviewed": True}), 404)
                reviewed = await _json(await http.get("/api/v1/events", params={"reviewed": "true"}), 200)
                assert [e["id"] for e in reviewed["events"]] == [str(event_id)]
                dets = await _json(await http.get("/api/v1/detections", params={"camera": "hall"}), 200)
                assert [d["label"] for d in dets["detections"]] == ["person", "person"]
            update = await subscriber.wait_for(lambda m: b'"type":"update"' in m.payload)
            message = EventMessage.model_validate_json(update.payload)
            assert message.id == event_id and message.reviewed and message.feedback == "false_alarm"
            assert message.alert is False  # a review tells readers, it never alerts again
    finally:
        subscriber.close()


async def test_dead_letters_can_be_listed_requeued_and_deleted(
    make_settings: Callable[..., Settings], pose_detector: UltralyticsDetector
) -> None:
    corrupt = bytearray(demo_assets.image("bus.jpg").read_bytes())
    dht = corrupt.index(b"\xff\xc4")
    corrupt[dht + 5 : dht + 21] = b"\xff" * 16  # decodes to an error, though the header is fine
    settings = make_settings()
    async with running(settings, pose_detector) as server:
        for n in (1, 2):
            # Two distinct files (a one-byte JPEG comment after the start marker) that went bad in
            # the image store after they were accepted: the door would have refused them.
            path = settings.images_path / "shed" / "damaged" / f"MDAlarm_20261124-12000{n}.jpg"
            await enqueue_stored(
                server.pool, "shed", path, b"\xff\xd8\xff\xfe\x00\x03" + bytes([n]) + bytes(corrupt[2:])
            )
        await wait_until(lambda: server.pool.fetchval("SELECT count(*) = 2 FROM jobs WHERE state = 'dead'"))
        headers = await auth_headers(server)
        async with aiohttp.ClientSession(base_url=server.api_url, headers=headers) as http:
            dlq = await _json(await http.get("/api/v1/dlq", params={"limit": 1}), 200)
            assert len(dlq["jobs"]) == 1 and dlq["next_cursor"] is not None
            rest = await _json(await http.get("/api/v1/dlq", params={"cursor": dlq["next_cursor"]}), 200)
            first, second = dlq["jobs"][0], rest["jobs"][0]
            assert first["last_error"].startswith("corrupt_image") and first["id"] != second["id"]

            requeued = await _json(await http.post(f"/api/v1/dlq/{first['id']}/requeue"), 200)
            # Requeued with fresh attempts; a worker may already be on it (and fail it again).
            assert requeued["id"] == first["id"] and requeued["attempts"] <= 1
            await wait_until(
                lambda: server.pool.fetchval(
                    "SELECT state = 'dead' AND attempts = 1 FROM jobs WHERE id = $1", first["id"]
                )
            )
            await _json(await http.delete(f"/api/v1/dlq/{second['id']}"), 204)
            await _json(await http.delete(f"/api/v1/dlq/{second['id']}"), 404)
            await _json(await http.post("/api/v1/dlq/999999/requeue"), 404)
            left = await _json(await http.get("/api/v1/dlq"), 200)
            assert [j["id"] for j in left["jobs"]] == [first["id"]]


async def test_context_is_validated_stored_and_read_back(
    make_settings: Callable[..., Settings], pose_detector: UltralyticsDetector
) -> None:
    async with running(make_settings(), pose_detector) as server:
        headers = await auth_headers(server, "home-assistant")
        async with aiohttp.ClientSession(base_url=server.api_url, headers=headers) as http:
            empty = await _json(await http.get("/api/v1/context"), 200)
            assert empty["context"]["alarm_state"] == "unknown" and empty["set_at"] is None
            context = {
                "alarm_state": "armed_away",
                "people_home": [],
                "open_entries": ["back door"],
                "sun": "below_horizon",
            }
            stored = await _json(await http.put("/api/v1/context", json=context), 200)
            assert stored["set_by"] == "home-assistant" and stored["context"]["open_entries"] == ["back door"]
            await _json(await http.put("/api/v1/context", json={"alarm_state": "on fire"}), 422)
            await _json(await http.put("/api/v1/context", json={"alarm_state": "disarmed", "extra": 1}), 422)
            current = await _json(await http.get("/api/v1/context"), 200)
            assert current["context"]["alarm_state"] == "armed_away"


async def test_pagination_returns_each_event_once_while_new_ones_arrive(
    make_settings: Callable[..., Settings], pose_detector: UltralyticsDetector
) -> None:
    async with running(make_settings(role="api"), None) as server:
        await server.pool.execute("INSERT INTO cameras (id, name) VALUES ('cam', 'Cam')")
        base = datetime(2026, 11, 24, tzinfo=UTC)

        async def add_events(n: int, start: datetime, step: timedelta) -> list[str]:
            ids = [str(uuid.uuid4()) for _ in range(n)]
            await server.pool.executemany(
                "INSERT INTO events (id, camera_id, started_at, risk_score, risk_level, summary, reasoning,"
                " risk_factors, objects, analysis_source)"
                " VALUES ($1, 'cam', $2, 10, 'low', 's', 'r', '[]', '{}', 'rules')",
                # Several events share a timestamp: the id breaks the tie, so order stays total.
                [(uuid.UUID(i), start + step * (k // 3)) for k, i in enumerate(ids)],
            )
            return ids

        existing = await add_events(120, base, timedelta(minutes=1))
        headers = await auth_headers(server)
        seen: list[str] = []
        async with aiohttp.ClientSession(base_url=server.api_url, headers=headers) as http:
            cursor: str | None = None
            page_no = 0
            while True:
                params = {"limit": "17"} | ({"cursor": cursor} if cursor else {})
                page = await _json(await http.get("/api/v1/events", params=params), 200)
                seen += [e["id"] for e in page["events"]]
                page_no += 1
                # Newer and older events keep arriving between pages.
                await asyncio.gather(
                    add_events(2, base + timedelta(days=1, minutes=page_no), timedelta(seconds=1)),
                    add_events(1, base - timedelta(days=1, minutes=page_no), timedelta(seconds=1)),
                )
                cursor = page["next_cursor"]
                if cursor is None:
                    break
        assert len(seen) == len(set(seen))  # nothing twice
        assert set(existing) <= set(seen)  # nothing that existed was skipped


async def test_metrics_count_what_happened_and_gpu_series_are_absent_without_gpu(
    make_settings: Callable[..., Settings], pose_detector: UltralyticsDetector
) -> None:
    from inference_server.telemetry.metrics import REGISTRY

    before = (
        REGISTRY.get_sample_value(
            "hsi_images_ingested_total", {"camera_id": "lobby", "source": "folder", "result": "queued"}
        )
        or 0
    )
    settings = make_settings()
    async with running(settings, pose_detector) as server:
        for n, name in enumerate(("bus.jpg", "zidane.jpg", "rocket.jpg")):
            drop(demo_assets.image(name), settings.cameras_path / "lobby" / f"MDAlarm_20261124-10000{n}.jpg")
        await wait_until(lambda: server.pool.fetchval("SELECT count(*) = 3 FROM jobs WHERE state = 'done'"))
        headers = await auth_headers(server)
        async with aiohttp.ClientSession(base_url=server.api_url, headers=headers) as http:
            async with http.get("/api/v1/metrics") as resp:
                text = await resp.text()
                assert resp.status == 200 and resp.content_type == "text/plain"
            status = await _json(await http.get("/api/v1/system/status"), 200)
        line = 'hsi_images_ingested_total{camera_id="lobby",result="queued",source="folder"}'
        assert f"{line} {before + 3}" in text
        assert 'hsi_queue_jobs{state="done"} 3.0' in text
        assert "hsi_dlq_size 0.0" in text
        assert 'hsi_stage_seconds_count{stage="infer"}' in text
        assert "hsi_end_to_end_seconds_count" in text
        assert "hsi_gpu_" not in text  # no GPU here: the series do not exist at all
        assert status["gpu"] is None and status["queue"]["done"] == 3 and status["dlq_size"] == 0
        assert status["images_per_s"] > 0 and status["latency_ms_p95"] >= status["latency_ms_p50"] > 0
        assert status["mqtt_connected"] is True


async def test_deleting_a_camera_clears_its_retained_topics(
    make_settings: Callable[..., Settings], pose_detector: UltralyticsDetector
) -> None:
    settings = make_settings()
    async with running(settings, pose_detector) as server:
        drop(demo_assets.image("bus.jpg"), settings.cameras_path / "porch" / "MDAlarm_20261124-021000.jpg")
        first = Subscriber(server.mqtt_url, "hsi/cameras/porch/#")
        try:
            await first.ready()
            await first.wait_for(lambda m: m.topic == "hsi/cameras/porch/state" and m.payload)
            await first.wait_for(lambda m: m.topic == "hsi/cameras/porch/objects/person" and m.payload)
            headers = await auth_headers(server)
            async with aiohttp.ClientSession(base_url=server.api_url, headers=headers) as http:
                await _json(await http.delete("/api/v1/cameras/porch"), 204)
            for topic in ("state", "snapshot", "objects/person"):
                await first.wait_for(lambda m, t=topic: m.topic == f"hsi/cameras/porch/{t}" and m.payload == b"")
        finally:
            first.close()
        # A subscriber arriving later finds nothing retained for the deleted camera.
        later = Subscriber(server.mqtt_url, "hsi/cameras/porch/#")
        try:
            await later.ready()
            await later.caught_up()  # what the broker retained for porch/# has been delivered by now
            assert later.drain() == []
        finally:
            later.close()
