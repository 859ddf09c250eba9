"""The rules engine is deterministic and explains every point it gives."""

from __future__ import annotations

from datetime import UTC, datetime

from inference_server.domain import Detection, Observation
from inference_server.reasoning.reasoner import LevelThresholds
from inference_server.reasoning.rules import RulesReasoner

BOX = (0.1, 0.1, 0.4, 0.9)


def test_person_at_night_is_high_and_explained() -> None:
    result = RulesReasoner(LevelThresholds()).assess_now(
        Observation("cam", "Back Door", datetime(2026, 11, 24, 2, 10, tzinfo=UTC), [Detection("person", 0.92, BOX)])
    )
    assert result.risk_score == 61  # 45 × 0.92 = 41.4 → 41, + 20 at night
    assert result.risk_level == "high"
    assert [(f.name, f.points) for f in result.factors] == [("person_seen", 41), ("night", 20)]
    assert result.summary == "1 person at Back Door at 02:10 (night)"
    assert result.analysis_source == "rules"
    assert sum(f.points for f in result.factors) == result.risk_score


def test_doubtful_person_at_noon_is_low() -> None:
    # What yolo11n-pose makes of the cat in chelsea.png: a "person" at 0.59.
    result = RulesReasoner(LevelThresholds()).assess_now(
        Observation("cam", "Garden", datetime(2026, 11, 24, 12, 0, tzinfo=UTC), [Detection("person", 0.59, BOX)])
    )
    assert result.risk_level == "low"
    assert result.risk_score == 27


def test_group_bonus_is_capped_and_animals_weigh_little() -> None:
    people = [Detection("person", 0.8, BOX) for _ in range(10)]
    result = RulesReasoner(LevelThresholds()).assess_now(
        Observation("cam", "Street", datetime(2026, 11, 24, 15, 0, tzinfo=UTC), [*people, Detection("dog", 0.9, BOX)])
    )
    assert dict((f.name, f.points) for f in result.factors) == {"person_seen": 36, "animal_seen": 4, "group": 15}
    assert result.objects == {"person": 10, "dog": 1}
    assert result.summary == "10 people and 1 dog at Street at 15:00"


def test_levels_follow_configured_thresholds() -> None:
    levels = LevelThresholds(medium=30, high=60, critical=85)
    assert [levels.level(s) for s in (0, 29, 30, 59, 60, 84, 85, 100)] == [
        "low",
        "low",
        "medium",
        "medium",
        "high",
        "high",
        "critical",
        "critical",
    ]
