"""Phase two with a model that sees, through the whole server (real PostgreSQL, broker, YOLO,
photos), against a FAKE OpenAI-compatible vision server (tests/support/fake_vlm.py): no
vision-language weights exist here, so the fake stands in for the model and records what the
server sent."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from PIL import Image, ImageChops, ImageOps, ImageStat

from inference_server import demo_assets
from inference_server.config import LlmSettings, Settings
from inference_server.detection.ultralytics_backend import UltralyticsDetector
from inference_server.pipeline.llm import LlmStage
from inference_server.reasoning.prompts import VisionAssessment
from inference_server.schemas import EventMessage, HouseholdContext
from inference_server.store import batches as store_batches
from inference_server.store import context, events
from tests.support.fake_vlm import V2_REPLY, FakeVlm, assessments, decode, image_parts
from tests.support.mqtt import Subscriber

from ..conftest import drop, running

PEOPLE = ("zidane.jpg", "bus.jpg", "astronaut.png")


@pytest.fixture
async def fake_vlm() -> AsyncIterator[FakeVlm]:
    server = await FakeVlm().start()
    try:
        yield server
    finally:
        await server.close()


async def _update(subscriber: Subscriber) -> tuple[EventMessage, EventMessage]:
    new = EventMessage.model_validate_json(
        (await subscriber.wait_for(lambda m: b'"type":"new"' in m.payload, timeout=90)).payload
    )
    update = EventMessage.model_validate_json(
        (await subscriber.wait_for(lambda m: b'"type":"update"' in m.payload, timeout=90)).payload
    )
    return new, update


def _vision_settings(
    make_settings: Callable[..., Settings], mosquitto_url: str, fake: FakeVlm, **llm: object
) -> Settings:
    values: dict[str, object] = {"backend": "openai", "base_url": fake.base_url, "model": "fake-vlm", "timeout_s": 10}
    values |= llm
    # No fast path: the batch of three photos closes as one event, then phase two sees its frames.
    return make_settings(
        mqtt_url=mosquitto_url, llm=LlmSettings(**values), fast_path={}, batch_window_s=30, batch_idle_s=5
    )


def _count_llm_phase_reads(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """The batches whose detections the LLM phase (``LlmStage.process``) reads, one entry a read."""
    reads: list[object] = []
    real = store_batches.detections

    async def counted(conn: object, batch_id: object) -> object:
        frame = sys._getframe(1)
        while frame is not None and frame.f_code is not LlmStage.process.__code__:
            frame = frame.f_back
        if frame is not None:
            reads.append(batch_id)
        return await real(conn, batch_id)  # type: ignore[arg-type]

    monkeypatch.setattr(store_batches, "detections", counted)
    return reads


async def test_key_frames_reach_the_model_bounded_and_its_description_reaches_event_mqtt_and_store(
    make_settings: Callable[..., Settings],
    pose_detector: UltralyticsDetector,
    mosquitto_url: str,
    fake_vlm: FakeVlm,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = _vision_settings(make_settings, mosquitto_url, fake_vlm, max_images=2, image_max_px=320)
    llm_reads = _count_llm_phase_reads(monkeypatch)
    subscriber = await Subscriber(mosquitto_url, "hsi/events").ready()
    try:
        async with running(settings, pose_detector) as server:
            for second, name in enumerate(PEOPLE):
                upload = f"MDAlarm_20261124-12000{second}{Path(name).suffix}"
                drop(demo_assets.image(name), settings.cameras_path / "porch" / upload)
            new, update = await _update(subscriber)
            stored = await events.get(server.pool, update.id)
            paths = {r["id"]: r["path"] for r in await server.pool.fetch("SELECT id, path FROM images")}
            batch_images = await server.pool.fetch(
                "SELECT bi.image_id FROM batch_images bi JOIN events e ON e.batch_id = bi.batch_id WHERE e.id = $1",
                update.id,
            )
    finally:
        subscriber.close()
    assert len(assessments(fake_vlm)) == 1
    # The prompt's detections and the key frames come from one read of the batch's detections.
    assert len(llm_reads) == 1, llm_reads
    body = assessments(fake_vlm)[0]
    urls = image_parts(body)
    # At most max_images of the event's three images, in the order the event records them.
    assert len(batch_images) == 3 and len(urls) == 2
    assert update.frames_sent and len(update.frames_sent) == 2
    assert set(update.frames_sent) <= {r["image_id"] for r in batch_images}
    for url, image_id in zip(urls, update.frames_sent, strict=True):
        sent = decode(url)
        with Image.open(paths[image_id]) as original:
            expected = ImageOps.exif_transpose(original).convert("RGB")
        # Bounded: the long side is image_max_px (the photos are larger), the aspect ratio kept.
        assert max(sent.size) == 320
        assert abs(sent.width / sent.height - expected.width / expected.height) < 0.02
        # The same picture: the original scaled down differs from what was sent by JPEG noise only.
        expected.thumbnail(sent.size)
        diff = ImageStat.Stat(ImageChops.difference(sent.convert("RGB"), expected.resize(sent.size))).mean
        assert max(diff) < 8, diff
    # The answer schema v2 constrained the request.
    schema = body["response_format"]["json_schema"]["schema"]
    assert schema == VisionAssessment.model_json_schema()
    assert {"description", "activity", "threat_indicators", "confidence"} <= set(schema["properties"])
    # The model's description reaches the MQTT update and the stored event, with its reading.
    assert new.description is None and update.analysis_source == "llm" and update.alert
    assert update.description == V2_REPLY["description"]
    assert update.activity == "approaching" and update.threat_indicators == []
    assert update.prompt_version == "security-v2" and update.model == "fake-vlm"
    assert stored is not None and stored.description == update.description
    assert stored.frames_sent == update.frames_sent and stored.activity == "approaching"
    assert stored.llm_confidence == pytest.approx(0.8)
    # The headline stays the rules' factual summary.
    assert update.summary == new.summary


async def test_a_model_that_cannot_see_gets_no_frames_and_the_text_prompt(
    make_settings: Callable[..., Settings], pose_detector: UltralyticsDetector, mosquitto_url: str, fake_vlm: FakeVlm
) -> None:
    """``vision: auto`` and a server whose /props says no vision: the v1 text prompt, no image part."""
    fake_vlm.vision = False
    fake_vlm.reply = {
        "reasoning": "A person walks to the door in daylight.",
        "factors": [],
        "risk_score": 30,
        "risk_level": "low",
        "summary": "Person at the door",
    }
    settings = _vision_settings(make_settings, mosquitto_url, fake_vlm)
    subscriber = await Subscriber(mosquitto_url, "hsi/events").ready()
    try:
        async with running(settings, pose_detector):
            drop(demo_assets.image("zidane.jpg"), settings.cameras_path / "porch" / "MDAlarm_20261124-120000.jpg")
            _, update = await _update(subscriber)
    finally:
        subscriber.close()
    (body,) = assessments(fake_vlm)
    assert fake_vlm.props_calls >= 1
    assert image_parts(body) == []
    assert all(isinstance(m["content"], str) for m in body["messages"])
    assert update.prompt_version == "security-v1" and update.frames_sent == [] and update.activity is None


async def test_trying_entry_seen_by_the_model_raises_and_an_unseen_person_is_its_labelled_observation(
    make_settings: Callable[..., Settings], pose_detector: UltralyticsDetector, mosquitto_url: str, fake_vlm: FakeVlm
) -> None:
    """The model sees a second person the detector missed and someone trying the door: the count is
    kept as the model's observation (not a rejection), and the activity lifts the score."""
    fake_vlm.reply = V2_REPLY | {
        "description": "Two men stand at the back door; one pulls the door handle.",
        "activity": "trying_entry",
        "threat_indicators": ["pulling the door handle"],
        "risk_score": 40,
        "risk_level": "medium",
    }
    settings = _vision_settings(make_settings, mosquitto_url, fake_vlm)
    subscriber = await Subscriber(mosquitto_url, "hsi/events").ready()
    try:
        async with running(settings, pose_detector) as server:
            await context.put(
                server.pool, HouseholdContext(alarm_state="disarmed"), "test", set_at=datetime(2026, 11, 23, tzinfo=UTC)
            )
            drop(demo_assets.image("astronaut.png"), settings.cameras_path / "back" / "MDAlarm_20261124-120000.png")
            new, update = await _update(subscriber)
    finally:
        subscriber.close()
    assert update.analysis_source == "llm" and update.llm_error is None
    assert update.model_observations == ["the model counts two men where the detector saw 1 person"]
    assert update.threat_indicators == ["pulling the door handle"] and update.activity == "trying_entry"
    # Raised by at least the activity's 20 points (bounded by max_adjust 25), unless a rules cap holds.
    capped = any(f.name == "cap" and f.points < 0 for f in new.risk_factors)
    assert update.risk_score == (new.risk_score if capped else min(100, new.risk_score + 20))
    assert any(f.name == "llm_activity" for f in update.risk_factors)
