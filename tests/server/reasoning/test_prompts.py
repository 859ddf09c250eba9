"""The LLM prompt shows the model everything it is asked to weigh; one schema constrains and validates."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from inference_server.domain import Detection, Observation
from inference_server.reasoning.prompts import (
    PROMPT_VERSION,
    SUMMARY_MAX_CHARS,
    LlmAssessment,
    LlmFactor,
    answer_schema,
    build_messages,
    parse_reply,
)
from inference_server.reasoning.reasoner import LevelThresholds
from inference_server.reasoning.rules import RulesReasoner

NIGHT = datetime(2026, 11, 24, 2, 10, tzinfo=ZoneInfo("Europe/Amsterdam"))


def _observation() -> Observation:
    return Observation(
        "back_door",
        "Back Door",
        NIGHT,
        [Detection("person", 0.92, (0.1, 0.2, 0.4, 0.9)), Detection("dog", 0.55, (0.6, 0.5, 0.8, 0.95))],
    )


def test_user_message_shows_camera_local_time_detections_and_why_the_rules_scored() -> None:
    thresholds = LevelThresholds()
    observation = _observation()
    rules = RulesReasoner(thresholds).assess_now(observation)

    system, user = build_messages(observation, rules, thresholds=thresholds)

    assert system["role"] == "system" and user["role"] == "user"
    text = user["content"]
    assert isinstance(text, str)  # without images the user message is plain text, as before
    assert "Camera: Back Door (id back_door)" in text
    assert "Local time: Tuesday 24 November 2026, 02:10 (CET)" in text
    assert "- person (person), confidence 0.92, box 0.10,0.20,0.40,0.90" in text
    assert "- dog (animal), confidence 0.55, box 0.60,0.50,0.80,0.95" in text
    assert f"Rules engine: score {rules.risk_score} ({rules.risk_level})" in text
    for factor in rules.factors:
        assert f"- {factor.name} {factor.points:+d}: {factor.detail}" in text
    # Issue 4 fills these; until then the model is told plainly that nothing is known.
    assert text.count("none provided") == 3


def test_context_zones_and_baseline_reach_the_model() -> None:
    thresholds = LevelThresholds()
    observation = _observation()
    rules = RulesReasoner(thresholds).assess_now(observation)

    _, user = build_messages(
        observation,
        rules,
        thresholds=thresholds,
        context={"alarm": "armed_away", "people_home": 0, "open": ["back door"]},
        zones="person is in zone back_porch (sensitivity high)",
        baseline="people at Back Door between 02:00 and 03:00: 0.1 per night",
    )

    text = user["content"]
    assert '- alarm: armed_away\n- open: ["back door"]\n- people_home: 0' in text
    assert "person is in zone back_porch (sensitivity high)" in text
    assert "people at Back Door between 02:00 and 03:00: 0.1 per night" in text
    assert "none provided" not in text


def test_system_message_states_the_configured_level_thresholds() -> None:
    thresholds = LevelThresholds(medium=20, high=50, critical=90)
    observation = _observation()
    rules = RulesReasoner(thresholds).assess_now(observation)

    system, _ = build_messages(observation, rules, thresholds=thresholds)

    assert (
        "low below 20; medium from 20 to 49; high from 50 to 89; critical from 90. The level must match the score."
        in system["content"]
    )
    assert "$" not in system["content"]


def test_schema_is_the_answer_model_and_keeps_reasoning_before_the_score() -> None:
    schema = answer_schema()

    assert schema == LlmAssessment.model_json_schema()
    assert list(schema["properties"]) == ["reasoning", "factors", "risk_score", "risk_level", "summary"]
    assert schema["required"] == list(schema["properties"])
    assert schema["additionalProperties"] is False
    assert schema["properties"]["summary"]["maxLength"] == SUMMARY_MAX_CHARS
    assert schema["properties"]["risk_level"]["enum"] == ["low", "medium", "high", "critical"]
    assert (schema["properties"]["risk_score"]["minimum"], schema["properties"]["risk_score"]["maximum"]) == (0, 100)
    assert PROMPT_VERSION == "security-v1"


def test_reply_is_validated_by_the_same_model() -> None:
    good = (
        '```json\n{"reasoning": "A person at the back door at night.", "factors": '
        '[{"name": "night", "detail": "02:10"}], "risk_score": 70, "risk_level": "high", '
        '"summary": "Person at the back door"}\n```'
    )
    answer = parse_reply(good)
    assert (answer.risk_score, answer.risk_level, answer.factors[0].name) == (70, "high", "night")

    too_long = good.replace("Person at the back door", "x" * (SUMMARY_MAX_CHARS + 1))
    out_of_range = good.replace('"risk_score": 70', '"risk_score": 150')
    extra_key = good.replace('"risk_level": "high"', '"risk_level": "high", "mood": "calm"')
    for bad in ("the intruder seems fine", too_long, out_of_range, extra_key, '{"risk_score": 5}'):
        with pytest.raises(ValidationError):
            parse_reply(bad)


@pytest.mark.parametrize(
    ("written", "stored"),
    [("group,", "group"), ("Dwell time!", "dwell_time"), ("night", "night"), (" open-door ", "open_door")],
)
def test_factor_names_from_the_model_are_identifiers(written: str, stored: str) -> None:
    """Issue 15.14: a factor named ``group,`` by the model reached HA as ``llm_group,``."""
    assert LlmFactor(name=written, detail="why").name == stored


def test_a_factor_name_without_letters_or_digits_is_refused() -> None:
    with pytest.raises(ValidationError, match="no letters or digits"):
        LlmFactor(name=",;", detail="why")
