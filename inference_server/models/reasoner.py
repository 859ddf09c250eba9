"""The ``Reasoner`` interface: a camera's activity in context → a risk assessment."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from inference_server.models.detector import Detection
from inference_server.schemas import AnalysisSource, HouseholdContext, RiskFactor, RiskLevel, Zone


@dataclass(frozen=True, slots=True)
class FeedbackCounts:
    """What people said about earlier events like this one (camera, zone, class, hour)."""

    false_alarm: int = 0
    correct: int = 0
    missed_threat: int = 0


@dataclass(frozen=True, slots=True)
class Observation:
    """What a reasoner judges: one camera's activity (one image, or a batch of them) in context.

    Only the first four fields are required; the rest default to "unknown", and a reasoner
    must not invent a factor from an unknown."""

    camera_id: str
    camera_name: str
    #: When the activity was seen, in the camera's local time.
    captured_at: datetime
    #: Every detection of the activity (all images of a batch).
    detections: Sequence[Detection]
    #: Zone names of each detection, parallel to ``detections``.
    detection_zones: Sequence[tuple[str, ...]] = ()
    zones: Sequence[Zone] = ()
    context: HouseholdContext | None = None
    #: Most of each label seen together in one image (default: counted over ``detections``).
    max_counts: Mapping[str, int] | None = None
    first_seen: datetime | None = None
    last_seen: datetime | None = None
    #: Average images per hour with each label at this hour of day; None until learned.
    baseline: Mapping[str, float] | None = None
    #: Earlier batches with a person on this camera within the last hour.
    recent_visits: int = 0
    feedback: FeedbackCounts | None = None


@dataclass(frozen=True, slots=True)
class Assessment:
    risk_score: int
    risk_level: RiskLevel
    summary: str
    reasoning: str
    factors: list[RiskFactor]
    analysis_source: AnalysisSource
    model: str
    objects: dict[str, int] = field(default_factory=dict)
    #: The LLM prompt that produced this assessment (``prompts.PROMPT_VERSION``); None for rules.
    prompt_version: str | None = None


@dataclass(frozen=True, slots=True)
class LevelThresholds:
    """low < medium ≤ score < high ≤ score < critical ≤ score."""

    medium: int = 30
    high: int = 60
    critical: int = 85

    def level(self, score: int) -> RiskLevel:
        if score >= self.critical:
            return "critical"
        if score >= self.high:
            return "high"
        if score >= self.medium:
            return "medium"
        return "low"


class Reasoner(Protocol):
    name: str

    async def assess(self, observation: Observation) -> Assessment: ...
