"""Path and query parameter models shared by several routes."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated
from uuid import UUID

from pydantic import AfterValidator, AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field

from inference_server.schemas import CAMERA_ID_PATTERN, RiskLevel
from inference_server.timerange import capture_time_problem, query_time_problem

_NUMBER = re.compile(r"\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*")


def _not_a_number(value: object) -> object:
    if isinstance(value, str) and _NUMBER.fullmatch(value):
        raise ValueError("expected an ISO 8601 date-time with a time zone, not a number")
    return value


def _query_time(value: datetime) -> datetime:
    if (problem := query_time_problem(value)) is not None:
        raise ValueError(problem)
    return value


def _capture_time(value: datetime) -> datetime:
    if (problem := capture_time_problem(value)) is not None:
        raise ValueError(problem)
    return value


#: A date-time as the OpenAPI document promises it (RFC 3339 text). Pydantic alone would also
#: take a number as Unix time, so ``until=0.5`` would silently mean 1970. Query bounds lie in
#: ``timerange``'s query range (1970 .. 3000): year 1 or 9999 with an offset cannot even be
#: converted to UTC, and was a 500 from the database driver.
DateTimeParam = Annotated[AwareDatetime, BeforeValidator(_not_a_number), AfterValidator(_query_time)]
#: A picture's capture time: ``timerange``'s capture range (2000-01-01 .. now + 1 day).
CaptureTimeParam = Annotated[AwareDatetime, BeforeValidator(_not_a_number), AfterValidator(_capture_time)]


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
    since: DateTimeParam | None = None
    until: DateTimeParam | None = None
    min_risk: int | None = Field(default=None, ge=0, le=100)
    level: RiskLevel | None = None
    reviewed: bool | None = None


class DetectionQuery(IdPage):
    camera: str | None = Field(default=None, pattern=CAMERA_ID_PATTERN)
    label: str | None = Field(default=None, max_length=64)
    since: DateTimeParam | None = None
    until: DateTimeParam | None = None
    min_confidence: float | None = Field(default=None, ge=0, le=1)


class DlqQuery(IdPage):
    camera: str | None = Field(default=None, pattern=CAMERA_ID_PATTERN)


class UploadParams(CameraPath):
    captured_at: CaptureTimeParam | None = Field(
        default=None,
        description="When the picture was taken (default: when it was received); 2000-01-01 .. now + 1 day.",
    )
