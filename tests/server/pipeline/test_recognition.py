"""Known people through the whole server: real PostgreSQL, broker, yolo11n-pose and the real
face and body embedders. A person enrolled from one photo (REST) is recognised in another view
at the door at 23:00 while home (low); a stranger in the same scene is unfamiliar (high);
forgetting the person deletes their embeddings in the database."""

from __future__ import annotations

import io
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp
from PIL import Image, ImageOps

from inference_server import demo_assets
from inference_server.config import Settings
from inference_server.detection.ultralytics_backend import UltralyticsDetector
from inference_server.schemas import CameraCreate, HouseholdContext
from inference_server.store import cameras, context
from tests.support.waiting import wait_until

from ..conftest import auth_headers, drop, running

SET_BEFORE = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
ANNA_HOME = HouseholdContext(alarm_state="armed_home", people_home=["Anna"], sun="below_horizon")


def _recognition(make_settings: Callable[..., Settings], **more: Any) -> Settings:
    return make_settings(
        face_embedder_model=demo_assets.embedder_model("face"),
        body_embedder_model=demo_assets.embedder_model("body"),
        **more,
    )


def _png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


async def _event(server: Any, http: aiohttp.ClientSession, camera_id: str) -> dict[str, Any]:
    event_id = await wait_until(
        lambda: server.pool.fetchval("SELECT id FROM events WHERE camera_id = $1 AND ended_at IS NOT NULL", camera_id)
    )
    async with http.get(f"/api/v1/events/{event_id}") as resp:
        assert resp.status == 200
        event: dict[str, Any] = await resp.json()
    return event


async def test_enrolled_resident_is_recognised_low_a_stranger_high_and_forgetting_deletes_embeddings(
    make_settings: Callable[..., Settings], pose_detector: UltralyticsDetector
) -> None:
    settings = _recognition(make_settings)
    astronaut = Image.open(demo_assets.image("astronaut.png")).convert("RGB")
    async with running(settings, pose_detector) as server:
        for camera_id in ("front_door", "side_door"):
            await cameras.create(server.pool, CameraCreate(id=camera_id, name=camera_id.replace("_", " ").title()))
        await context.put(server.pool, ANNA_HOME, "test", set_at=SET_BEFORE)
        headers = await auth_headers(server)
        async with aiohttp.ClientSession(base_url=server.api_url, headers=headers) as http:
            async with http.post("/api/v1/people", json={"name": "Anna", "entity_id": "person.anna"}) as resp:
                assert resp.status == 201
                anna = await resp.json()
            # Enrolled from one photo: mirrored and cropped, not the picture the camera will take.
            enrol = _png(ImageOps.mirror(astronaut).crop((0, 20, 480, 512)))
            async with http.post(
                f"/api/v1/people/{anna['id']}/photos", data=enrol, headers={"Content-Type": "image/png"}
            ) as resp:
                assert resp.status == 201, await resp.text()
                assert (await resp.json())["embeddings"] == {"face": 1, "body": 1}

            drop(
                demo_assets.image("astronaut.png"), settings.cameras_path / "front_door" / "MDAlarm_20261124-230000.png"
            )
            known = await _event(server, http, "front_door")
            drop(demo_assets.image("zidane.jpg"), settings.cameras_path / "side_door" / "MDAlarm_20261124-230000.jpg")
            stranger = await _event(server, http, "side_door")

            [seen] = known["detections"]
            assert seen["identity"]["person"] == "Anna" and seen["identity"]["source"] == "face"
            assert seen["identity"]["similarity"] >= 0.70
            factors = {f["name"]: f["points"] for f in known["risk_factors"]}
            assert factors["known_person"] < 0
            assert known["risk_level"] == "low", known["summary"]
            assert known["summary"].startswith("Anna at Front Door at 23:00")

            identities = [d["identity"] for d in stranger["detections"]]
            assert all(i is not None and i["person"] is None for i in identities)
            assert any(i["source"] == "face" for i in identities)  # a face seen, matching no one enrolled
            factors = {f["name"]: f["points"] for f in stranger["risk_factors"]}
            assert factors["unfamiliar_person"] > 0
            assert stranger["risk_level"] == "high", stranger["summary"]
            assert "unfamiliar" in stranger["summary"]
            assert "vector" not in str(stranger) and "embedding" not in str(stranger["detections"])

            # Enrol the stranger from the event's detection: the one whose face was seen.
            async with http.post("/api/v1/people", json={"name": "Carlo"}) as resp:
                carlo = await resp.json()
            n = next(i for i, d in enumerate(stranger["detections"]) if d["identity"]["source"] == "face")
            async with http.post(
                f"/api/v1/events/{stranger['id']}/detections/{n}/enroll", json={"person_id": carlo["id"]}
            ) as resp:
                assert resp.status == 201, await resp.text()
                assert (await resp.json())["embeddings"] == {"face": 1, "body": 1}
            async with http.post(
                f"/api/v1/events/{stranger['id']}/detections/7/enroll", json={"person_id": carlo["id"]}
            ) as resp:
                assert resp.status == 404
            async with http.get("/api/v1/people") as resp:
                listed = (await resp.json())["people"]
            assert [(p["name"], p["embeddings"]) for p in listed] == [
                ("Anna", {"face": 1, "body": 1}),
                ("Carlo", {"face": 1, "body": 1}),
            ]

            async with http.delete(f"/api/v1/people/{anna['id']}") as resp:
                assert resp.status == 204
            left = await server.pool.fetchval("SELECT count(*) FROM person_embeddings WHERE person_id = $1", anna["id"])
            assert left == 0
            assert await server.pool.fetchval("SELECT count(*) FROM people WHERE id = $1", anna["id"]) == 0
            async with http.get(f"/api/v1/events/{known['id']}") as resp:
                assert (await resp.json())["detections"][0]["identity"] is None  # the recognition naming her is gone


async def test_enrolment_photo_must_show_one_person(
    make_settings: Callable[..., Settings], pose_detector: UltralyticsDetector
) -> None:
    async with running(_recognition(make_settings), pose_detector) as server:
        headers = await auth_headers(server)
        async with aiohttp.ClientSession(base_url=server.api_url, headers=headers) as http:
            async with http.post("/api/v1/people", json={"name": "Anna"}) as resp:
                anna = await resp.json()
            bus = demo_assets.image("bus.jpg").read_bytes()
            async with http.post(
                f"/api/v1/people/{anna['id']}/photos", data=bus, headers={"Content-Type": "image/jpeg"}
            ) as resp:
                assert resp.status == 422
                assert "one person" in (await resp.json())["error"]["message"]
            async with http.post("/api/v1/people", json={"name": "anna"}) as resp:
                assert resp.status == 409
            async with http.get(f"/api/v1/people/{anna['id']}") as resp:
                assert (await resp.json())["embeddings"] == {}


async def test_without_models_enrolment_from_photos_says_recognition_is_off(
    make_settings: Callable[..., Settings], pose_detector: UltralyticsDetector
) -> None:
    async with running(make_settings(), pose_detector) as server:
        headers = await auth_headers(server)
        async with aiohttp.ClientSession(base_url=server.api_url, headers=headers) as http:
            async with http.post("/api/v1/people", json={"name": "Anna"}) as resp:
                anna = await resp.json()
            png = _png(Image.open(demo_assets.image("astronaut.png")))
            async with http.post(
                f"/api/v1/people/{anna['id']}/photos", data=png, headers={"Content-Type": "image/png"}
            ) as resp:
                assert resp.status == 409
                assert (await resp.json())["error"]["code"] == "recognition_off"
