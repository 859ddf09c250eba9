"""Deterministic, explainable rules engine: always available, the first phase of every alert
and the labelled fallback when the LLM is down, slow or wrong.

The score is **evidence × context** (docs/risk.md, "Rules engine"). The evidence is what was
seen: the class scaled by the detector's confidence, the group, and its corroboration (several
images, dwell). The context (night, alarm, who is home, zone, hour, history, feedback) multiplies
that evidence: each context factor's weight is its points for one certain person (evidence 45)
and it gives ``weight × evidence / 45`` points, so context can never turn a doubtful detection
into an alert on its own. Weak evidence also caps the level (``_ceiling``): critical needs
two signals of a real activity, high needs one or a detection of at least ``DOUBTFUL``; and a
household at home and awake is not paged (medium at most).

Every factor is listed with its points and the score is their sum; a clamp (0..100 or a level
cap) is itself a factor (``cap`` or ``floor``), so the points always add up to the score.
A factor is only given when its input is known: no context, no context factors.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from datetime import datetime, timedelta

from inference_server.domain import Assessment, Detection, Identity, Observation
from inference_server.reasoning.reasoner import LevelThresholds
from inference_server.schemas import Category, HouseholdContext, RiskFactor, RiskLevel, Zone

MODEL_NAME = "rules-v3"

#: Evidence points. Class points are scaled by the best detection's confidence.
EVIDENCE: dict[str, int] = {
    "person": 45,
    "vehicle": 20,
    "animal": 5,
    "object": 10,
    "each_extra_person": 5,
    "extra_person_cap": 15,
}
#: ``frames`` (the top class in two or more images) and ``dwell`` (a minute or more) each close
#: this share of what the top class's points still lack to a certain detection's.
CORROBORATION = 0.5
#: Context weights: the points each factor gives to one certain person (evidence ``REFERENCE``);
#: a factor gives ``weight × evidence / REFERENCE``.
WEIGHTS: dict[str, int] = {
    "night": 25,
    "alarm_triggered": 40,
    "alarm_armed_away": 25,
    "alarm_armed_night": 20,
    "alarm_armed_home": 10,
    "alarm_disarmed": -15,
    "nobody_home": 15,
    "people_home": -20,
    "zone_high": 15,
    "zone_low": -25,
    "entry_open": 10,
    "unusual_hour": 10,
    "usual_hour": -10,
    "repeat_visit": 10,
    "feedback_missed_threat": 10,
    "feedback_correct": 3,
    "feedback_false_alarm": -5,
    "feedback_cap": 15,
    # Known people (issue 18): an enrolled person recognised; more so when the context says they
    # are home (or arriving: a person entity of theirs is home). An unfamiliar face raises, and
    # only where the household enrolled someone (else everyone is "unfamiliar").
    "known_person": -30,
    "known_person_home": -45,
    "unfamiliar_person": 20,
    # The same unfamiliar face seen on an earlier visit within the stranger window (a stranger
    # id, pipeline/identify.py): someone coming back. Small: a neighbour or courier returns too.
    "returned_stranger": 10,
}
REFERENCE = 45
#: A detection at least this confident is a signal of its own ("confident").
CONFIDENT = 0.80
#: A single sighting below this confidence, with no other signal, stays at medium at most.
DOUBTFUL = 0.70
NIGHT_START_HOUR = 22
NIGHT_END_HOUR = 6
#: Hours (camera time, [start, end)) in which a household at home is taken to be awake.
AWAKE_HOURS = (6, 24)
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
#: Alarm states in which a household at home, awake (06:00–22:00), is not paged by the rules.
_AT_HOME_STATES = frozenset({"disarmed", "armed_home", "armed_custom_bypass", "unknown"})
_CATEGORY_ORDER: tuple[Category, ...] = ("person", "vehicle", "object", "animal")
_EVIDENCE_FACTORS = frozenset({"person_seen", "vehicle_seen", "object_seen", "animal_seen", "group", "frames", "dwell"})
#: Negative factors that only the household and the clock decide, which a batch shares with its
#: latest glance (the others, zone and hour, may differ for the batch's other images).
_CONTEXT_ONLY = frozenset({"alarm_disarmed", "people_home"})
#: Factors only a whole batch has (a one-image glance never does).
_BATCH_ONLY = ("unusual_hour", "repeat_visit", "feedback_cap")
#: How a factor reads in a summary's "why" (the detail says more).
_REASONS: dict[str, str] = {
    "alarm_triggered": "alarm triggered",
    "alarm_armed_away": "alarm armed away",
    "alarm_armed_night": "alarm armed night",
    "alarm_armed_home": "alarm armed home",
    "nobody_home": "nobody home",
    "zone_high": "in a sensitive zone",
    "unusual_hour": "unusual hour",
    "repeat_visit": "repeat visit",
    "feedback": "similar events confirmed",
    "frames": "seen repeatedly",
    "dwell": "lingering",
    "unfamiliar_person": "an unfamiliar face",
    "returned_stranger": "a returning stranger",
}


def _plural(label: str, n: int) -> str:
    if n == 1:
        return label
    return "people" if label == "person" else f"{label}s"


class _Context:
    """Context factors: each weighs ``weight × evidence / REFERENCE`` points."""

    def __init__(self, evidence: int) -> None:
        self.evidence = evidence
        self.factors: list[RiskFactor] = []

    def add(self, name: str, detail: str, weight: int | None = None) -> None:
        w = WEIGHTS[name] if weight is None else weight
        self.factors.append(RiskFactor(name=name, points=round(w * self.evidence / REFERENCE), detail=detail))


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

        best: dict[Category, Detection] = {}
        for det in detections:
            if det.category not in best or det.confidence > best[det.category].confidence:
                best[det.category] = det
        evidence = self._evidence_factors(obs, best, objects)
        factors = list(evidence)
        signals: list[str] = []
        home_cap = False
        if detections:
            top = best[next(c for c in _CATEGORY_ORDER if c in best)]
            points = sum(f.points for f in evidence)
            ctx = _Context(points)
            top_zones = self._top_zones(obs, detections, best)
            only_low = bool(top_zones) and all(z.sensitivity == "low" for z in top_zones)
            home_cap = self._context_factors(ctx, obs, clock, has_person="person" in best, only_low=only_low)
            self._place_factors(ctx, top_zones)
            self._history_factors(ctx, obs, best)
            home_cap = _identity_factors(ctx, obs, home_cap=home_cap)
            factors += ctx.factors
            signals = self._signals(obs, top, factors)

        total = sum(f.points for f in factors)
        ceiling, why, short = self._ceiling(signals, best, home_cap=home_cap)
        if total > ceiling:
            factors.append(
                RiskFactor(name="cap", points=ceiling - total, detail=f"{why} (the factors add up to {total})")
            )
        elif total < 0:
            factors.append(
                RiskFactor(name="floor", points=-total, detail=f"score floored at 0 (the factors add up to {total})")
            )
        score = max(0, min(ceiling, total))
        level = self.thresholds.level(score)
        night = any(f.name == "night" for f in factors)
        capped = short if total > ceiling else ""
        summary = self._summary(obs, objects, clock, factors, level, night=night, capped=capped)
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
        """An upper bound on what judging the whole batch could add to a one-image ``glance``.

        The batch can raise the evidence (a more confident frame: the rest of each class's
        points; the rest of the group points; ``frames`` and ``dwell``) and the context
        multiplier (the factors only a batch has: unusual hour, repeat visit, feedback; a
        sensitive zone, and an empty house, that its other images may stand in, where the glance
        has none; a low zone or a usual hour it may lose), and its corroboration can lift the
        glance's evidence cap. It shares the glance's household and clock (the context at the
        latest capture time, which this image is), so those factors keep their weights, and a
        household at home and awake stays capped at medium.
        The bound is the most the batch could score, less the glance's score; each rounded
        factor may add half a point. The batch stage judges the batch at once only when the
        glance plus this could reach the alert level."""
        got = {f.name: f.points for f in glance.factors}
        seen = [c for c in _CATEGORY_ORDER if f"{c}_seen" in got]
        if not seen:
            return 0
        # Corroboration only brings a class towards certainty: every class certain is the most.
        evidence = sum(EVIDENCE[c] for c in seen)
        if "person" in seen:
            evidence += EVIDENCE["extra_person_cap"]
        weights = 0
        for f in glance.factors:
            if f.name not in WEIGHTS or (f.name == "alarm_disarmed" and f.points == 0):
                continue  # not weighted; a 0-point "disarmed" is the forgotten alarm of an empty house
            if WEIGHTS[f.name] > 0 or f.name in _CONTEXT_ONLY:
                weights += WEIGHTS[f.name]
        # The batch's other images may stand elsewhere: in a sensitive zone, and (no longer only
        # in low-sensitivity zones) count an empty house.
        if "zone_high" not in got:
            weights += WEIGHTS["zone_high"]
        if "zone_low" in got and "person_seen" in got and "nobody_home" not in got:
            weights += WEIGHTS["nobody_home"]
        weights += sum(WEIGHTS[name] for name in _BATCH_ONLY)
        best = evidence * max(0.0, 1 + weights / REFERENCE) + (len(glance.factors) + len(_BATCH_ONLY) + 3) / 2
        capped_home = "people_home" in got and "unfamiliar_person" not in got
        ceiling = self.thresholds.score_of("high") - 1 if capped_home else 100
        return max(0, min(ceiling, math.ceil(best)) - glance.risk_score)

    # --- evidence --------------------------------------------------------------------------------
    @staticmethod
    def _evidence_factors(
        obs: Observation, best: dict[Category, Detection], objects: dict[str, int]
    ) -> list[RiskFactor]:
        out: list[RiskFactor] = []
        for category in _CATEGORY_ORDER:
            if category in best:
                det = best[category]
                out.append(
                    RiskFactor(
                        name=f"{category}_seen",
                        points=round(EVIDENCE[category] * det.confidence),
                        detail=f"{det.label} seen, confidence {det.confidence:.2f}",
                    )
                )
        persons = objects.get("person", 0)
        if persons > 1:
            points = min(EVIDENCE["each_extra_person"] * (persons - 1), EVIDENCE["extra_person_cap"])
            out.append(RiskFactor(name="group", points=points, detail=f"{persons} people together"))
        if not out:
            return out
        # Corroboration makes the sighting surer, not bigger: each closes part of the gap between
        # the top class's points and a certain one's.
        top_category = next(c for c in _CATEGORY_ORDER if c in best)
        gap = EVIDENCE[top_category] - out[0].points
        if obs.frames is not None and obs.frames >= 2:
            points = round(gap * CORROBORATION)
            gap -= points
            out.append(RiskFactor(name="frames", points=points, detail=f"seen in {obs.frames} images"))
        dwell = RulesReasoner._dwell_s(obs)
        if dwell is not None and dwell >= DWELL_S:
            out.append(RiskFactor(name="dwell", points=round(gap * CORROBORATION), detail=f"present for {dwell:.0f} s"))
        return out

    @staticmethod
    def _dwell_s(obs: Observation) -> float | None:
        if obs.first_seen is None or obs.last_seen is None:
            return None
        return (obs.last_seen - obs.first_seen).total_seconds()

    @staticmethod
    def _signals(obs: Observation, top: Detection, factors: Sequence[RiskFactor]) -> list[str]:
        """What shows a real activity rather than one misread image (each counts once)."""
        names = {f.name for f in factors}
        out = []
        if top.confidence >= CONFIDENT:
            out.append(f"a confident detection ({top.confidence:.2f})")
        if "frames" in names or "dwell" in names:
            out.append("seen repeatedly" if "frames" in names else "lingering")
        if "entry_open" in names:
            out.append("an open entry")
        if "alarm_triggered" in names:
            out.append("the alarm triggered")
        return out

    def _ceiling(
        self, signals: Sequence[str], best: dict[Category, Detection], *, home_cap: bool
    ) -> tuple[int, str, str]:
        """The highest score the evidence (and a household at home) allows, why, and why in short."""
        below_high = self.thresholds.score_of("high") - 1
        below_critical = self.thresholds.score_of("critical") - 1
        if home_cap:
            why = "capped at medium: the household is at home and awake, and the alarm is not triggered"
            return below_high, why, "household at home"
        if not best:
            return 100, "score capped at 100", ""
        top = best[next(c for c in _CATEGORY_ORDER if c in best)]
        if not signals and top.confidence < DOUBTFUL:
            why = f"capped at medium: a single doubtful sighting ({top.confidence:.2f}) and nothing else"
            return below_high, why, "a single doubtful sighting"
        if len(signals) < 2:
            have = f"only {signals[0]}" if signals else "none"
            why = f"capped at high: critical needs two signals of a real activity, there is {have}"
            return below_critical, why, "not corroborated enough for critical"
        return 100, "score capped at 100", ""

    # --- context factors -----------------------------------------------------------------------
    def _context_factors(
        self, ctx: _Context, obs: Observation, clock: str, *, has_person: bool, only_low: bool
    ) -> bool:
        """Adds the clock and household factors; True when a household at home and awake caps the level."""
        context = obs.context
        hour = obs.captured_at.hour
        clock_night = hour >= NIGHT_START_HOUR or hour < NIGHT_END_HOUR
        if context is not None and context.sun is not None:
            stale = (context.sun == "above_horizon" and DEEP_NIGHT_HOURS[0] <= hour < DEEP_NIGHT_HOURS[1]) or (
                context.sun == "below_horizon" and MIDDAY_HOURS[0] <= hour < MIDDAY_HOURS[1]
            )
            disagrees = "the context's sun state disagrees, trusting the clock"
            if stale and clock_night:
                ctx.add("night", f"at night ({clock}; {disagrees})")
            elif stale:
                ctx.add("daytime", f"daytime ({clock}; {disagrees})", 0)
            elif context.sun == "below_horizon":
                ctx.add("night", f"after dark ({clock}, sun below the horizon)")
        elif clock_night:
            ctx.add("night", f"at night ({clock})")
        if context is None:
            return False
        if obs.context_set_late is not None:
            late = obs.context_set_late.astimezone(obs.captured_at.tzinfo).strftime("%Y-%m-%d %H:%M")
            ctx.add("context_fallback", f"no household context known at {clock}: judged with the one set {late}", 0)
        nobody_home = context.people_home is not None and not context.people_home
        entry_at_night = has_person and bool(context.open_entries) and clock_night
        at_home = (
            bool(context.people_home)
            and AWAKE_HOURS[0] <= hour < AWAKE_HOURS[1]
            and context.alarm_state in _AT_HOME_STATES
            and not entry_at_night
        )
        alarm_factor = _ALARM.get(context.alarm_state)
        armed = context.alarm_state.startswith("armed")
        if alarm_factor == "alarm_disarmed" and nobody_home:
            # "Forgot to arm": a disarmed alarm says nothing reassuring when nobody is home.
            ctx.add(alarm_factor, "alarm disarmed but nobody is home: not counted", 0)
        elif armed and only_low and alarm_factor is not None:
            # The alarm guards the house, not the public street in front of it.
            ctx.add(
                alarm_factor,
                f"alarm {context.alarm_state.replace('_', ' ')}, seen only in low-sensitivity zones: not counted",
                0,
            )
        elif alarm_factor is not None:
            ctx.add(alarm_factor, f"alarm {context.alarm_state.replace('_', ' ')}")
        # A passer-by seen only in low-sensitivity zones (the street) is no sign of an empty house;
        # nor is a caller by day while the alarm is not armed (a courier, a neighbour).
        if has_person and nobody_home and not only_low:
            if clock_night or armed or context.alarm_state == "triggered":
                ctx.add("nobody_home", "nobody is home")
            else:
                ctx.add(
                    "nobody_home", f"nobody is home, but at {clock} with the alarm not armed: a caller, not counted", 0
                )
        if at_home:
            n = len(context.people_home or [])
            ctx.add("people_home", f"{n} {_plural('person', n)} at home, awake ({clock})")
        if has_person and context.open_entries:
            ctx.add("entry_open", f"open: {', '.join(context.open_entries[:3])}")
        return at_home

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

    @staticmethod
    def _place_factors(ctx: _Context, top_zones: Sequence[Zone]) -> None:
        high = [z.name for z in top_zones if z.sensitivity == "high"]
        if high:
            ctx.add("zone_high", f"in sensitive zone {', '.join(high)}")
        elif top_zones and all(z.sensitivity == "low" for z in top_zones):
            ctx.add("zone_low", f"only in low-sensitivity zone {', '.join(z.name for z in top_zones)}")

    @staticmethod
    def _history_factors(ctx: _Context, obs: Observation, best: dict[Category, Detection]) -> None:
        top = best[next(c for c in _CATEGORY_ORDER if c in best)]
        hour = obs.captured_at.strftime("%H:00")
        if obs.baseline is not None:
            rate = obs.baseline.get(top.label, 0.0)
            if rate < UNUSUAL_RATE:
                ctx.add("unusual_hour", f"{top.label} unusual here at {hour} (usually {rate:.1f}/h)")
            elif rate >= USUAL_RATE:
                ctx.add("usual_hour", f"{top.label} usual here at {hour} ({rate:.1f}/h)")
        if "person" in best and obs.recent_visits >= 2:
            visit = f"visit number {obs.recent_visits + 1} within the hour"
            if obs.context is not None and obs.context.people_home:
                # Residents come and go: repeated visits say nothing while people are home.
                ctx.add("repeat_visit", f"{visit}, people are home: not counted", 0)
            else:
                ctx.add("repeat_visit", visit)
        fb = obs.feedback
        if fb is not None and (fb.false_alarm or fb.correct or fb.missed_threat):
            raw = (
                WEIGHTS["feedback_missed_threat"] * fb.missed_threat
                + WEIGHTS["feedback_correct"] * fb.correct
                + WEIGHTS["feedback_false_alarm"] * fb.false_alarm
            )
            cap = WEIGHTS["feedback_cap"]
            weight = max(-cap, min(cap, raw))
            if weight:
                detail = (
                    f"feedback on similar events: {fb.false_alarm} false alarm(s), {fb.correct} correct, "
                    f"{fb.missed_threat} missed threat(s)"
                )
                ctx.add("feedback", detail, weight)

    # --- summary ---------------------------------------------------------------------------------
    @staticmethod
    def _summary(
        obs: Observation,
        objects: dict[str, int],
        clock: str,
        factors: Sequence[RiskFactor],
        level: RiskLevel,
        *,
        night: bool,
        capped: str,
    ) -> str:
        """What, where, when, and for medium and above why: the (at most three) factors besides
        the sighting itself that gave the most points, and the cap that held the level down."""
        if not objects:
            return f"nothing of note at {obs.camera_name} at {clock}"
        parts = [
            _people_phrase(obs, n) if label == "person" else f"{n} {_plural(label, n)}"
            for label, n in sorted(objects.items(), key=lambda kv: -kv[1])
        ]
        summary = f"{' and '.join(parts)} at {obs.camera_name} at {clock}"
        if night:
            summary += " (night)"
        if level == "low":
            return summary
        why = sorted(
            (f for f in factors if f.points > 0 and (f.name in _REASONS or f.name == "entry_open")),
            key=lambda f: -f.points,
        )[:3]
        if why:
            summary += f" — {', '.join(_reason(f, obs) for f in why)}"
        if capped:
            summary += f" ({capped})"
        return summary


def _identity_factors(ctx: _Context, obs: Observation, *, home_cap: bool) -> bool:
    """``known_person`` / ``unfamiliar_person`` from the person detections' identities; returns
    the household-at-home cap, which an unfamiliar face lifts (it is not one of them)."""
    seen = [i for d, i in zip(obs.detections, obs.identities, strict=False) if i is not None and d.category == "person"]
    if not seen:
        return home_cap
    known: dict[int, Identity] = {}
    for identity in seen:
        if identity.person_id is not None and (
            identity.person_id not in known or (identity.similarity or 0) > (known[identity.person_id].similarity or 0)
        ):
            known[identity.person_id] = identity
    names = ", ".join(
        f"{i.name or f'person {i.person_id}'} ({i.source} {i.similarity or 0:.2f})" for i in known.values()
    )
    if obs.enrolled_people > 0 and any(not i.known and i.source == "face" for i in seen):
        ctx.add("unfamiliar_person", f"an unfamiliar face: none of the {obs.enrolled_people} enrolled people")
        if (back := _returned_stranger(seen)) is not None:
            ctx.add("returned_stranger", f"the same unfamiliar person: {_seen_again(back, obs.captured_at)}")
        if known:
            ctx.add("known_person", f"{names} recognised, but with an unfamiliar person: not counted", 0)
        return False
    if known:
        home = [i for i in known.values() if _is_home(i, obs.context)]
        if home and len(home) == len(known):
            ctx.add("known_person", f"recognised: {names}, at home", WEIGHTS["known_person_home"])
        else:
            ctx.add("known_person", f"recognised: {names}")
    return home_cap


def _people_phrase(obs: Observation, n: int) -> str:
    """ "Anna", "Anna and an unfamiliar person", "an unfamiliar person", or "2 people" when no one
    was recognised (``n``: most people seen together)."""
    seen = [i for d, i in zip(obs.detections, obs.identities, strict=False) if i is not None and d.category == "person"]
    names = list(dict.fromkeys(i.name or f"person {i.person_id}" for i in seen if i.known))
    strangers = 0
    if obs.enrolled_people > 0:
        strangers = len({i.who for i in seen if not i.known and i.source == "face"})
    if not names and not strangers:
        return f"{n} {_plural('person', n)}"
    parts = list(names)
    if strangers:
        phrase = "an unfamiliar person" if strangers == 1 else f"{strangers} unfamiliar people"
        if (back := _returned_stranger(seen)) is not None:
            # Strangers seen before (pipeline/identify.py): "seen 3 times since 22:10".
            returning = {i.stranger for i in seen if not i.known and i.source == "face" and (i.visits or 0) >= 2}
            one = "" if len(returning) >= strangers else "one "
            phrase += f" ({one}{_seen_again(back, obs.captured_at)})"
        parts.append(phrase)
    others = n - len(names) - strangers
    if others > 0:
        parts.append(f"{others} other {_plural('person', others)}")
    return " and ".join(parts)


def _returned_stranger(seen: Sequence[Identity]) -> Identity | None:
    """The unfamiliar face (unknown, face seen) with the most visits, when it has been seen before."""
    faces = [i for i in seen if not i.known and i.source == "face" and (i.visits or 0) >= 2]
    return max(faces, key=lambda i: i.visits or 0) if faces else None


def _seen_again(stranger: Identity, now: datetime) -> str:
    """ "seen 3 times since 22:10" (the first sighting in the camera's local time)."""
    text = f"seen {stranger.visits} times"
    if stranger.first_seen is None:
        return text
    first = stranger.first_seen.astimezone(now.tzinfo)
    return f"{text} since {first:%H:%M}" if now - first < timedelta(hours=20) else f"{text} since {first:%d %b %H:%M}"


def _is_home(identity: Identity, context: HouseholdContext | None) -> bool:
    if context is None or not context.people_home:
        return False
    home = {p.casefold() for p in context.people_home}
    return (identity.name or "").casefold() in home or (identity.entity_id or "").casefold() in home


def _reason(factor: RiskFactor, obs: Observation) -> str:
    if factor.name == "entry_open":
        entries = list(obs.context.open_entries[:2]) if obs.context is not None else []
        return f"{' and '.join(entries)} open" if entries else "an entry open"
    return _REASONS[factor.name]
