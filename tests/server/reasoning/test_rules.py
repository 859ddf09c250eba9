"""The rules engine is deterministic and explains every point it gives."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from inference_server.domain import Assessment, Detection, FeedbackCounts, Observation
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
    # Evidence 45 × 0.92 = 41.4 → 41; night weighs 25 for a certain person (45): 25 × 41 / 45 → 23.
    assert result.risk_score == 64
    assert result.risk_level == "high"
    assert [(f.name, f.points) for f in result.factors] == [("person_seen", 41), ("night", 23)]
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
    assert ("zone_high", 13) in [(f.name, f.points) for f in result.factors]  # 15 × 40 / 45


def test_a_clamped_score_shows_the_clamp_as_a_factor() -> None:
    context = HouseholdContext(alarm_state="triggered", people_home=[], open_entries=["back door"], sun="below_horizon")
    result = _assess(NIGHT, [Detection("person", 0.95, BOX)] * 3, context)
    # Evidence 43 + 10 group = 53, × (1 + (25 night + 40 triggered + 15 nobody home + 10 open) / 45):
    # 53 + 29 + 47 + 18 + 12 = 159 → capped at 100.
    assert result.risk_score == 100
    assert result.factors[-1].name == "cap" and result.factors[-1].points == -59
    assert "159" in result.factors[-1].detail
    assert sum(f.points for f in result.factors) == result.risk_score

    calm = HouseholdContext(alarm_state="disarmed", people_home=["Alex"], sun="above_horizon")
    zones = [STREET]
    low = RulesReasoner(LevelThresholds()).assess_now(
        Observation(
            "cam",
            "Street",
            NOON,
            [Detection("person", 0.9, BOX)],
            [("street",)],
            zones,
            context=calm,
            baseline={"person": 5.0},
        )
    )
    # 40 × (1 + (−15 disarmed − 20 people home − 25 low zone − 10 usual) / 45) = 40 − 13 − 18 − 22 − 9 = −22.
    assert low.risk_score == 0
    assert (low.factors[-1].name, low.factors[-1].points) == ("floor", 22)
    assert sum(f.points for f in low.factors) == low.risk_score


def test_disarmed_with_nobody_home_does_not_lower_the_score() -> None:
    forgot = HouseholdContext(alarm_state="disarmed", people_home=[], sun="below_horizon")
    result = _assess(NIGHT, [Detection("person", 0.9, BOX)], forgot)
    factors = {f.name: f for f in result.factors}
    assert factors["alarm_disarmed"].points == 0
    assert "nobody is home" in factors["alarm_disarmed"].detail
    assert result.risk_score == 40 + 22 + 13  # person, night (25 × 40 / 45), nobody home (15 × 40 / 45)
    assert result.risk_level == "high"
    # With someone home, disarmed still lowers the score.
    home = _assess(NIGHT, [Detection("person", 0.9, BOX)], forgot.model_copy(update={"people_home": ["Alex"]}))
    assert {f.name: f.points for f in home.factors}["alarm_disarmed"] == -13  # −15 × 40 / 45


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
    assert night.points == 22  # 25 × 40 / 45
    assert night.detail == "at night (02:10; the context's sun state disagrees, trusting the clock)"
    # 40 + 22 + 22 + 13 = 97, but one image is not corroboration enough for critical.
    assert result.risk_score == 84 and result.factors[-1].name == "cap"
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


# --- issue 16: evidence × context ------------------------------------------------------------

AWAY = HouseholdContext(alarm_state="armed_away", people_home=[], sun="below_horizon")
EVENING = datetime(2026, 11, 24, 19, 0, tzinfo=UTC)


def _batch(
    when: datetime,
    detections: list[Detection],
    context: HouseholdContext | None,
    *,
    frames: int,
    dwell_s: float = 0.0,
    zones: list[Zone] | None = None,
    recent_visits: int = 0,
    baseline: dict[str, float] | None = None,
    feedback: FeedbackCounts | None = None,
) -> Assessment:
    """A whole batch: ``frames`` images, each showing ``detections``."""
    zones = zones or []
    return RulesReasoner(LevelThresholds()).assess_now(
        Observation(
            "cam",
            "Back Door",
            when,
            detections * frames,
            [zones_of(d, zones) for d in detections] * frames,
            zones,
            context=context,
            max_counts=dict(Counter(d.label for d in detections)),
            frames=frames,
            first_seen=when - timedelta(seconds=dwell_s),
            last_seen=when,
            recent_visits=recent_visits,
            baseline=baseline,
            feedback=feedback,
        )
    )


def test_context_alone_cannot_make_a_doubtful_detection_an_alert() -> None:
    """The cat yolo11n-pose calls a person at 0.62, at night, armed away, nobody home, in a
    sensitive zone, scored critical 100: the context added 75 points to a doubtful sighting."""
    cat = _assess(NIGHT, [Detection("person", 0.62, BOX)], AWAY, [FULL_FRAME])
    points = {f.name: f.points for f in cat.factors}
    assert cat.risk_level == "medium" and cat.risk_score == 59
    # Context multiplies the evidence (28): each factor gives its weight × 28 / 45.
    assert points["person_seen"] == 28
    assert (points["night"], points["alarm_armed_away"], points["nobody_home"], points["zone_high"]) == (16, 16, 9, 9)
    assert points["cap"] == 59 - 78 and "single doubtful sighting (0.62)" in cat.factors[-1].detail
    assert sum(points.values()) == cat.risk_score
    assert cat.summary.endswith("(a single doubtful sighting)")
    # Nor is 0.67 (what yolo11n-pose makes of a retina photograph) on its own, nor the detector's minimum.
    assert _assess(NIGHT, [Detection("person", 0.67, BOX)], AWAY, [FULL_FRAME]).risk_level == "medium"
    assert _assess(NIGHT, [Detection("person", 0.40, BOX)], AWAY, [FULL_FRAME]).risk_level == "medium"
    # The same doubtful sighting over several images is corroborated once: high at most, never critical.
    lingering = _batch(NIGHT, [Detection("person", 0.62, BOX)], AWAY, frames=5, dwell_s=120, zones=[FULL_FRAME])
    assert lingering.risk_level == "high" and "critical needs two signals" in lingering.factors[-1].detail


def test_real_threats_stay_high_and_corroborated_ones_are_critical() -> None:
    zidane = [Detection("person", 0.89, BOX), Detection("person", 0.84, BOX)]
    one_image = _assess(NIGHT, zidane, AWAY)
    assert one_image.risk_level == "high" and one_image.risk_score == 84  # 97, capped: one image
    astronaut = _assess(NIGHT, [Detection("person", 0.90, BOX)], AWAY, [FULL_FRAME])
    assert astronaut.risk_level == "high"
    assert astronaut.summary == (
        "1 person at Back Door at 02:10 (night) — alarm armed away, nobody home, in a sensitive zone"
        " (not corroborated enough for critical)"
    )
    # Corroboration: several images, or an open entry, lifts the cap.
    assert _batch(NIGHT, zidane, AWAY, frames=3).risk_level == "critical"
    door = AWAY.model_copy(update={"open_entries": ["back door"]})
    assert _assess(NIGHT, [Detection("person", 0.90, BOX)], door).risk_level == "critical"
    # A resident at noon, alarm disarmed, the family home: low.
    family = HouseholdContext(alarm_state="disarmed", people_home=["anna", "ben"], sun="above_horizon")
    assert _assess(NOON, [Detection("person", 0.90, BOX)], family).risk_level == "low"


def test_a_household_at_home_in_the_evening_is_not_paged() -> None:
    """A person at the front door at 19:00 in November, armed home, 3 people home: was high 70;
    milling about (the third visit and on) added +10 more."""
    home = HouseholdContext(alarm_state="armed_home", people_home=["anna", "ben", "cleo"], sun="below_horizon")
    resident = _assess(EVENING, [Detection("person", 0.90, BOX)], home)
    assert resident.risk_level == "medium"
    assert {f.name: f.points for f in resident.factors}["people_home"] == -18
    milling = _batch(EVENING, [Detection("person", 0.90, BOX)], home, frames=4, dwell_s=300, recent_visits=8)
    points = {f.name: f.points for f in milling.factors}
    assert points["repeat_visit"] == 0 and "people are home" in milling.reasoning
    assert milling.risk_level == "medium" and sum(points.values()) == milling.risk_score
    in_zone = _batch(
        EVENING, [Detection("person", 0.95, BOX)], home, frames=4, dwell_s=300, zones=[FULL_FRAME], recent_visits=8
    )
    assert in_zone.risk_level == "medium" and in_zone.factors[-1].name == "cap"
    assert in_zone.summary.endswith("(household at home)")
    # Late in the evening too: two people in the garden at 22:30, armed home, family home.
    late = _assess(datetime(2026, 11, 24, 22, 30, tzinfo=UTC), [Detection("person", 0.89, BOX)] * 2, home)
    assert late.risk_level == "medium"
    # After midnight the household is asleep: an open back door at 02:10 with a person outside is high.
    asleep = home.model_copy(update={"open_entries": ["back door"]})
    assert _assess(NIGHT, [Detection("person", 0.88, BOX)], asleep).risk_level == "high"
    # A triggered alarm is not a household at home.
    triggered = home.model_copy(update={"alarm_state": "triggered", "open_entries": ["back door"]})
    assert _assess(EVENING, [Detection("person", 0.88, BOX)], triggered).risk_level == "critical"


def test_the_street_and_a_daytime_caller_do_not_page_an_empty_house() -> None:
    """The alarm guards the house, not the street; by day an unarmed empty house gets callers."""
    passers_by = [Detection("person", 0.9, (0.1, 0.1, 0.4, 0.4))] * 4  # feet at y = 0.4: the street
    street = _assess(datetime(2026, 11, 24, 21, 0, tzinfo=UTC), passers_by, AWAY, [STREET])
    points = {f.name: f.points for f in street.factors}
    assert points["alarm_armed_away"] == 0 and "nobody_home" not in points
    assert street.risk_level == "medium"
    courier = _batch(
        NOON,
        [Detection("person", 0.91, BOX)],
        HouseholdContext(alarm_state="disarmed", people_home=[], sun="above_horizon"),
        frames=2,
        zones=[FULL_FRAME],
    )
    assert {f.name: f.points for f in courier.factors}["nobody_home"] == 0
    assert courier.risk_level == "medium"
    # Armed, the same caller is a threat (confident and seen twice: corroborated).
    armed = HouseholdContext(alarm_state="armed_away", people_home=[], sun="above_horizon")
    threat = _batch(NOON, [Detection("person", 0.91, BOX)], armed, frames=2, zones=[FULL_FRAME])
    assert threat.risk_level == "critical"


def test_summaries_say_why() -> None:
    """A critical 85 read "1 person at … at 23:50 (night)": nothing said why."""
    door = AWAY.model_copy(update={"open_entries": ["back door"]})
    result = _batch(datetime(2026, 11, 24, 23, 50, tzinfo=UTC), [Detection("person", 0.88, BOX)], door, frames=2)
    assert result.risk_level == "critical"
    assert result.summary == "1 person at Back Door at 23:50 (night) — alarm armed away, nobody home, back door open"
    # Low activity needs no reasons.
    family = HouseholdContext(alarm_state="disarmed", people_home=["anna"], sun="above_horizon")
    assert _assess(NOON, [Detection("person", 0.9, BOX)], family).summary == "1 person at Back Door at 12:00"


def test_batch_headroom_bounds_what_the_whole_batch_can_add() -> None:
    """The batch stage judges a batch early only when the glance plus the headroom could reach the
    alert level: the headroom must bound every batch that could follow the glance."""
    rules = RulesReasoner(LevelThresholds())
    home = HouseholdContext(alarm_state="armed_home", people_home=["anna"], sun="below_horizon")
    forgot = HouseholdContext(alarm_state="disarmed", people_home=[], sun="below_horizon")
    contexts = [None, AWAY, home, forgot, AWAY.model_copy(update={"open_entries": ["back door"]})]
    street_box = (0.1, 0.1, 0.4, 0.4)  # feet at y = 0.4: in the street
    glances = [
        ([Detection("person", 0.41, BOX)], [FULL_FRAME]),
        ([Detection("person", 0.62, BOX), Detection("dog", 0.5, BOX)], []),
        ([Detection("person", 0.85, street_box)], [STREET]),
        ([Detection("car", 0.5, BOX)], [STREET]),
        ([Detection("dog", 0.9, BOX)], []),
    ]
    for when in (NIGHT, EVENING, NOON):
        for ctx in contexts:
            for glance_dets, glance_zones in glances:
                glance = _assess(when, glance_dets, ctx, glance_zones)
                # The worst batch that can follow: certain detections, a full group, many images,
                # a long dwell, in a sensitive zone, and every history factor at its highest.
                surer = [Detection(d.label, 1.0, BOX) for d in glance_dets]
                if surer[0].label == "person":
                    surer += [Detection("person", 1.0, BOX)] * 3
                batch = _batch(
                    when,
                    surer,
                    ctx,
                    frames=6,
                    dwell_s=600,
                    zones=[FULL_FRAME],
                    recent_visits=5,
                    baseline={"person": 0.0, "dog": 0.0, "car": 0.0},
                    feedback=FeedbackCounts(missed_threat=3),
                )
                headroom = rules.batch_headroom(glance)
                assert batch.risk_score <= glance.risk_score + headroom, (when, ctx, glance_dets, headroom)
    # A household at home and awake stays medium however the batch grows: no early judgement needed.
    resident = _assess(EVENING, [Detection("person", 0.9, BOX)], home)
    assert resident.risk_score + rules.batch_headroom(resident) < LevelThresholds().high


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
    assert points["cap"] == -59 and points["llm_adjustment"] == 0  # the LLM kept the rules' 100
    assert sum(points.values()) == result.risk_score


def test_a_context_set_after_the_capture_is_a_labelled_fallback() -> None:
    """An image older than every kept context is judged with the current one (store.context
    .for_capture): the factors say so, with 0 points, and the score is the same judgement."""
    ctx = HouseholdContext(alarm_state="armed_away", people_home=[], sun="below_horizon")
    at = datetime(2026, 11, 24, 2, 10, tzinfo=UTC)
    seen = [Detection("person", 0.9, BOX)]
    rules = RulesReasoner(LevelThresholds())
    known = rules.assess_now(Observation("cam", "Back Door", at, seen, context=ctx))
    late = rules.assess_now(
        Observation("cam", "Back Door", at, seen, context=ctx, context_set_late=at + timedelta(days=40))
    )
    fallback = [(f.points, f.detail) for f in late.factors if f.name == "context_fallback"]
    assert fallback == [(0, "no household context known at 02:10: judged with the one set 2027-01-03 02:10")]
    assert not any(f.name == "context_fallback" for f in known.factors)
    assert late.risk_score == known.risk_score and "context_fallback" not in late.summary
