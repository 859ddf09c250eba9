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


class DetectionIdentity(_Model):
    """Who a person detection was recognised as (docs/privacy.md); the embeddings never leave the server."""

    person: str | None = Field(description="The enrolled person's name; null: unknown (no enrolled person matched).")
    person_id: int | None = None
    similarity: float | None = Field(default=None, description="Cosine similarity of the deciding match.")
    source: Literal["face", "body"] = Field(
        description="face: a face was embedded (an unknown is an unfamiliar face); body: only the body was."
    )
    visitor: int | None = Field(
        default=None, description="Groups the sightings of one unknown person within an activity."
    )
    stranger: str | None = Field(
        default=None,
        description="An unknown person's stranger id (S-…): the same id for sightings of them within "
        "`stranger_window_h` across events and cameras (docs/privacy.md).",
    )
    visits: int | None = Field(default=None, description="The stranger's visits so far (sightings far enough apart).")
    first_seen: datetime | None = Field(default=None, description="When the stranger was first seen.")


class DetectionOut(_Model):
    label: str
    category: Category
    confidence: float = Field(ge=0, le=1)
    bbox: tuple[float, float, float, float] = Field(description="x1, y1, x2, y2 normalised to 0..1")
    zone: str | None = None
    identity: DetectionIdentity | None = Field(
        default=None,
        description="Recognition of a person (null: not a person, recognition off, too small, or skipped under load).",
    )


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
    activity: str | None = Field(
        default=None,
        description="What a vision model saw happening (passing_by, approaching, delivering, loitering,"
        " trying_entry, entering, carrying_away, animal, vehicle_arriving, vehicle_leaving, unknown);"
        " null without a vision model's answer.",
    )
    threat_indicators: list[str] = Field(
        default_factory=list, description="What looked threatening to the vision model, in short phrases."
    )
    model_observations: list[str] = Field(
        default_factory=list,
        description="What the vision model reports that the detector did not see (its observation, not a detection).",
    )
    frames_sent: list[int] = Field(
        default_factory=list, description="Image ids of the key frames the model was shown, best first."
    )
    llm_confidence: float | None = Field(
        default=None, description="The vision model's confidence in its reading of the frames (0..1)."
    )
    llm_state: Literal["pending", "running", "done", "failed", "skipped"] | None = Field(
        default=None,
        description="The LLM phase: pending or running (a description may follow in an `update`), done,"
        " failed (see `llm_error`) or skipped (no LLM configured).",
    )
    clip_url: str | None = Field(
        default=None,
        description="Path of the video clip the event was seen in (`GET` with the API key, like the snapshot);"
        " null when its images were stills.",
    )
    updated_at: datetime | None = Field(
        default=None,
        description="When the event last changed. Two messages of an event that say different things differ"
        " by it at least, so a message heard twice byte for byte (sent again: delivery is at least once) is a"
        " repeat to drop.",
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


class LevelCounts(_Model):
    low: int
    medium: int
    high: int
    critical: int


class CameraCount(_Model):
    camera_id: str
    camera_name: str
    n: int = Field(description="Events of this camera in the period.")
    high_or_critical: int = Field(description="Of which high or critical.")


class HourCount(_Model):
    hour: datetime = Field(description="Start of the hour, in the server's camera_timezone.")
    n: int
    max_risk: int = Field(description="Highest risk score of the hour's events.")


class EventSummary(_Model):
    """``GET /events/summary``: what happened in a period, counted."""

    since: datetime
    until: datetime
    camera: str | None
    total: int
    by_level: LevelCounts
    by_camera: list[CameraCount] = Field(description="Cameras with events, most events first.")
    by_hour: list[HourCount] = Field(description="Hours with events (hours without are left out), in order.")
    top: list[Event] = Field(description="The most important events: highest risk first, then newest.")


class DigestEvent(_Model):
    """One of a digest's most important events."""

    id: UUID
    camera_id: str
    camera_name: str
    started_at: datetime
    local_time: str = Field(description="Its start in the server's camera_timezone, e.g. 02:14.")
    risk_level: RiskLevel
    risk_score: int
    summary: str
    snapshot_url: str = Field(description="Path of its snapshot under the API (prefix the server's URL).")


class Digest(_Model):
    """A summary of a period (the scheduled morning digest, or one asked for); on ``hsi/digest``."""

    id: int | None = Field(description="Its row in the server's digest log (null: not recorded).")
    kind: Literal["scheduled", "on_demand"]
    period_start: datetime
    period_end: datetime
    title: str
    text: str = Field(description="The digest to show: the LLM's prose when it answered, else the rules text.")
    text_source: Literal["llm", "rules"] = Field(description="Who wrote `text`.")
    rules_text: str = Field(description="The rules-based summary (always present: counts and top events).")
    llm_text: str | None = Field(description="The LLM's prose, when an LLM is configured and answered.")
    llm_error: str | None = Field(description="Why the LLM's prose is missing although an LLM is configured.")
    model: str | None = Field(description="The LLM that wrote `llm_text`.")
    total: int
    by_level: LevelCounts
    top: list[DigestEvent] = Field(description="The 3 most important events.")
    generated_at: datetime


class CameraState(_Model):
    """Retained on ``hsi/cameras/<id>/state``."""

    risk_score: int
    risk_level: RiskLevel
    last_event_id: UUID | None
    last_event_at: datetime | None
    objects: dict[str, int]
    enabled: bool


TamperKind = Literal["covered", "blinded", "moved", "blurred"]


class TamperState(_Model):
    """Retained on ``hsi/cameras/<id>/tamper``: whether the camera's view looks tampered with."""

    tampered: bool
    kind: TamperKind | None = Field(
        description="covered (flat and featureless), blinded (blown out), moved (pointed elsewhere),"
        " blurred (out of focus); null while not tampered."
    )
    since: datetime | None = Field(description="Capture time of the image that raised it.")
    learned_images: int = Field(description="Images the camera's scene baseline was learned from.")


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


class ClipAccepted(_Model):
    """A video clip accepted: its sampled frames are queued as images of the camera."""

    clip_id: int
    duplicate: bool = Field(description="The camera already sent these exact bytes: nothing new was queued.")
    image_ids: list[int] = Field(description="The sampled frames, in time order.")
    job_ids: list[int]
    duration_s: float
    frames_decoded: int


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
    state: Literal["loaded", "cpu_fallback", "refused", "missing"] = Field(
        description="missing: its file is absent or unusable (detail says which and what to do); nothing runs"
    )
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
    event_loop: str | None = Field(
        default=None,
        description="The process's event loop: 'uvloop 0.23.0', 'asyncio', or 'asyncio (fallback: …)' where"
        " uvloop was asked for and could not be imported.",
    )


# --- known people (issue 18, docs/privacy.md) ---------------------------------------------------
PERSON_ENTITY_PATTERN = r"^person\.[a-z0-9_]+$"


class PersonCreate(_Model):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=100, description="How summaries and Home Assistant name them.")
    entity_id: str | None = Field(
        default=None,
        pattern=PERSON_ENTITY_PATTERN,
        description="Their Home Assistant person entity; its state (home) lowers the risk of seeing them.",
    )


class PersonPatch(_Model):
    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(default=None, min_length=1, max_length=100)
    entity_id: str | None = Field(
        default=None, pattern=PERSON_ENTITY_PATTERN, description="A new person entity; null with the key: unlink."
    )


class Person(_Model):
    """An enrolled person. Their embeddings stay on the server: only their counts are shown."""

    id: int
    name: str
    entity_id: str | None
    created_at: datetime
    embeddings: dict[str, int] = Field(description='Stored embeddings per source, e.g. {"face": 2, "body": 3}.')


class PersonList(_Model):
    people: list[Person]


class EnrollDetection(_Model):
    model_config = ConfigDict(extra="forbid")
    person_id: int = Field(ge=1, le=2**63 - 1, description="The enrolled person this detection shows.")
