"""The reasoner with a model that sees: when frames are sent, how its reply is checked, and how its
activity moves the score. The model is a FAKE OpenAI-compatible server (tests/support/fake_vlm.py:
no vision-language weights exist here) reached through the real OpenAI backend."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from inference_server.config import LlmSettings
from inference_server.domain import Assessment, Detection, Observation
from inference_server.reasoning.backends.llamacpp import LlamaCppBackend
from inference_server.reasoning.backends.openai import OpenAiBackend
from inference_server.reasoning.grounding import Evidence, review
from inference_server.reasoning.llm import LOWERING_GROUNDS, LOWERING_REFUSED, LlmReasoner
from inference_server.reasoning.reasoner import LevelThresholds
from inference_server.reasoning.rules import RulesReasoner
from inference_server.schemas import HouseholdContext, Zone
from tests.support.fake_vlm import V2_REPLY, FakeVlm, assessments, decode, image_parts

NOON = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
NIGHT = datetime(2026, 11, 24, 2, 10, tzinfo=UTC)
AWAY = HouseholdContext(alarm_state="armed_away", people_home=[])
DOOR = Zone(name="door", polygon=[(0, 0), (1, 0), (1, 1), (0, 1)], sensitivity="high")


def _observation(when: datetime = NOON, **changes: Any) -> Observation:
    observation = Observation(
        "porch", "Porch", when, [Detection("person", 0.92, (0.1, 0.1, 0.4, 0.9))], context=AWAY, first_seen=when
    )
    return replace(observation, last_seen=when, **changes)


def _rules(observation: Observation) -> Assessment:
    return RulesReasoner(LevelThresholds()).assess_now(observation)


def _jpeg(colour: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 48), colour).save(out, format="JPEG")
    return out.getvalue()


def _pixel(image: Image.Image) -> tuple[int, int]:
    red, green, *_ = image.convert("RGB").getpixel((10, 10))  # type: ignore[misc]
    return red, green


FRAMES = {11: _jpeg((200, 0, 0)), 12: _jpeg((0, 200, 0))}
CONTEXT = AWAY.model_dump(mode="json")


@pytest.fixture
async def fake_vlm() -> AsyncIterator[FakeVlm]:
    server = await FakeVlm().start()
    try:
        yield server
    finally:
        await server.close()


def _reasoner(fake: FakeVlm, vision: Any = "auto", **kwargs: Any) -> LlmReasoner:
    return LlmReasoner(OpenAiBackend(fake.base_url, "fake-vlm"), LevelThresholds(), vision=vision, **kwargs)


async def _refine(reasoner: LlmReasoner, observation: Observation, **kwargs: Any) -> Assessment:
    try:
        return await reasoner.refine(observation, _rules(observation), context=CONTEXT, images=FRAMES, **kwargs)
    finally:
        await reasoner.close()


async def test_auto_sends_the_frames_in_order_when_the_server_says_it_sees(fake_vlm: FakeVlm) -> None:
    result = await _refine(_reasoner(fake_vlm), _observation())

    (body,) = assessments(fake_vlm)
    assert [_pixel(decode(url)) for url in image_parts(body)] == [
        pytest.approx((200, 0), abs=8),
        pytest.approx((0, 200), abs=8),
    ]
    assert result.analysis_source == "llm" and result.frames_sent == (11, 12)
    assert result.prompt_version == "security-v2" and result.description == V2_REPLY["description"]
    assert (result.activity, result.confidence) == ("approaching", 0.8)


@pytest.mark.parametrize(
    ("vision", "props_status", "sends"), [(False, 200, False), (True, 404, True), ("auto", 404, False)]
)
async def test_the_vision_setting_decides_and_auto_asks_the_server_once(
    fake_vlm: FakeVlm, vision: Any, props_status: int, sends: bool
) -> None:
    fake_vlm.props_status = props_status
    if not sends:
        fake_vlm.reply = {k: V2_REPLY[k] for k in ("reasoning", "factors", "risk_score", "risk_level", "summary")}
    reasoner = _reasoner(fake_vlm, vision)
    await reasoner.refine(_observation(), _rules(_observation()), images=FRAMES)
    result = await _refine(reasoner, _observation())

    assert all(bool(image_parts(body)) is sends for body in assessments(fake_vlm))
    assert result.prompt_version == ("security-v2" if sends else "security-v1")
    assert result.frames_sent == ((11, 12) if sends else ())
    assert fake_vlm.props_calls == (1 if vision == "auto" else 0)


async def test_a_model_that_saw_the_picture_may_report_what_the_detector_missed(fake_vlm: FakeVlm) -> None:
    fake_vlm.reply = V2_REPLY | {"description": "Two men and a dog stand at the door."}
    result = await _refine(_reasoner(fake_vlm), _observation())

    assert result.analysis_source == "llm" and result.description == "Two men and a dog stand at the door."
    assert result.model_observations == (
        "an animal the detector did not see: 'dog'",
        "the model counts two men where the detector saw 1 person",
    )


def test_without_the_picture_the_same_words_are_rejected() -> None:
    text = {"description": "Two men and a dog stand at the door."}
    evidence = Evidence.of(_observation())
    assert review(text, evidence, "high").problem == "description names an animal not in the evidence: 'dog'"
    seen = review(text, replace(evidence, saw_picture=True), "high")
    assert seen.problem is None and len(seen.observations) == 2


async def test_a_level_contradiction_is_rejected_even_with_the_picture(fake_vlm: FakeVlm) -> None:
    fake_vlm.reply = V2_REPLY | {"risk_score": 78, "description": "A courier at the door; no risk at all."}
    result = await _refine(_reasoner(fake_vlm), _observation())

    assert result.analysis_source == "rules" and "LLM fallback: rejected" in result.reasoning
    assert "while the level is high" in result.reasoning and len(assessments(fake_vlm)) == 2


async def test_trying_entry_raises_by_at_least_its_points_within_max_adjust(fake_vlm: FakeVlm) -> None:
    observation = _observation(context=None)
    rules = _rules(observation)
    fake_vlm.reply = V2_REPLY | {
        "activity": "trying_entry",
        "risk_score": rules.risk_score,
        "risk_level": rules.risk_level,
    }
    fake_vlm.reply |= {"threat_indicators": ["pulling the door handle"], "description": "A man pulls the door handle."}
    reasoner = _reasoner(fake_vlm, max_adjust=15)
    try:
        result = await reasoner.refine(observation, rules, images=FRAMES)
    finally:
        await reasoner.close()

    assert result.risk_score == rules.risk_score + 15  # +20 asked, bounded by max_adjust
    assert sum(f.points for f in result.factors) == result.risk_score
    assert [f.detail for f in result.factors if f.name == "llm_activity"] == [
        f"trying_entry (seen): sets at least {rules.risk_score + 20}"
    ]


async def test_a_seen_activity_cannot_raise_past_a_rules_cap(fake_vlm: FakeVlm) -> None:
    observation = _observation(NIGHT)
    rules = _rules(observation)
    assert any(f.name == "cap" and f.points < 0 for f in rules.factors)
    fake_vlm.reply = V2_REPLY | {"activity": "entering", "risk_score": 84, "risk_level": "high"}
    fake_vlm.reply |= {"description": "A man steps through the open door.", "summary": "Person entering"}
    reasoner = _reasoner(fake_vlm)
    try:
        result = await reasoner.refine(observation, rules, images=FRAMES)
    finally:
        await reasoner.close()
    assert result.analysis_source == "llm" and result.risk_score == rules.risk_score


async def test_a_daytime_delivery_seen_by_the_model_may_lower_the_score(fake_vlm: FakeVlm) -> None:
    observation = _observation()
    rules = _rules(observation)
    lowered = rules.risk_score - 25
    fake_vlm.reply = V2_REPLY | {"activity": "delivering", "risk_score": lowered, "risk_level": "medium"}
    fake_vlm.reply |= {"description": "A courier in a uniform leaves a parcel on the step.", "confidence": 0.9}
    result = await _refine(_reasoner(fake_vlm), observation)

    # An armed-away "high" becomes medium: the delivery, in daylight, with nothing open, is checkable.
    assert (rules.risk_level, result.risk_score, result.risk_level) == ("high", lowered, "medium")
    (grounds,) = [f.detail for f in result.factors if f.name == LOWERING_GROUNDS]
    assert grounds.startswith("activity delivering seen by the model (0.90): daytime, no entry open")


@pytest.mark.parametrize(
    ("when", "changes", "reply"),
    [
        (NIGHT, {}, {"activity": "delivering"}),  # at night: no checkable reason
        (NOON, {"context": AWAY.model_copy(update={"open_entries": ["front door"]})}, {"activity": "delivering"}),
        (NOON, {}, {"activity": "delivering", "confidence": 0.4}),  # the model is unsure
        (NOON, {}, {"activity": "delivering", "threat_indicators": ["face hidden"]}),
        (NOON, {"zones": [DOOR], "detection_zones": [("door",)]}, {"activity": "passing_by"}),
        (NOON, {}, {"activity": "animal"}),  # the detector saw no animal
    ],
)
async def test_a_lowering_activity_without_its_checkable_conditions_is_refused(
    fake_vlm: FakeVlm, when: datetime, changes: dict[str, Any], reply: dict[str, Any]
) -> None:
    observation = _observation(when, **changes)
    rules = _rules(observation)
    fake_vlm.reply = V2_REPLY | reply | {"risk_score": max(0, rules.risk_score - 10), "risk_level": rules.risk_level}
    fake_vlm.reply |= {"description": "Someone at the door.", "summary": "Someone at the door"}
    context = observation.context.model_dump(mode="json") if observation.context else None
    reasoner = _reasoner(fake_vlm)
    try:
        result = await reasoner.refine(observation, rules, context=context, images=FRAMES)
    finally:
        await reasoner.close()
    assert result.analysis_source == "llm", result.reasoning
    assert result.risk_score == rules.risk_score
    assert any(f.name == LOWERING_REFUSED for f in result.factors)


async def test_a_text_only_models_activity_moves_nothing(fake_vlm: FakeVlm) -> None:
    """``vision: false``: no frames, prompt v1, so no activity to act on (the rules stand)."""
    reasoner = _reasoner(fake_vlm, False)
    fake_vlm.reply = {k: V2_REPLY[k] for k in ("reasoning", "factors", "summary")} | {
        "risk_score": _rules(_observation()).risk_score,
        "risk_level": "high",
    }
    result = await _refine(reasoner, _observation())
    assert result.activity is None and not any(f.name == "llm_activity" for f in result.factors)


def test_vision_settings_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from inference_server.config import Settings

    monkeypatch.setenv("HSI_LLM__VISION", "true")
    monkeypatch.setenv("HSI_LLM__MAX_IMAGES", "2")
    monkeypatch.setenv("HSI_LLM__IMAGE_MAX_PX", "512")
    llm = Settings().llm
    assert llm is not None
    assert (llm.vision, llm.max_images, llm.image_max_px) == (True, 2, 512)
    assert LlmSettings().vision == "auto" and LlmSettings(vision="false").vision is False
    with pytest.raises(ValueError, match="vision"):
        LlmSettings(vision="sometimes")


async def test_in_process_model_sees_only_with_a_projector(tmp_path: Path) -> None:
    model = tmp_path / "model.gguf"
    model.write_bytes(b"GGUF")
    assert await LlamaCppBackend(model).can_see() is False
    projector = tmp_path / "mmproj.gguf"
    with pytest.raises(FileNotFoundError, match="projector not found"):
        LlamaCppBackend(model, mmproj_path=projector)
    projector.write_bytes(b"GGUF")
    assert await LlamaCppBackend(model, mmproj_path=projector).can_see() is True
    with pytest.raises(ValueError, match="unknown chat_handler"):
        LlamaCppBackend(model, mmproj_path=projector, chat_handler="nope")
