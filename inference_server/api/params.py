"""Path and query parameter models shared by several routes."""

from __future__ import annotations

from uuid import UUID

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from inference_server.schemas import CAMERA_ID_PATTERN, RiskLevel


class _Params(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class CameraPath(_Params):
    camera_id: str = Field(pattern=CAMERA_ID_PATTERN)


class EventPath(_Params):
    event_id: UUID


class JobPath(_Params):
    job_id: int = Field(ge=1, le=2**63 - 1)


class Page(_Params):
    limit: int = Field(default=50, ge=1, le=500)
    cursor: str | None = Field(default=None, max_length=200, description="next_cursor of the previous page")


class IdPage(_Params):
    limit: int = Field(default=50, ge=1, le=500)
    cursor: int | None = Field(default=None, ge=1, le=2**63 - 1, description="next_cursor of the previous page")


class EventQuery(Page):
    camera: str | None = Field(default=None, pattern=CAMERA_ID_PATTERN)
    since: AwareDatetime | None = None
    until: AwareDatetime | None = None
    min_risk: int | None = Field(default=None, ge=0, le=100)
    level: RiskLevel | None = None
    reviewed: bool | None = None


class DetectionQuery(IdPage):
    camera: str | None = Field(default=None, pattern=CAMERA_ID_PATTERN)
    label: str | None = Field(default=None, max_length=64)
    since: AwareDatetime | None = None
    until: AwareDatetime | None = None
    min_confidence: float | None = Field(default=None, ge=0, le=1)


class DlqQuery(IdPage):
    camera: str | None = Field(default=None, pattern=CAMERA_ID_PATTERN)


class UploadParams(CameraPath):
    captured_at: AwareDatetime | None = Field(
        default=None, description="When the picture was taken (default: when it was received)."
    )
