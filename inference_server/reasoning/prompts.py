"""The LLM reasoner's prompt and the one model of its answer, side by side.

``LlmAssessment`` is the answer: its ``model_json_schema()`` constrains generation (llama.cpp
grammar, OpenAI-style ``response_format``) and the same model validates the reply, so what the
schema allows and what the server accepts cannot drift apart. The prompt text lives in a
versioned template file, ``prompts/security_v1.txt``; ``PROMPT_VERSION`` names it and is stored
with every LLM-made assessment.

``security-v2`` (``VISION_PROMPT_VERSION``) is the prompt of a model that sees the event's key
frames: its answer, ``VisionAssessment``, adds a ``description`` of what is seen, an ``activity``
from ``ACTIVITIES``, ``threat_indicators`` and the model's ``confidence``; the frames travel as
OpenAI ``image_url`` parts (``data:image/jpeg;base64,...``) after the text of the user message.
A text-only model keeps ``security-v1``.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import cache
from importlib import resources
from string import Template
from typing import Any, Literal, TypedDict, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator

from inference_server.domain import Assessment, Identity, Observation
from inference_server.reasoning.reasoner import LevelThresholds
from inference_server.schemas import RiskLevel

PROMPT_VERSION = "security-v1"
#: The prompt of a model that sees the key frames (answer: ``VisionAssessment``).
VISION_PROMPT_VERSION = "security-v2"
#: Package-relative template file of each prompt version this server can use.
_TEMPLATES: dict[str, str] = {"security-v1": "security_v1.txt", "security-v2": "security_v2.txt"}
PROMPT_VERSIONS = frozenset(_TEMPLATES)

SUMMARY_MAX_CHARS = 200
#: Bounds on the free text keep a small model from rambling until ``max_tokens`` cuts its JSON.
REASONING_MAX_CHARS = 400
FACTOR_NAME_MAX_CHARS = 40
FACTOR_DETAIL_MAX_CHARS = 120
MAX_FACTORS = 4
DESCRIPTION_MAX_CHARS = 600
MAX_THREAT_INDICATORS = 5
THREAT_INDICATOR_MAX_CHARS = 80

#: What the people, animals or vehicles in the frames are doing, as a vision model names it
#: (``docs/risk.md`` maps each to its effect on the score).
Activity = Literal[
    "passing_by",
    "approaching",
    "delivering",
    "loitering",
    "trying_entry",
    "entering",
    "carrying_away",
    "animal",
    "vehicle_arriving",
    "vehicle_leaving",
    "unknown",
]
ACTIVITIES: tuple[str, ...] = get_args(Activity)

_NOT_PROVIDED = "none provided"
_SECTION = re.compile(r"^=== (system|user) ===$", re.MULTILINE)


class LlmFactor(BaseModel):
    """One thing that drove the LLM's score, in its words (the rules engine's factors carry the points)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=FACTOR_NAME_MAX_CHARS)
    detail: str = Field(min_length=1, max_length=FACTOR_DETAIL_MAX_CHARS)

    @field_validator("name", mode="after")
    @classmethod
    def _slug(cls, name: str) -> str:
        """A factor name is an identifier like the rules' (``group``, ``dwell``): models write
        ``group,`` or ``Dwell time``; anything else becomes ``_`` and the ends are trimmed."""
        slug = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
        if not slug:
            raise ValueError(f"factor name {name!r} has no letters or digits")
        return slug


