"""The digest's prose: the prompt and the one model of the LLM's answer, side by side.

The rules text of a digest (counts, the most important events with their times and levels) is
given to the model as the only facts it may use; ``DigestProse`` constrains and validates its
answer. Any failure (unreachable, timeout, invalid output, a reply naming a time the facts do not
hold) raises ``DigestProseError`` and the digest keeps its rules text, labelled as such.
"""

from __future__ import annotations

import asyncio
import re
from functools import cache
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from inference_server.reasoning.backends.base import LlmBackend, LlmError
from inference_server.reasoning.prompts import ChatMessage

DIGEST_PROMPT_VERSION = "digest-v1"
PROSE_MAX_CHARS = 1200
_TIME = re.compile(r"\b([01]?\d|2[0-3]):[0-5]\d\b")

_SYSTEM = (
    "You write the morning summary of a home's security cameras for the people who live there."
    " Use only the facts you are given; never invent people, objects, times or places."
    " Be calm and brief (at most 5 sentences). Mention the most important events with their local"
    " time, camera and risk level. If nothing notable happened, say so plainly."
    ' Answer with JSON: {"text": "..."}.'
)


class DigestProse(BaseModel):
    """The LLM's answer: the digest as a few sentences."""

    model_config = ConfigDict(extra="forbid")
    text: str = Field(min_length=1, max_length=PROSE_MAX_CHARS)


class DigestProseError(Exception):
    """The LLM gave no usable prose; ``reason`` is short enough for the digest's ``llm_error``.
    ``outage``: the backend failed (timeout, unreachable, broken output), which the circuit
    breaker counts; prose refused for what it says is not."""

    def __init__(self, reason: str, *, outage: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.outage = outage


@cache
def prose_schema() -> dict[str, Any]:
    return DigestProse.model_json_schema()


def digest_messages(facts: str) -> list[ChatMessage]:
    return [{"role": "system", "content": _SYSTEM}, {"role": "user", "content": f"Facts:\n{facts}"}]


async def write_prose(backend: LlmBackend, facts: str, timeout_s: float) -> str:
    """The model's prose for ``facts`` (the rules text). A reply that names a clock time the facts
    do not contain is refused: the times are what a reader acts on."""
    try:
        async with asyncio.timeout(timeout_s):
            reply = await backend.complete(digest_messages(facts), prose_schema())
    except TimeoutError:
        raise DigestProseError(f"timeout: no reply within {timeout_s:g}s", outage=True) from None
    except LlmError as err:
        raise DigestProseError(f"{err.reason}: {err.brief}", outage=True) from None
    text = reply.text.strip()
    if text.startswith("```"):
        text = text.removeprefix("```json").removeprefix("```").removesuffix("```").strip()
    try:
        prose = DigestProse.model_validate_json(text).text.strip()
    except ValidationError as err:
        raise DigestProseError(f"invalid output: {err.errors()[0]['msg']}", outage=True) from None
    known = {m.group(0).zfill(5) for m in _TIME.finditer(facts)}
    invented = sorted({m.group(0).zfill(5) for m in _TIME.finditer(prose)} - known)
    if invented:
        raise DigestProseError(f"rejected: names times not in the facts ({', '.join(invented)})")
    return prose
