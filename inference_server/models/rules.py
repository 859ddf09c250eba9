"""Deterministic, explainable rules engine: always available, the first phase of every alert.

Every factor that moves the score is listed with its points, so a user can see why.
The weights live in ``WEIGHTS`` and are documented in docs/risk.md.
"""

from __future__ import annotations

from collections import Counter

from inference_server.config import Settings
from inference_server.models.detector import Detection
from inference_server.models.reasoner import (
    Assessment,
    LevelThresholds,
    Observation,
    register_reasoner,
)
from inference_server.schemas import RiskFactor

MODEL_NAME = "rules-v1"

#: Points per factor. Class points are scaled by the best detection's confidence.
WEIGHTS: dict[str, int] = {
    "person": 45,
    "vehicle": 20,
    "animal": 5,
    "object": 10,
    "each_extra_person": 5,
    "extra_person_cap": 15,
    "night": 20,
}
NIGHT_START_HOUR = 22
NIGHT_END_HOUR = 6


def _plural(label: str, n: int) -> str:
    if n == 1:
        return label
    return "people" if label == "person" else f"{label}s"


class RulesReasoner:
    name = "rules"

    def __init__(self, thresholds: LevelThresholds) -> None:
        self.thresholds = thresholds

    async def assess(self, observation: Observation) -> Assessment:
        return self.assess_now(observation)

    def assess_now(self, observation: Observation) -> Assessment:
        detections = list(observation.detections)
        local = observation.captured_at
        clock = local.strftime("%H:%M")
        objects = dict(Counter(d.label for d in detections))
        factors: list[RiskFactor] = []

        best: dict[str, Detection] = {}
        for det in detections:
            if det.category not in best or det.confidence > best[det.category].confidence:
                best[det.category] = det
        for category, det in sorted(best.items(), key=lambda kv: -WEIGHTS[kv[0]]):
            points = round(WEIGHTS[category] * det.confidence)
            factors.append(
                RiskFactor(
                    name=f"{category}_seen",
                    points=points,
                    detail=f"{det.label} seen, confidence {det.confidence:.2f}",
                )
            )
        persons = sum(1 for d in detections if d.category == "person")
        if persons > 1:
            factors.append(
                RiskFactor(
                    name="group",
                    points=min(WEIGHTS["each_extra_person"] * (persons - 1), WEIGHTS["extra_person_cap"]),
                    detail=f"{persons} people together",
                )
            )
        is_night = local.hour >= NIGHT_START_HOUR or local.hour < NIGHT_END_HOUR
        if detections and is_night:
            factors.append(RiskFactor(name="night", points=WEIGHTS["night"], detail=f"at night ({clock})"))

        score = max(0, min(100, sum(f.points for f in factors)))
        level = self.thresholds.level(score)
        if detections:
            parts = [f"{n} {_plural(label, n)}" for label, n in sorted(objects.items(), key=lambda kv: -kv[1])]
            summary = f"{' and '.join(parts)} at {observation.camera_name} at {clock}"
            if is_night:
                summary += " (night)"
        else:
            summary = f"nothing of note at {observation.camera_name} at {clock}"
        reasoning = "; ".join(f"{f.detail} ({f.points:+d})" for f in factors) or "no factors"
        reasoning = f"rules {MODEL_NAME}: {reasoning} → score {score}, {level}"
        return Assessment(
            risk_score=score,
            risk_level=level,
            summary=summary,
            reasoning=reasoning,
            factors=factors,
            analysis_source="rules",
            model=MODEL_NAME,
            objects=objects,
        )


@register_reasoner("rules")
def _build(settings: Settings) -> RulesReasoner:
    return RulesReasoner(LevelThresholds(settings.risk_medium, settings.risk_high, settings.risk_critical))