class LlmAssessment(BaseModel):
    """The LLM's answer. Its JSON schema constrains generation; ``model_validate_json`` checks the reply.

    Field order is the generation order: the model writes its reasoning before committing to a
    score, and the level after the score. The level is still not trusted: the server recomputes
    it from the score with the configured thresholds (see ``LlmReasoner``).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    reasoning: str = Field(min_length=1, max_length=REASONING_MAX_CHARS)
    factors: list[LlmFactor] = Field(max_length=MAX_FACTORS)
    risk_score: int = Field(ge=0, le=100)
    risk_level: RiskLevel
    summary: str = Field(min_length=1, max_length=SUMMARY_MAX_CHARS)


class VisionAssessment(BaseModel):
    """The answer of a model that saw the key frames (prompt ``security-v2``).

    Field order is the generation order: first what is seen and done, then the reasoning, the
    score and its level (not trusted: recomputed by the server), the summary and the model's
    confidence in its own reading of the frames.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    description: str = Field(min_length=1, max_length=DESCRIPTION_MAX_CHARS)
    activity: Activity
    threat_indicators: list[str] = Field(max_length=MAX_THREAT_INDICATORS)
    reasoning: str = Field(min_length=1, max_length=REASONING_MAX_CHARS)
    factors: list[LlmFactor] = Field(max_length=MAX_FACTORS)
    risk_score: int = Field(ge=0, le=100)
    risk_level: RiskLevel
    summary: str = Field(min_length=1, max_length=SUMMARY_MAX_CHARS)
    confidence: float = Field(ge=0, le=1)

    @field_validator("threat_indicators", mode="after")
    @classmethod
    def _short(cls, indicators: list[str]) -> list[str]:
        """Short non-empty phrases ("hood up at night", "pulling the door handle")."""
        cleaned = [" ".join(i.split()) for i in indicators]
        for indicator in cleaned:
            if not indicator or len(indicator) > THREAT_INDICATOR_MAX_CHARS:
                raise ValueError(f"a threat indicator must have 1 to {THREAT_INDICATOR_MAX_CHARS} characters")
        return cleaned


Answer = LlmAssessment | VisionAssessment
_ANSWERS: dict[str, type[LlmAssessment] | type[VisionAssessment]] = {
    "security-v1": LlmAssessment,
    "security-v2": VisionAssessment,
}


class TextPart(TypedDict):
    type: Literal["text"]
    text: str


class ImageUrl(TypedDict):
    url: str


class ImagePart(TypedDict):
    type: Literal["image_url"]
    image_url: ImageUrl


class ChatMessage(TypedDict):
    """One message of an OpenAI-style chat, as both backends send it: text, or (a user message
    with images) a list of text and ``image_url`` parts."""

    role: Literal["system", "user", "assistant"]
    content: str | list[TextPart | ImagePart]


