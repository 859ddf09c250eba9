"""The ``Reasoner`` interface: detections in context → a risk assessment. And its registry."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

from inference_server.models.detector import Detection
from inference_server.schemas import AnalysisSource, RiskFactor, RiskLevel

if TYPE_CHECKING:
    from inference_server.config import Settings


@dataclass(frozen=True, slots=True)
class Observation:
    """What a reasoner judges: one camera, a moment in the camera's local time, what was seen."""

    camera_id: str
    camera_name: str
    captured_at: datetime
    detections: Sequence[Detection]


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


ReasonerFactory = Callable[["Settings"], Reasoner]
_REASONERS: dict[str, ReasonerFactory] = {}


def register_reasoner(name: str) -> Callable[[ReasonerFactory], ReasonerFactory]:
    def wrap(factory: ReasonerFactory) -> ReasonerFactory:
        _REASONERS[name] = factory
        return factory

    return wrap


def build_reasoner(settings: Settings) -> Reasoner:
    from inference_server.models import rules  # noqa: F401  (registers "rules")

    try:
        factory = _REASONERS[settings.reasoner_backend]
    except KeyError:
        raise ValueError(
            f"unknown reasoner_backend {settings.reasoner_backend!r}; known: {sorted(_REASONERS)}"
        ) from None
    return factory(settings)
