"""The rules engine is deterministic and explains every point it gives."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from inference_server.domain import Assessment, Detection, Observation
from inference_server.pipeline.zones import contains, zones_of
from inference_server.reasoning.backends.base import LlmReply
from inference_server.reasoning.llm import LlmReasoner
from inference_server.reasoning.prompts import ChatMessage
from inference_server.reasoning.reasoner import LevelThresholds
from inference_server.reasoning.rules import RulesReasoner
from inference_server.schemas import HouseholdContext, Zone

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


# --- issue 16: judgement defects -------------------------------------------------------------

FULL_FRAME = Zone(name="yard", polygon=[(0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (0.0, 1.0)], sensitivity="high")
STREET = Zone(name="street", polygon=[(0.0, 0.0), (1.0, 0.0), (1.0, 0.5), (0.0, 0.5)], sensitivity="low")
NIGHT = datetime(2026, 11, 24, 2, 10, tzinfo=UTC)
NOON = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


def _assess(
    when: datetime,
    detections: list[Detection],
    context: HouseholdContext | None = None,
    zones: list[Zone] | None = None,
) -> Assessment:
    zones = zones or []
    return RulesReasoner(LevelThresholds()).assess_now(
        Observation(
            "cam",
            "Back Door",
            when,
            detections,
            [zones_of(d, zones) for d in detections],
            zones,
            context=context,
        )
    )


def test_a_box_touching_the_bottom_edge_stands_in_a_full_frame_zone() -> None:
    touching = Detection("person", 0.9, (0.3, 0.2, 0.6, 1.0))
    assert zones_of(touching, [FULL_FRAME]) == ("yard",)
    assert contains(FULL_FRAME.polygon, 0.0, 0.0) and contains(FULL_FRAME.polygon, 1.0, 0.5)
    assert not contains(FULL_FRAME.polygon, 0.5, 1.0 + 1e-6)
    result = _assess(NOON, [touching], zones=[FULL_FRAME])
    assert ("zone_high", 15) in [(f.name, f.points) for f in result.factors]


def test_a_clamped_score_shows_the_clamp_as_a_factor() -> None:
    context = HouseholdContext(alarm_state="triggered", people_home=[], open_entries=["back door"], sun="below_horizon")
    result = _assess(NIGHT, [Detection("person", 0.95, BOX)] * 3, context)
    # 43 + 10 group + 20 night + 40 triggered + 15 nobody home + 10 open = 138 → capped at 100.
    assert result.risk_score == 100
    assert result.factors[-1].name == "cap" and result.factors[-1].points == -38
    assert "138" in result.factors[-1].detail
    assert sum(f.points for f in result.factors) == result.risk_score

    calm = HouseholdContext(alarm_state="disarmed", people_home=["Alex"], sun="above_horizon")
    zones = [STREET]
    low = RulesReasoner(LevelThresholds()).assess_now(
        Observation(
            "cam",
            "Street",
            NOON,
            [Detection("cat", 0.5, BOX)],
            [("street",)],
            zones,
            context=calm,
            baseline={"cat": 5.0},
        )
    )
    # 2 cat + −15 disarmed − 15 low zone − 10 usual = −38 → floored at 0.
    assert low.risk_score == 0
    assert (low.factors[-1].name, low.factors[-1].points) == ("floor", 38)
    assert sum(f.points for f in low.factors) == low.risk_score


def test_disarmed_with_nobody_home_does_not_lower_the_score() -> None:
    forgot = HouseholdContext(alarm_state="disarmed", people_home=[], sun="below_horizon")
    result = _assess(NIGHT, [Detection("person", 0.9, BOX)], forgot)
    factors = {f.name: f for f in result.factors}
    assert factors["alarm_disarmed"].points == 0
    assert "nobody is home" in factors["alarm_disarmed"].detail
    assert result.risk_score == 40 + 20 + 15  # person, night, nobody home
    assert result.risk_level == "high"
    # With someone home, disarmed still lowers the score.
    home = _assess(NIGHT, [Detection("person", 0.9, BOX)], forgot.model_copy(update={"people_home": ["Alex"]}))
    assert {f.name: f.points for f in home.factors}["alarm_disarmed"] == -15


def test_nobody_home_does_not_count_for_a_passer_by_in_a_low_sensitivity_zone() -> None:
    away = HouseholdContext(alarm_state="unknown", people_home=[])
    passer_by = Detection("person", 0.9, (0.4, 0.1, 0.5, 0.4))  # feet at y=0.4: the street
    result = _assess(NOON, [passer_by], away, [STREET])
    names = [f.name for f in result.factors]
    assert "zone_low" in names and "nobody_home" not in names
    # The same person outside any low zone (no zones configured) does count it.
    assert "nobody_home" in [f.name for f in _assess(NOON, [passer_by], away).factors]


def test_the_clock_wins_when_the_sun_state_contradicts_it() -> None:
    stale_day = HouseholdContext(alarm_state="armed_away", people_home=[], sun="above_horizon")
    result = _assess(NIGHT, [Detection("person", 0.9, BOX)], stale_day)
    night = {f.name: f for f in result.factors}["night"]
    assert night.points == 20
    assert night.detail == "at night (02:10; the context's sun state disagrees, trusting the clock)"
    assert result.risk_score == 40 + 20 + 25 + 15
    assert result.summary.startswith("1 person at Back Door at 02:10 (night)")

    stale_night = stale_day.model_copy(update={"sun": "below_horizon"})
    noon = _assess(NOON, [Detection("person", 0.9, BOX)], stale_night)
    names = {f.name: f for f in noon.factors}
    assert "night" not in names and names["daytime"].points == 0
    assert "trusting the clock" in names["daytime"].detail
    assert "(night)" not in noon.summary

    # Within the plausible range the sun state is believed: below the horizon at 19:00 is night.
    evening = _assess(datetime(2026, 11, 24, 19, 0, tzinfo=UTC), [Detection("person", 0.9, BOX)], stale_night)
    assert {f.name: f.detail for f in evening.factors}["night"] == "after dark (19:00, sun below the horizon)"


class FakeLanguageModel:
    """FAKE LLM backend (no language model can run in a unit test): always answers ``answer``."""

    name = "fake"
    model = "fake-llm"

    def __init__(self, answer: dict[str, Any]) -> None:
        self.answer = answer

    async def start(self) -> None:
        return None

    async def complete(self, messages: Sequence[ChatMessage], schema: Mapping[str, Any]) -> LlmReply:
        return LlmReply(text=json.dumps(self.answer), seconds=0.01)

    async def close(self) -> None:
        return None


async def test_the_llm_adjustment_starts_from_the_clamped_rules_score() -> None:
    context = HouseholdContext(alarm_state="triggered", people_home=[], open_entries=["back door"], sun="below_horizon")
    obs = Observation("cam", "Back Door", NIGHT, [Detection("person", 0.95, BOX)] * 3, context=context)
    rules = RulesReasoner(LevelThresholds()).assess_now(obs)
    answer = {
        "reasoning": "Three people at the back door at night while the alarm is triggered.",
        "factors": [],
        "risk_score": 100,
        "risk_level": "critical",
        "summary": "3 people at the back door at night, alarm triggered",
    }
    result = await LlmReasoner(FakeLanguageModel(answer), LevelThresholds()).refine(obs, rules)

    assert result.analysis_source == "llm"
    assert result.risk_score == 100
    points = {f.name: f.points for f in result.factors}
    assert points["cap"] == -38 and points["llm_adjustment"] == 0  # the LLM kept the rules' 100
    assert sum(points.values()) == result.risk_score
