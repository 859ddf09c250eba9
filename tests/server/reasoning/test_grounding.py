"""The server's checks of the LLM's words: each kind of ungrounded reply is named, a grounded one passes.

The replies below are the kinds the real SmolLM2-135M model wrote during the alert-quality
review (issue 16): weapons and attacks nobody saw, a cat turned into a person, "the risk is
low" on a critical event, "High, High, High", and a reasoning of ", ".
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import pytest

from inference_server.domain import Detection, Observation
from inference_server.reasoning.grounding import (
    Evidence,
    check,
    contradicts,
    empty,
    invented,
    lowering_grounds,
    miscounted,
    repeats,
)
from inference_server.schemas import RiskLevel

NIGHT = datetime(2026, 11, 24, 2, 10, tzinfo=UTC)
PERSON = Observation("back_door", "Back Door", NIGHT, [Detection("person", 0.92, (0.1, 0.1, 0.4, 0.9))])
CAT = Observation("garden", "Garden", NIGHT, [Detection("cat", 0.62, (0.3, 0.5, 0.5, 0.9))])
CONTEXT = {"alarm_state": "armed_away", "people_home": [], "sun": "below_horizon"}


def _evidence(
    observation: Observation = PERSON, *, context: Mapping[str, Any] = CONTEXT, zones: str | None = None
) -> Evidence:
    return Evidence.of(observation, context=context, zones=zones)


def test_a_grounded_reply_is_accepted() -> None:
    texts = {
        "summary": "Person at the back door at night while the alarm is armed away",
        "reasoning": "One person stands at the back door at 02:10 while nobody is home. This is a high risk.",
        "factor night_entry": "night entry: back door at night",
    }
    assert check(texts, _evidence(), "high") is None


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("The person is armed with a gun.", "names a weapon not in the evidence: 'armed with'"),
        ("A man with a pistol at the door.", "names a weapon not in the evidence: 'pistol'"),
        (
            "Armed with an explosive device and had been attacked by a suspicious individual.",
            "names a weapon not in the evidence: 'armed with'",
        ),
        ("The visitor carries explosives.", "names a weapon not in the evidence: 'explosives'"),
        ("The person was attacked near the door.", "names a threat not in the evidence: 'attacked'"),
        ("A dog is in the garden.", "names an animal not in the evidence: 'dog'"),
        ("A car stops at the door.", "names a vehicle not in the evidence: 'car'"),
    ],
)
def test_objects_and_threats_not_in_the_evidence_are_named(text: str, problem: str) -> None:
    assert invented(text, _evidence()) == problem


def test_armed_said_of_someone_is_a_weapon_claim_but_the_alarm_may_be_armed() -> None:
    problem = invented("The camera confirmed that it was armed.", _evidence())
    assert problem == "names a weapon not in the evidence: 'armed' (of someone, not the alarm)"
    assert invented("A person at the back door while the alarm is armed.", _evidence()) is None
    assert invented("The house is armed away and nobody is home.", _evidence()) is None


def test_a_cat_does_not_become_a_person_attacked_by_a_dog() -> None:
    problem = invented("A person attacked by a dog in the garden.", _evidence(CAT))
    assert problem is not None and "not in the evidence" in problem
    assert invented("A cat crosses the garden at night.", _evidence(CAT)) is None


def test_a_detected_object_or_one_named_in_the_context_is_grounded() -> None:
    knife = Observation("hall", "Hall", NIGHT, [*PERSON.detections, Detection("knife", 0.7, (0.2, 0.4, 0.3, 0.5))])
    assert invented("A person holding a knife in the hall.", _evidence(knife)) is None
    assert invented("The dog may have set it off.", _evidence(context={"notes": "We have a dog"})) is None
    assert invented("Someone at the car port.", _evidence(zones="car port (low sensitivity): person 0.92")) is None


def test_counts_that_differ_from_the_detector_are_named() -> None:
    assert miscounted("Two people at the back door.", _evidence()) == (
        "counts two people where the detector saw 1 person"
    )
    assert miscounted("Several intruders outside.", _evidence()) is not None
    assert miscounted("One person at the back door at 02:10 a person waits.", _evidence()) is None
    assert miscounted("There are two factors: person seen and night.", _evidence()) is None
    # The household context's count is a count the model was given too.
    home = {"people_home": ["Anna", "Ben", "Cleo"]}
    assert miscounted("3 people are home.", _evidence(context=home)) is None


@pytest.mark.parametrize(
    ("text", "level", "said"),
    [
        ("The risk of this observation is low.", "critical", "risk of this observation is low"),
        ("Nothing to worry about, probably a neighbour.", "high", "nothing to worry"),
        ("This is a high risk situation.", "low", "high risk"),
        ("The camera's score is low and there are only a few factors.", "critical", "score is low"),
        ("The risk of this observation is low; not a normal occurrence.", "medium", "risk of this observation is low"),
    ],
)
def test_text_that_contradicts_the_level_is_named(text: str, level: RiskLevel, said: str) -> None:
    problem = contradicts(text, level)
    assert problem is not None and said in problem


def test_text_that_agrees_with_the_level_passes() -> None:
    assert contradicts("The risk is low: a cat in the garden.", "low") is None
    assert contradicts("It is not a high risk.", "low") is None
    assert contradicts("A high risk: a person at the door at night.", "critical") is None


@pytest.mark.parametrize(
    "text",
    [
        "High, High, High, High",
        "the person is at the door, the person is at the door, the person is at the door",
        "risk risk medium risk risk level risk",
        "The camera was trained on a dataset with many images. The camera was trained on a dataset with many images.",
    ],
)
def test_a_reply_that_repeats_itself_is_named(text: str) -> None:
    assert repeats(text) is not None


def test_an_ordinary_sentence_does_not_count_as_repetition() -> None:
    assert repeats("A person at the back door at night while the alarm is armed and nobody is at home.") is None


@pytest.mark.parametrize("text", ["", ", ", " ... ", "-, -"])
def test_an_empty_or_punctuation_only_text_is_empty(text: str) -> None:
    assert empty(text)
    assert check({"reasoning": text}, _evidence(), "high") == f"reasoning is empty ({text!r})"


def test_check_names_the_field_and_the_first_problem() -> None:
    texts = {"summary": "Person at the back door", "reasoning": "High, High, High"}
    assert check(texts, _evidence(), "high") == "reasoning repeats 'high' three times in a row"
    texts = {"summary": "Person armed with a gun at the back door", "reasoning": "A person at night."}
    assert check(texts, _evidence(), "high") == "summary names a weapon not in the evidence: 'armed with'"


def test_lowering_needs_a_check_the_server_can_verify() -> None:
    # No check exists today (no people recognition): nothing allows lowering.
    assert lowering_grounds(PERSON, CONTEXT) is None

    def known_person(
        observation: Observation, context: Mapping[str, Any] | None
    ) -> str | None:  # a future recognition check
        return "known_person: Anna recognised" if observation.camera_id == "back_door" else None

    assert lowering_grounds(PERSON, CONTEXT, [known_person]) == "known_person: Anna recognised"
    assert lowering_grounds(CAT, CONTEXT, [known_person]) is None