def image_part(jpeg: bytes) -> ImagePart:
    """An OpenAI ``image_url`` part carrying ``jpeg`` inline as a data URL."""
    return {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64," + base64.b64encode(jpeg).decode()}}


@cache
def answer_schema(version: str = PROMPT_VERSION) -> dict[str, Any]:
    """The JSON schema of the answer of prompt ``version`` (computed once; callers must not mutate it)."""
    return answer_model(version).model_json_schema()


def answer_model(version: str) -> type[LlmAssessment] | type[VisionAssessment]:
    try:
        return _ANSWERS[version]
    except KeyError:
        raise ValueError(f"unknown prompt version {version!r}; known: {sorted(_ANSWERS)}") from None


def parse_reply(text: str, version: str = PROMPT_VERSION) -> Answer:
    """Validate a model's reply against the answer model of ``version`` (``LlmAssessment`` for v1).

    Tolerates only a Markdown code fence around the JSON (servers that do not enforce the
    schema sometimes add one). Raises ``pydantic.ValidationError`` for anything else that is
    not a valid answer: non-JSON, missing or extra keys, out-of-range values, over-long text.
    """
    stripped = text.strip()
    if stripped.startswith("```"):
        stripped = stripped.removeprefix("```json").removeprefix("```").removesuffix("```").strip()
    return answer_model(version).model_validate_json(stripped)


@cache
def _template(version: str) -> dict[Literal["system", "user"], Template]:
    try:
        filename = _TEMPLATES[version]
    except KeyError:
        raise ValueError(f"unknown prompt version {version!r}; known: {sorted(_TEMPLATES)}") from None
    text = (resources.files("inference_server.reasoning") / "prompts" / filename).read_text(encoding="utf-8")
    parts = _SECTION.split(text)
    # parts = [comments, "system", body, "user", body]
    sections = {parts[i]: Template(parts[i + 1].strip("\n")) for i in range(1, len(parts) - 1, 2)}
    if set(sections) != {"system", "user"}:
        raise ValueError(f"prompt {filename} must have exactly one system and one user section")
    return {"system": sections["system"], "user": sections["user"]}


def _local_time(moment: datetime) -> str:
    zone = moment.tzname() or "camera local time"
    return f"{moment:%A %d %B %Y, %H:%M} ({zone})"


def _detections(observation: Observation) -> str:
    if not observation.detections:
        return "- nothing"
    who = list(observation.identities) + [None] * (len(observation.detections) - len(observation.identities))
    return "\n".join(
        f"- {d.label} ({d.category}), confidence {d.confidence:.2f}, "
        f"box {d.bbox[0]:.2f},{d.bbox[1]:.2f},{d.bbox[2]:.2f},{d.bbox[3]:.2f}{_identity(i)}"
        for d, i in zip(observation.detections, who, strict=False)
    )


def _identity(identity: Identity | None) -> str:
    """Who a person was recognised as (known people, issue 18); nothing when not embedded."""
    if identity is None:
        return ""
    if identity.known:
        return f", recognised as {identity.name} ({identity.source} similarity {identity.similarity or 0:.2f})"
    seen = ""
    if identity.stranger is not None and (identity.visits or 0) >= 2:
        # A returning stranger (pipeline/identify.py): linked across events, by face or by body.
        first = f" since {identity.first_seen:%H:%M} UTC" if identity.first_seen is not None else ""
        how = f" (linked by {identity.stranger_link})" if identity.stranger_link else ""
        seen = f", the same stranger seen {identity.visits} times{first}{how}"
    return (", an unfamiliar face" if identity.source == "face" else ", not recognised (no face seen)") + seen


def _rules_factors(rules: Assessment) -> str:
    if not rules.factors:
        return "- none"
    return "\n".join(f"- {f.name} {f.points:+d}: {f.detail}" for f in rules.factors)


def _context(context: Mapping[str, Any] | None) -> str:
    if not context:
        return _NOT_PROVIDED
    return "\n".join(
        f"- {key}: {value if isinstance(value, str) else json.dumps(value, default=str, ensure_ascii=False)}"
        for key, value in sorted(context.items())
    )


def _text(value: str | None) -> str:
    return value.strip() if value and value.strip() else _NOT_PROVIDED


def build_messages(
    observation: Observation,
    rules: Assessment,
    *,
    thresholds: LevelThresholds,
    context: Mapping[str, Any] | None = None,
    zones: str | None = None,
    baseline: str | None = None,
    version: str = PROMPT_VERSION,
    images: Sequence[bytes] = (),
) -> list[ChatMessage]:
    """The system and user messages asking the LLM to judge ``observation``.

    The user message shows the camera, its local time, every detection (class, confidence,
    box), the rules engine's score, level and factors (so the LLM sees why the rules scored
    what they did), and the optional household ``context`` (one line per key), ``zones`` and
    ``baseline`` text; a missing one reads "none provided". The system message states the
    level thresholds so the model can keep its level consistent with its score. ``images``
    (JPEG key frames, best first) follow the user text as ``image_url`` parts.
    """
    template = _template(version)
    system = template["system"].substitute(
        medium=thresholds.medium,
        high_below=thresholds.high - 1,
        high=thresholds.high,
        critical_below=thresholds.critical - 1,
        critical=thresholds.critical,
        max_factors=MAX_FACTORS,
        summary_chars=SUMMARY_MAX_CHARS,
        description_chars=DESCRIPTION_MAX_CHARS,
        max_indicators=MAX_THREAT_INDICATORS,
        activities=", ".join(f'"{a}"' for a in ACTIVITIES),
    )
    user = template["user"].substitute(
        camera_name=observation.camera_name,
        camera_id=observation.camera_id,
        local_time=_local_time(observation.captured_at),
        detection_count=len(observation.detections),
        detections=_detections(observation),
        rules_score=rules.risk_score,
        rules_level=rules.risk_level,
        rules_factors=_rules_factors(rules),
        context=_context(context),
        zones=_text(zones),
        baseline=_text(baseline),
        image_count=len(images),
    )
    if not images:
        return [{"role": "system", "content": system}, {"role": "user", "content": user}]
    parts: list[TextPart | ImagePart] = [{"type": "text", "text": user}, *(image_part(jpeg) for jpeg in images)]
    return [{"role": "system", "content": system}, {"role": "user", "content": parts}]
