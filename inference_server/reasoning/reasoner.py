"""The ``Reasoner`` interface (a camera's activity in context → a risk assessment) and the
thresholds that turn a score into a level."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from inference_server.domain import Assessment, Observation
from inference_server.schemas import RiskLevel


@dataclass(frozen=True, slots=True)
class LevelThresholds:
    """low < medium ≤ score < high ≤ score < critical ≤ score."""

    medium: int = 30
    high: int = 60
    critical: int = 85

    def score_of(self, level: RiskLevel) -> int:
        """The lowest score that has this level."""
        return {"low": 0, "medium": self.medium, "high": self.high, "critical": self.critical}[level]

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
