"""Payloads shared by the REST API, the MQTT publisher and the tests: one definition each."""

from __future__ import annotations

from datetime import datetime
from typing import Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

RiskLevel = Literal["low", "medium", "high", "critical"]
AnalysisSource = Literal["llm", "rules"]
Category = Literal["person", "vehicle", "animal", "object"]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True)


class DetectionOut(_Model):
    label: str
    category: Category
    confidence: float = Field(ge=0, le=1)
    bbox: tuple[float, float, float, float] = Field(description="x1, y1, x2, y2 normalised to 0..1")
    zone: str | None = None


class RiskFactor(_Model):
    name: str
    points: int = Field(description="How much this factor moved the score (may be negative).")
    detail: str


class Event(_Model):
    """A security event as REST returns it and as ``hsi/events`` carries it (plus ``type``)."""

    id: UUID
    camera_id: str
    camera_name: str
    started_at: datetime
    ended_at: datetime | None
    risk_score: int = Field(ge=0, le=100)
    risk_level: RiskLevel
    summary: str
    reasoning: str
    risk_factors: list[RiskFactor]
    objects: dict[str, int]
    detections: list[DetectionOut]
    analysis_source: AnalysisSource
    is_fast_path: bool
    image_id: int | None
    reviewed: bool
    notes: str | None
    feedback: Literal["false_alarm", "correct", "missed_threat"] | None


class EventMessage(Event):
    type: Literal["new", "update", "end"]


class EventList(_Model):
    events: list[Event]
    next_cursor: str | None


class CameraState(_Model):
    """Retained on ``hsi/cameras/<id>/state``."""

    risk_score: int
    risk_level: RiskLevel
    last_event_id: UUID | None
    last_event_at: datetime | None
    objects: dict[str, int]
    enabled: bool


class Discovery(_Model):
    """Retained on ``hsi/discovery`` so Home Assistant can discover the server."""

    id: str
    name: str
    version: str
    url: str | None


class DependencyHealth(_Model):
    ok: bool
    detail: str


class Readiness(_Model):
    ready: bool
    checks: dict[str, DependencyHealth]
