"""Deterministic, explainable rules engine: always available, the first phase of every alert
and the labelled fallback when the LLM is down, slow or wrong.

Every factor that moves the score is listed with its points, and the score is their sum
clamped to 0..100; a clamp is itself a factor (``cap`` or ``floor``), so the points always add
up to the score. The weights are the table ``WEIGHTS`` (documented in docs/risk.md).
A factor is only given when its input is known: no context, no context factors.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from inference_server.domain import Assessment, Detection, Observation
from inference_server.reasoning.reasoner import LevelThresholds
from inference_server.schemas import Category, RiskFactor, Zone

MODEL_NAME = "rules-v2"

#: Points per factor. Class points are scaled by the best detection's confidence.
WEIGHTS: dict[str, int] = {
    "person": 45,
    "vehicle": 20,
    "animal": 5,
    "object": 10,
    "each_extra_person": 5,
    "extra_person_cap": 15,
    "night": 20,
    "alarm_triggered": 40,
    "alarm_armed_away": 25,
    "alarm_armed_night": 20,
    "alarm_armed_home": 10,
    "alarm_disarmed": -15,
    "nobody_home": 15,
    "zone_high": 15,
    "zone_low": -15,
    "entry_open": 10,
    "dwell": 10,
    "unusual_hour": 10,
    "usual_hour": -10,
    "repeat_visit": 10,
    "feedback_missed_threat": 10,
    "feedback_correct": 3,
    "feedback_false_alarm": -5,
    "feedback_cap": 15,
}
NIGHT_START_HOUR = 22
NIGHT_END_HOUR = 6
#: Hours (camera time, [start, end)) in which the context's sun state is not believed when it
#: contradicts the clock: a stale "above horizon" at 02:10 or "below horizon" at noon. Near and
#: beyond the polar circles the clock wins in these hours too: 02:00 is night for a household
#: under the midnight sun.
DEEP_NIGHT_HOURS = (0, 4)
MIDDAY_HOURS = (10, 14)
DWELL_S = 60
#: Below this many images per hour at this hour of day a class is "unusual"; at or above USUAL, "usual".
UNUSUAL_RATE = 0.2
USUAL_RATE = 3.0
_ALARM = {
    "triggered": "alarm_triggered",
    "armed_away": "alarm_armed_away",
    "armed_vacation": "alarm_armed_away",
    "armed_night": "alarm_armed_night",
    "armed_home": "alarm_armed_home",
    "armed_custom_bypass": "alarm_armed_home",
    "disarmed": "alarm_disarmed",
}
_CATEGORY_ORDER: tuple[Category, ...] = ("person", "vehicle", "object", "animal")


def _plural(label: str, n: int) -> str:
    if n == 1:
        return label
    return "people" if label == "person" else f"{label}s"


def _factor(name: str, detail: str, points: int | None = None) -> RiskFactor:
    return RiskFactor(name=name, points=WEIGHTS[name] if points is None else points, detail=detail)


class RulesReasoner:
    name = "rules"

    def __init__(self, thresholds: LevelThresholds) -> None:
        self.thresholds = thresholds

    async def assess(self, observation: Observation) -> Assessment:
        return self.assess_now(observation)

    def assess_now(self, obs: Observation) -> Assessment:
        detections = list(obs.detections)
        clock = obs.captured_at.strftime("%H:%M")
        objects = dict(obs.max_counts) if obs.max_counts is not None else dict(Counter(d.label for d in detections))
        factors: list[RiskFactor] = []

        best: dict[Category, Detection] = {}
        for det in detections:
            if det.category not in best or det.confidence > best[det.category].confidence:
                best[det.category] = det
        for category in _CATEGORY_ORDER:
            if category in best:
                det = best[category]
                factors.append(
                    _factor(
                        f"{category}_seen",
                        f"{det.label} seen, confidence {det.confidence:.2f}",
                        round(WEIGHTS[category] * det.confidence),
                    )
                )
        persons = objects.get("person", 0)
        if persons > 1:
            points = min(WEIGHTS["each_extra_person"] * (persons - 1), WEIGHTS["extra_person_cap"])
            factors.append(_factor("group", f"{persons} people together", points))
        if detections:
            top_zones = self._top_zones(obs, detections, best)
            only_low = bool(top_zones) and all(z.sensitivity == "low" for z in top_zones)
            factors += self._context_factors(obs, clock, has_person="person" in best, only_low=only_low)
            factors += self._place_factors(obs, top_zones)
            factors += self._history_factors(obs, best)

        total = sum(f.points for f in factors)
        score = max(0, min(100, total))
        if total > 100:
            factors.append(_factor("cap", f"score capped at 100 (the factors add up to {total})", 100 - total))
        elif total < 0:
            factors.append(_factor("floor", f"score floored at 0 (the factors add up to {total})", -total))
        level = self.thresholds.level(score)
        summary = self._summary(obs, objects, clock, night=any(f.name == "night" for f in factors))
        reasoning = "; ".join(f"{f.detail} ({f.points:+d})" for f in factors) or "no factors"
        return Assessment(
            risk_score=score,
            risk_level=level,
            summary=summary,
            reasoning=f"rules {MODEL_NAME}: {reasoning} → score {score}, {level}",
            factors=factors,
            analysis_source="rules",
            model=MODEL_NAME,
            objects=objects,
        )

    def batch_headroom(self, glance: Assessment) -> int:
        """The most points that judging the whole batch could add to a one-image ``glance``: the
        factors only a batch has (dwell, unusual hour, repeat visit, feedback), the rest of the
        group points, and the class points a more confident frame would still add. The batch stage
        judges the batch at once only when the glance plus this could reach the alert level."""
        got = {f.name: f.points for f in glance.factors}
        batch_only = sum(WEIGHTS[name] for name in ("dwell", "unusual_hour", "repeat_visit", "feedback_cap"))
        group = WEIGHTS["extra_person_cap"] - max(0, got.get("group", 0))
        surer = max(
            (WEIGHTS[c] - got[f"{c}_seen"] for c in _CATEGORY_ORDER if f"{c}_seen" in got),
            default=0,
        )
        return batch_only + group + max(0, surer)

    # --- factor groups -----------------------------------------------------------------------
    def _context_factors(self, obs: Observation, clock: str, *, has_person: bool, only_low: bool) -> list[RiskFactor]:
        out: list[RiskFactor] = []
        ctx = obs.context
        hour = obs.captured_at.hour
        clock_night = hour >= NIGHT_START_HOUR or hour < NIGHT_END_HOUR
        if ctx is not None and ctx.sun is not None:
            stale = (ctx.sun == "above_horizon" and DEEP_NIGHT_HOURS[0] <= hour < DEEP_NIGHT_HOURS[1]) or (
                ctx.sun == "below_horizon" and MIDDAY_HOURS[0] <= hour < MIDDAY_HOURS[1]
            )
            disagrees = "the context's sun state disagrees, trusting the clock"
            if stale and clock_night:
                out.append(_factor("night", f"at night ({clock}; {disagrees})"))
            elif stale:
                out.append(_factor("daytime", f"daytime ({clock}; {disagrees})", 0))
            elif ctx.sun == "below_horizon":
                out.append(_factor("night", f"after dark ({clock}, sun below the horizon)"))
        elif clock_night:
            out.append(_factor("night", f"at night ({clock})"))
        if ctx is None:
            return out
        nobody_home = ctx.people_home is not None and not ctx.people_home
        alarm_factor = _ALARM.get(ctx.alarm_state)
        if alarm_factor == "alarm_disarmed" and nobody_home:
            # "Forgot to arm": a disarmed alarm says nothing reassuring when nobody is home.
            out.append(_factor(alarm_factor, "alarm disarmed but nobody is home: not counted", 0))
        elif alarm_factor is not None:
            out.append(_factor(alarm_factor, f"alarm {ctx.alarm_state.replace('_', ' ')}"))
        # A passer-by seen only in low-sensitivity zones (the street) is no sign of an empty house.
        if has_person and nobody_home and not only_low:
            out.append(_factor("nobody_home", "nobody is home"))
        if has_person and ctx.open_entries:
            out.append(_factor("entry_open", f"open: {', '.join(ctx.open_entries[:3])}"))
        return out

    @staticmethod
    def _top_zones(obs: Observation, detections: Sequence[Detection], best: dict[Category, Detection]) -> list[Zone]:
        """The known zones the top class's detections stand in, by name."""
        if not (obs.zones and obs.detection_zones):
            return []
        top = next(c for c in _CATEGORY_ORDER if c in best)
        by_name: dict[str, Zone] = {z.name: z for z in obs.zones}
        seen = {
            name
            for det, names in zip(detections, obs.detection_zones, strict=False)
            if det.category == top
            for name in names
            if name in by_name
        }
        return [by_name[n] for n in sorted(seen)]

    def _place_factors(self, obs: Observation, top_zones: Sequence[Zone]) -> list[RiskFactor]:
        out: list[RiskFactor] = []
        high = [z.name for z in top_zones if z.sensitivity == "high"]
        if high:
            out.append(_factor("zone_high", f"in sensitive zone {', '.join(high)}"))
        elif top_zones and all(z.sensitivity == "low" for z in top_zones):
            names = ", ".join(z.name for z in top_zones)
            out.append(_factor("zone_low", f"only in low-sensitivity zone {names}"))
        if obs.first_seen is not None and obs.last_seen is not None:
            dwell = (obs.last_seen - obs.first_seen).total_seconds()
            if dwell >= DWELL_S:
                out.append(_factor("dwell", f"present for {dwell:.0f} s"))
        return out

    def _history_factors(self, obs: Observation, best: dict[Category, Detection]) -> list[RiskFactor]:
        out: list[RiskFactor] = []
        top = best[next(c for c in _CATEGORY_ORDER if c in best)]
        hour = obs.captured_at.strftime("%H:00")
        if obs.baseline is not None:
            rate = obs.baseline.get(top.label, 0.0)
            if rate < UNUSUAL_RATE:
                out.append(_factor("unusual_hour", f"{top.label} unusual here at {hour} (usually {rate:.1f}/h)"))
            elif rate >= USUAL_RATE:
                out.append(_factor("usual_hour", f"{top.label} usual here at {hour} ({rate:.1f}/h)"))
        if "person" in best and obs.recent_visits >= 2:
            out.append(_factor("repeat_visit", f"visit number {obs.recent_visits + 1} within the hour"))
        fb = obs.feedback
        if fb is not None and (fb.false_alarm or fb.correct or fb.missed_threat):
            raw = (
                WEIGHTS["feedback_missed_threat"] * fb.missed_threat
                + WEIGHTS["feedback_correct"] * fb.correct
                + WEIGHTS["feedback_false_alarm"] * fb.false_alarm
            )
            cap = WEIGHTS["feedback_cap"]
            points = max(-cap, min(cap, raw))
            if points:
                detail = (
                    f"feedback on similar events: {fb.false_alarm} false alarm(s), {fb.correct} correct, "
                    f"{fb.missed_threat} missed threat(s)"
                )
                out.append(RiskFactor(name="feedback", points=points, detail=detail))
        return out

    @staticmethod
    def _summary(obs: Observation, objects: dict[str, int], clock: str, *, night: bool) -> str:
        if not objects:
            return f"nothing of note at {obs.camera_name} at {clock}"
        parts = [f"{n} {_plural(label, n)}" for label, n in sorted(objects.items(), key=lambda kv: -kv[1])]
        summary = f"{' and '.join(parts)} at {obs.camera_name} at {clock}"
        if night:
            summary += " (night)"
        ctx = obs.context
        if ctx is not None and ctx.alarm_state not in ("unknown", "disarmed"):
            summary += f", alarm {ctx.alarm_state.replace('_', ' ')}"
        return summary
