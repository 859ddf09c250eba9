"""Activity into the risk: how a vision model's ``activity`` may move the rules' score.

Only the activity of a model that saw the key frames counts; a text-only model's activity is
recorded but moves nothing (it only restates the detections). The mapping (``docs/risk.md``):

- raising: ``trying_entry``, ``entering`` and ``carrying_away`` set the score to at least the
  rules' score + 20, ``loitering`` + 10. The reasoner's bounds still hold: at most
  ``llm.max_adjust`` above the rules, and never past a rules cap (a doubtful sighting, critical
  without corroboration: the model's reading is no corroboration).
- lowering: ``delivering``, ``passing_by`` and ``animal`` give the reasoner a checkable reason
  to accept the model's lower score (by at most ``llm.max_adjust``) only when every condition
  the server can verify holds (``activity_grounds``): the model is confident (``confidence`` at
  least ``LOWER_MIN_CONFIDENCE``) and names no threat indicator, and

  - ``delivering``: not at night (the rules found no ``night`` factor), no door or window open
    in the household context, and the activity lasted at most ``DELIVERY_MAX_S``;
  - ``passing_by``: no person was in a zone of normal or high sensitivity, and the activity
    lasted at most ``PASSING_MAX_S``;
  - ``animal``: the detector saw an animal in the event too.

  Otherwise a lower score is refused as opinion (``llm_lowering_refused``).
- every other activity (``approaching``, ``vehicle_arriving``, ``vehicle_leaving``,
  ``unknown``) leaves the score to the model's bounded suggestion.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from inference_server.domain import Assessment, Observation, category_of
from inference_server.reasoning.prompts import VisionAssessment

#: Least score above the rules' that a seen activity sets (still bounded by max_adjust and caps).
ACTIVITY_RAISE: Mapping[str, int] = {"trying_entry": 20, "entering": 20, "carrying_away": 20, "loitering": 10}
#: Activities that may lower the score when ``activity_grounds`` verifies them.
LOWERING_ACTIVITIES = frozenset({"delivering", "passing_by", "animal"})
LOWER_MIN_CONFIDENCE = 0.6
DELIVERY_MAX_S = 300.0
PASSING_MAX_S = 60.0


def _lasted_s(observation: Observation) -> float:
    if observation.first_seen is None or observation.last_seen is None:
        return 0.0
    return (observation.last_seen - observation.first_seen).total_seconds()


def raised_score(answer: VisionAssessment, rules: Assessment) -> int:
    """The model's suggested score, lifted to the least its seen activity sets."""
    raise_by = ACTIVITY_RAISE.get(answer.activity, 0)
    if raise_by == 0:
        return answer.risk_score
    return max(answer.risk_score, min(100, rules.risk_score + raise_by))


def activity_grounds(
    answer: VisionAssessment, observation: Observation, rules: Assessment, context: Mapping[str, Any] | None
) -> str | None:
    """The verified reason the seen ``answer.activity`` gives to lower the score, or None."""
    activity = answer.activity
    if activity not in LOWERING_ACTIVITIES:
        return None
    if answer.confidence < LOWER_MIN_CONFIDENCE or answer.threat_indicators:
        return None
    lasted = _lasted_s(observation)
    if activity == "delivering":
        night = any(f.name == "night" for f in rules.factors)
        open_entries = (context or {}).get("open_entries") or []
        if night or open_entries or lasted > DELIVERY_MAX_S:
            return None
        return (
            f"activity delivering seen by the model ({answer.confidence:.2f}): daytime, no entry open, {lasted:.0f} s"
        )
    if activity == "passing_by":
        sensitive = {z.name for z in observation.zones if z.sensitivity != "low"}
        people_zones = {
            name
            for det, names in zip(observation.detections, observation.detection_zones, strict=False)
            if det.category == "person"
            for name in names
        }
        if people_zones & sensitive or lasted > PASSING_MAX_S:
            return None
        seen = f"activity passing_by seen by the model ({answer.confidence:.2f})"
        return f"{seen}: no person in a watched zone, {lasted:.0f} s"
    if not any(category_of(d.label) == "animal" for d in observation.detections):
        return None
    return f"activity animal seen by the model ({answer.confidence:.2f}) and by the detector"
