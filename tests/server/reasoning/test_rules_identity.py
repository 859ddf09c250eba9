"""Known people in the rules engine: a recognised resident lowers the risk (more so when the
context says they are home); an unfamiliar face raises it, only once the household enrolled
someone, and lifts the "household at home" cap; summaries name people."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from inference_server.domain import Assessment, Detection, Identity, Observation
from inference_server.reasoning.reasoner import LevelThresholds
from inference_server.reasoning.rules import RulesReasoner
from inference_server.schemas import HouseholdContext

RULES = RulesReasoner(LevelThresholds(30, 60, 85))
AT_23 = datetime(2026, 11, 24, 23, 0, tzinfo=ZoneInfo("Europe/Berlin"))
ANNA_HOME = HouseholdContext(alarm_state="armed_home", people_home=["Anna"], sun="below_horizon")
PERSON = Detection("person", 0.90, (0.3, 0.2, 0.6, 0.95))
ANNA = Identity("face", person_id=1, name="Anna", entity_id="person.anna", similarity=0.91)
STRANGER = Identity("face", visitor=501)


def _judge(identity: Identity | None, *, enrolled: int = 2, context: HouseholdContext = ANNA_HOME) -> Assessment:
    obs = Observation(
        "front",
        "Front Door",
        AT_23,
        [PERSON],
        context=context,
        identities=[identity] if identity is not None else (),
        enrolled_people=enrolled,
    )
    return RULES.assess_now(obs)


def test_enrolled_resident_at_the_door_at_23_while_home_is_low_and_named() -> None:
    known = _judge(ANNA)
    factors = {f.name: f.points for f in known.factors}
    # 40 + 22 night + 9 armed home − 18 people home − 40 Anna (recognised, at home) = 13.
    assert factors["known_person"] == -40
    assert known.risk_level == "low" and known.risk_score == sum(factors.values()) == 13
    assert known.summary.startswith("Anna at Front Door at 23:00")
    detail = next(f.detail for f in known.factors if f.name == "known_person")
    assert "Anna (face 0.91), at home" in detail


def test_unknown_person_same_scene_is_high_and_called_unfamiliar() -> None:
    baseline = _judge(None)
    stranger = _judge(STRANGER)
    factors = {f.name: f.points for f in stranger.factors}
    assert baseline.risk_level == "medium"
    # 40 + 22 + 9 − 18 + 18 unfamiliar = 71: not capped at medium, it is none of the household.
    assert factors["unfamiliar_person"] == 18 and "cap" not in factors
    assert stranger.risk_level == "high" and stranger.risk_score == 71
    assert stranger.summary.startswith("an unfamiliar person at Front Door at 23:00")
    assert "an unfamiliar face" in stranger.summary


def test_no_one_is_unfamiliar_before_the_household_enrolled_anyone() -> None:
    judged = _judge(STRANGER, enrolled=0)
    assert "unfamiliar_person" not in {f.name for f in judged.factors}
    assert judged.risk_score == _judge(None).risk_score
    assert judged.summary.startswith("1 person at Front Door")


def test_an_unknown_body_without_a_face_is_not_called_unfamiliar() -> None:
    judged = _judge(Identity("body", visitor=77))
    assert "unfamiliar_person" not in {f.name for f in judged.factors}


def test_known_person_not_home_lowers_less_than_at_home() -> None:
    away = HouseholdContext(alarm_state="armed_away", people_home=[], sun="below_horizon")
    judged = _judge(ANNA, context=away)
    factors = {f.name: f.points for f in judged.factors}
    assert factors["known_person"] == -27  # −30 weight × 40/45
    unknown = _judge(None, context=away)
    assert judged.risk_score < unknown.risk_score


def test_home_by_entity_id_counts_as_home() -> None:
    by_entity = HouseholdContext(alarm_state="armed_home", people_home=["person.anna"], sun="below_horizon")
    factors = {f.name: f.points for f in _judge(ANNA, context=by_entity).factors}
    assert factors["known_person"] == -40


def test_a_stranger_with_a_resident_is_still_unfamiliar() -> None:
    obs = Observation(
        "front",
        "Front Door",
        AT_23,
        [PERSON, Detection("person", 0.85, (0.6, 0.2, 0.9, 0.95))],
        context=ANNA_HOME,
        identities=[ANNA, STRANGER],
        enrolled_people=2,
    )
    judged = RULES.assess_now(obs)
    factors = {f.name: f.points for f in judged.factors}
    assert factors["unfamiliar_person"] > 0 and factors["known_person"] == 0
    assert judged.summary.startswith("Anna and an unfamiliar person at Front Door")


def test_one_stranger_seen_in_two_batches_of_an_event_is_one_unfamiliar_person() -> None:
    """An activity longer than a batch window gives the same stranger a new visitor in each batch
    (visitors link sightings within one batch): still one person, not two (before: "2 unfamiliar
    people"). Two strangers are two."""
    first = Identity("face", visitor=501, stranger=7, visits=1)
    again = Identity("face", visitor=733, stranger=7, visits=1)
    other = Identity("face", visitor=734, stranger=8, visits=1)

    def summary(together: int, *seen: Identity) -> str:
        # Sightings of several images: ``together``, the most people in one of them.
        obs = Observation(
            "front",
            "Front Door",
            AT_23,
            [PERSON] * len(seen),
            identities=list(seen),
            enrolled_people=2,
            max_counts={"person": together},
        )
        return RULES.assess_now(obs).summary

    assert summary(1, first, again).startswith("an unfamiliar person at Front Door")
    assert summary(2, first, again, other).startswith("2 unfamiliar people at Front Door")
