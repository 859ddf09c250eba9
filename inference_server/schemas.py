"""Payloads shared by the REST API, the MQTT publisher and the tests: one definition each."""

from __future__ import annotations

from datetime import datetime
from typing import Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, field_validator

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


AlarmState = Literal[
    "disarmed",
    "armed_home",
    "armed_away",
    "armed_night",
    "armed_vacation",
    "armed_custom_bypass",
    "arming",
    "pending",
    "triggered",
    "unknown",
]


class HouseholdContext(_Model):
    """What Home Assistant knows about the house, used to judge events."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    alarm_state: AlarmState = "unknown"
    people_home: list[str] | None = Field(default=None, max_length=50, description="Names of people at home.")
    open_entries: list[str] = Field(default_factory=list, max_length=100, description="Open doors and windows.")
    sun: Literal["above_horizon", "below_horizon"] | None = None
    notes: str | None = Field(default=None, max_length=1000)


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
    context: HouseholdContext | None = Field(default=None, description="The household context it was judged with.")
    model: str | None = Field(default=None, description="Model that made the current judgement (rules-v2, a GGUF...).")
    prompt_version: str | None = None
    description: str | None = Field(
        default=None,
        description="The language model's own words about the event (the model is named in `model`), shown"
        " apart from the rules' factual `summary`; only text the server found grounded in the evidence and"
        " consistent with the level; null until a model answered, and when it failed or was rejected.",
    )
    llm_error: str | None = Field(
        default=None,
        description="Why the LLM phase left the rules' judgement (unreachable, timeout, invalid output,"
        " rejected (<what was wrong>), ...); null when it answered or has not run.",
    )


class EventMessage(Event):
    type: Literal["new", "update", "end"]
    alert: bool = Field(
        description="A new judgement that may alert (the rules' `new`, a rescoring, the LLM's verdict);"
        " false on `end`, on a review (PATCH) and on an LLM failure that leaves the rules' judgement."
    )


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


# --- REST API ---------------------------------------------------------------------------------
class ErrorDetail(_Model):
    code: str
    message: str


class ErrorBody(_Model):
    """Every error response: ``{"error": {"code", "message"}}``."""

    error: ErrorDetail


class Health(_Model):
    status: Literal["alive"]


CAMERA_ID_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"


class Zone(_Model):
    """A named polygon in normalised image coordinates (0..1, origin top-left)."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9 _-]+$")
    polygon: list[tuple[float, float]] = Field(min_length=3, max_length=64)
    sensitivity: Literal["low", "normal", "high"] = "normal"

    @field_validator("polygon")
    @classmethod
    def _inside_image(cls, points: list[tuple[float, float]]) -> list[tuple[float, float]]:
        for x, y in points:
            if not (0 <= x <= 1 and 0 <= y <= 1):
                raise ValueError("polygon points must lie within 0..1")
        return points


class ZoneList(_Model):
    zones: list[Zone] = Field(max_length=32)

    @field_validator("zones")
    @classmethod
    def _unique_names(cls, zones: list[Zone]) -> list[Zone]:
        names = [z.name for z in zones]
        if len(names) != len(set(names)):
            raise ValueError("zone names must be unique")
        return zones


class Camera(_Model):
    id: str
    name: str
    folder: str | None
    enabled: bool
    zones: list[Zone]
    created_at: datetime


class CameraList(_Model):
    cameras: list[Camera]


class CameraCreate(_Model):
    model_config = ConfigDict(extra="forbid", frozen=True)
    id: str = Field(pattern=CAMERA_ID_PATTERN)
    name: str = Field(min_length=1, max_length=100)
    enabled: bool = True


class CameraPatch(_Model):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str | None = Field(default=None, min_length=1, max_length=100)
    enabled: bool | None = None


class JobState(_Model):
    id: int
    image_id: int
    camera_id: str
    state: Literal["queued", "running", "done", "dead"]
    attempts: int
    max_attempts: int
    last_error: str | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    event_id: UUID | None


class JobList(_Model):
    jobs: list[JobState]
    next_cursor: str | None


class UploadAccepted(_Model):
    job_id: int | None = Field(description="None when the camera already had these exact bytes.")
    image_id: int
    duplicate: bool


class EventPatch(_Model):
    model_config = ConfigDict(extra="forbid", frozen=True)
    reviewed: bool | None = None
    notes: str | None = Field(default=None, max_length=2000)
    feedback: Literal["false_alarm", "correct", "missed_threat"] | None = None


class DetectionRecord(_Model):
    id: int
    image_id: int
    camera_id: str
    label: str
    category: Category
    confidence: float
    bbox: tuple[float, float, float, float]
    zone: str | None
    detected_at: datetime


class DetectionList(_Model):
    detections: list[DetectionRecord]
    next_cursor: str | None


class ContextState(_Model):
    context: HouseholdContext
    set_at: datetime | None
    set_by: str | None


class AuditEntry(_Model):
    id: int
    at: datetime
    who: str
    action: str
    target_id: str | None
    status: int


class AuditList(_Model):
    entries: list[AuditEntry]
    next_cursor: str | None


class GpuStatus(_Model):
    name: str
    utilization_percent: float
    memory_used_mb: float
    memory_total_mb: float
    temperature_c: float


class ModelStatus(_Model):
    """A model of the server and where it runs (the VRAM budget's decisions, docs/configuration.md)."""

    name: str = Field(description="detector, llm or enrichment")
    device: str = Field(description="cuda:0, cpu, remote (an LLM server), none")
    state: Literal["loaded", "cpu_fallback", "refused"]
    vram_mb: float | None = Field(description="GPU memory it takes (measured when loaded here, else an estimate)")
    detail: str | None = Field(description="measured / estimate, or why the GPU refused it")


class SystemStatus(_Model):
    """``GET /system/status`` and the retained ``hsi/status`` payload."""

    version: str
    uptime_s: float
    queue: dict[str, int]
    dlq_size: int
    images_per_s: float
    latency_ms_p50: float | None
    latency_ms_p95: float | None
    last_event_at: datetime | None
    detector: str | None
    reasoner: str | None
    mqtt_connected: bool
    gpu: GpuStatus | None
    models: list[ModelStatus] = Field(default_factory=list, description="Where each model runs (VRAM budget).")
