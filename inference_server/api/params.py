"""Path and query parameter models shared by several routes."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from inference_server.schemas import CAMERA_ID_PATTERN, RiskLevel
from inference_server.timerange import capture_time_problem, query_time_problem

_NUMBER = re.compile(r"\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*")


def _not_a_number(value: object) -> object:
    if isinstance(value, str) and _NUMBER.fullmatch(value):
        raise ValueError("expected an ISO 8601 date-time with a time zone, not a number")
    return value


_INTEGER = re.compile(r"[+-]?[0-9]+")
_DECIMAL = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")


def _plain(pattern: re.Pattern[str], what: str) -> Callable[[object], object]:
    def check(value: object) -> object:
        # Pydantic reads " 5" or "5\u00a0" as 5 (it strips any Unicode space): the OpenAPI
        # document promises an integer, so text around the digits is refused, as other junk is.
        if isinstance(value, str) and not pattern.fullmatch(value):
            raise ValueError(f"expected {what}")
        return value

    return check


#: An integer or a number in a path or query string: ASCII digits only, nothing around them.
IntParam = Annotated[int, BeforeValidator(_plain(_INTEGER, "an integer"))]
FloatParam = Annotated[float, BeforeValidator(_plain(_DECIMAL, "a number"))]


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
#: A date-time in a JSON body (validated strictly: a number is no date-time there already).
BodyDateTime = Annotated[AwareDatetime, AfterValidator(_query_time)]
#: A picture's capture time: ``timerange``'s capture range (2000-01-01 .. now + 1 day).
CaptureTimeParam = Annotated[AwareDatetime, BeforeValidator(_not_a_number), AfterValidator(_capture_time)]


class _Params(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class CameraPath(_Params):
    camera_id: str = Field(pattern=CAMERA_ID_PATTERN)


class EventPath(_Params):
    event_id: UUID


class JobPath(_Params):
    job_id: IntParam = Field(ge=1, le=2**63 - 1)


class Page(_Params):
    limit: IntParam = Field(default=50, ge=1, le=500)
    cursor: str | None = Field(default=None, max_length=200, description="next_cursor of the previous page")


class IdPage(_Params):
    limit: IntParam = Field(default=50, ge=1, le=500)
    cursor: IntParam | None = Field(default=None, ge=1, le=2**63 - 1, description="next_cursor of the previous page")


class EventQuery(Page):
    camera: str | None = Field(default=None, pattern=CAMERA_ID_PATTERN)
    since: DateTimeParam | None = None
    until: DateTimeParam | None = None
    min_risk: IntParam | None = Field(default=None, ge=0, le=100)
    level: RiskLevel | None = None
    min_level: RiskLevel | None = Field(
        default=None, description="This level or higher (medium: medium, high, critical)."
    )
    reviewed: bool | None = None
    has_clip: bool | None = Field(
        default=None, description="true: only events seen in a video clip (with a clip_url); false: only in stills."
    )
    q: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        description="Full-text search over summaries, the LLM's descriptions, object labels, identities, camera"
        ' and zone names (web search syntax: `"exact phrase"`, `or`, `-excluded`; English stemming).',
    )
    sort: Literal["time", "relevance"] | None = Field(
        default=None,
        description="time: newest first (the default without q); relevance: best match first, then newest"
        " (the default with q; needs q). A cursor continues only the order it was made for.",
    )


class SummaryQuery(_Params):
    camera: str | None = Field(default=None, pattern=CAMERA_ID_PATTERN)
    since: DateTimeParam | None = Field(default=None, description="Default: 24 hours before until.")
    until: DateTimeParam | None = Field(default=None, description="Default: now.")
    top: IntParam = Field(default=5, ge=1, le=50, description="How many of the most important events to return.")


class DigestRequest(_Params):
    """``POST /digest``: a digest of any period, made now."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    since: BodyDateTime | None = Field(
        default=None,
        description="Neither since nor until: the latest scheduled period (digest_from .. digest_at). Without"
        " since: 24 hours before until.",
    )
    until: BodyDateTime | None = Field(default=None, description="Default: now (when since is given).")
    camera: str | None = Field(default=None, pattern=CAMERA_ID_PATTERN)
    publish: bool = Field(
        default=False, description="Also publish it on hsi/digest (Home Assistant fires its digest event)."
    )
    timezone: str | None = Field(
        default=None,
        max_length=64,
        description="IANA time zone of the digest's local times (Home Assistant sends its own); default:"
        " camera_timezone.",
    )

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                ZoneInfo(value)
            except (ZoneInfoNotFoundError, ValueError) as err:
                raise ValueError(f"unknown time zone {value!r}") from err
        return value


class DetectionQuery(IdPage):
    camera: str | None = Field(default=None, pattern=CAMERA_ID_PATTERN)
    label: str | None = Field(default=None, max_length=64)
    since: DateTimeParam | None = None
    until: DateTimeParam | None = None
    min_confidence: FloatParam | None = Field(default=None, ge=0, le=1)


class DlqQuery(IdPage):
    camera: str | None = Field(default=None, pattern=CAMERA_ID_PATTERN)


class UploadParams(CameraPath):
    captured_at: CaptureTimeParam | None = Field(
        default=None,
        description="When the picture was taken (default: when it was received); 2000-01-01 .. now + 1 day.",
    )


class PersonPath(_Params):
    person_id: IntParam = Field(ge=1, le=2**63 - 1)


class EventDetectionPath(_Params):
    event_id: UUID
    n: IntParam = Field(ge=0, le=999, description="The detection's index in the event's `detections`.")
