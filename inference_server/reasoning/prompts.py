"""The LLM reasoner's prompt and the one model of its answer, side by side.

``LlmAssessment`` is the answer: its ``model_json_schema()`` constrains generation (llama.cpp
grammar, OpenAI-style ``response_format``) and the same model validates the reply, so what the
schema allows and what the server accepts cannot drift apart. The prompt text lives in a
versioned template file, ``prompts/security_v1.txt``; ``PROMPT_VERSION`` names it and is stored
with every LLM-made assessment.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import datetime
from functools import cache
from importlib import resources
from string import Template
from typing import Any, Literal, TypedDict

from pydantic import BaseModel, ConfigDict, Field, field_validator

from inference_server.domain import Assessment, Observation
from inference_server.reasoning.reasoner import LevelThresholds
from inference_server.schemas import RiskLevel

PROMPT_VERSION = "security-v1"
#: Package-relative template file of each prompt version this server can use.
_TEMPLATES: dict[str, str] = {"security-v1": "security_v1.txt"}
PROMPT_VERSIONS = frozenset(_TEMPLATES)

SUMMARY_MAX_CHARS = 200
#: Bounds on the free text keep a small model from rambling until ``max_tokens`` cuts its JSON.
REASONING_MAX_CHARS = 400
FACTOR_NAME_MAX_CHARS = 40
FACTOR_DETAIL_MAX_CHARS = 120
MAX_FACTORS = 4

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


class ChatMessage(TypedDict):
    """One message of an OpenAI-style chat, as both backends send it."""

    role: Literal["system", "user", "assistant"]
    content: str


@cache
def answer_schema() -> dict[str, Any]:
    """The JSON schema of ``LlmAssessment`` (computed once; callers must not mutate it)."""
    return LlmAssessment.model_json_schema()


def parse_reply(text: str) -> LlmAssessment:
    """Validate a model's reply against ``LlmAssessment``.

    Tolerates only a Markdown code fence around the JSON (servers that do not enforce the
    schema sometimes add one). Raises ``pydantic.ValidationError`` for anything else that is
    not a valid answer: non-JSON, missing or extra keys, out-of-range values, over-long text.
    """
    stripped = text.strip()
    if stripped.startswith("```"):
        stripped = stripped.removeprefix("```json").removeprefix("```").removesuffix("```").strip()
    return LlmAssessment.model_validate_json(stripped)


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
    return "\n".join(
        f"- {d.label} ({d.category}), confidence {d.confidence:.2f}, "
        f"box {d.bbox[0]:.2f},{d.bbox[1]:.2f},{d.bbox[2]:.2f},{d.bbox[3]:.2f}"
        for d in observation.detections
    )


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
) -> list[ChatMessage]:
    """The system and user messages asking the LLM to judge ``observation``.

    The user message shows the camera, its local time, every detection (class, confidence,
    box), the rules engine's score, level and factors (so the LLM sees why the rules scored
    what they did), and the optional household ``context`` (one line per key), ``zones`` and
    ``baseline`` text; a missing one reads "none provided". The system message states the
    level thresholds so the model can keep its level consistent with its score.
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
    )
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]
