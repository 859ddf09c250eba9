"""The LLM reasoner: the rules engine's judgement refined by a language model, never without a net.

``LlmReasoner`` asks an LLM backend (llama.cpp in process, or any OpenAI-compatible server;
one module per backend, registered with ``register_llm_backend``) to judge an observation,
with the rules engine's assessment in the prompt. It promises:

- every call returns an ``Assessment``: the LLM's (``analysis_source="llm"``) or, when the LLM
  times out, is unreachable, answers badly twice or is skipped by the open circuit breaker,
  the rules engine's (``analysis_source="rules"``) with ``LLM fallback: <reason>`` appended to
  its reasoning and a ``llm fallback reason=...`` warning in the log;
- the LLM's level is never trusted: it is recomputed from its score with the configured
  thresholds, and the reasoning says so when the two disagreed;
- the LLM's assessment keeps the rules factors and adds an ``llm_adjustment`` factor, so the
  points of the factors still add up to the score; the LLM's own factors follow with 0 points;
- at most ``max_concurrency`` LLM calls run at once; each call is limited to ``timeout_s``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from pydantic import ValidationError

from inference_server.config import LlmSettings
from inference_server.domain import Assessment, Observation
from inference_server.reasoning.backends.base import LlmBackend, LlmError, LlmReply, build_llm_backend
from inference_server.reasoning.breaker import CircuitBreaker, CircuitState
from inference_server.reasoning.prompts import (
    PROMPT_VERSION,
    PROMPT_VERSIONS,
    ChatMessage,
    LlmAssessment,
    build_messages,
    parse_reply,
)
from inference_server.reasoning.prompts import answer_schema as _answer_schema
from inference_server.reasoning.reasoner import LevelThresholds
from inference_server.reasoning.rules import RulesReasoner
from inference_server.schemas import RiskFactor

log = logging.getLogger(__name__)


class _Fallback(Exception):
    def __init__(self, reason: str, brief: str, detail: str | None = None) -> None:
        super().__init__(f"{reason}: {detail or brief}")
        self.reason = reason
        self.brief = brief
        self.detail = detail or brief


class LlmReasoner:
    """A ``Reasoner`` that asks an LLM, with the rules engine as the labelled fallback (see module doc)."""

    name = "llm"

    def __init__(
        self,
        backend: LlmBackend,
        thresholds: LevelThresholds,
        *,
        timeout_s: float = 30.0,
        max_concurrency: int = 1,
        circuit_failures: int = 3,
        circuit_reset_s: float = 60.0,
        prompt_version: str = PROMPT_VERSION,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if prompt_version not in PROMPT_VERSIONS:
            raise ValueError(f"unknown prompt version {prompt_version!r}; known: {sorted(PROMPT_VERSIONS)}")
        self.backend = backend
        self.thresholds = thresholds
        self.rules = RulesReasoner(thresholds)
        self.timeout_s = timeout_s
        self.prompt_version = prompt_version
        self.breaker = CircuitBreaker(circuit_failures, circuit_reset_s, clock)
        self._slots = asyncio.Semaphore(max_concurrency)
        #: Fallbacks since start, by reason ("timeout", "unreachable", "invalid output", ...).
        self.fallbacks: Counter[str] = Counter()

    @classmethod
    def from_settings(
        cls, settings: LlmSettings, thresholds: LevelThresholds, clock: Callable[[], float] = time.monotonic
    ) -> LlmReasoner:
        """The reasoner ``settings`` describe; ``clock`` (seconds, monotonic) times the circuit breaker."""
        return cls(
            build_llm_backend(settings),
            thresholds,
            timeout_s=settings.timeout_s,
            max_concurrency=settings.max_concurrency,
            circuit_failures=settings.circuit_failures,
            circuit_reset_s=settings.circuit_reset_s,
            clock=clock,
        )

    @property
    def circuit_state(self) -> CircuitState:
        """``closed`` | ``open`` | ``half_open``, for status pages and metrics."""
        return self.breaker.state

    async def start(self) -> None:
        await self.backend.start()

    async def close(self) -> None:
        await self.backend.close()

    async def assess(
        self,
        observation: Observation,
        *,
        context: Mapping[str, Any] | None = None,
        zones: str | None = None,
        baseline: str | None = None,
    ) -> Assessment:
        """Score with the rules engine, then let the LLM refine it (``refine``)."""
        rules = self.rules.assess_now(observation)
        return await self.refine(observation, rules, context=context, zones=zones, baseline=baseline)

    async def refine(
        self,
        observation: Observation,
        rules: Assessment,
        *,
        context: Mapping[str, Any] | None = None,
        zones: str | None = None,
        baseline: str | None = None,
    ) -> Assessment:
        """The LLM's assessment of ``observation`` given the rules engine's ``rules``, or ``rules``
        labelled as the fallback (see module doc). Never raises for an LLM failure."""
        if self.breaker.blocks():
            return self._fallback(observation, rules, self._circuit_open())
        messages = build_messages(
            observation,
            rules,
            thresholds=self.thresholds,
            context=context,
            zones=zones,
            baseline=baseline,
            version=self.prompt_version,
        )
        async with self._slots:
            # Checked again: the circuit may have opened, or another caller claimed the
            # half-open trial, while this one waited for a slot.
            if not self.breaker.allow():
                return self._fallback(observation, rules, self._circuit_open())
            try:
                answer, reply, attempts = await self._ask(observation, messages)
            except _Fallback as failed:
                self.breaker.failure()
                return self._fallback(observation, rules, failed)
            except asyncio.CancelledError:
                self.breaker.abandon()
                raise
        self.breaker.success()
        return self._from_answer(observation, rules, answer, reply, attempts)

    def _circuit_open(self) -> _Fallback:
        return _Fallback(
            "circuit open",
            f"LLM skipped after {self.breaker.threshold} failures in a row; next try after {self.breaker.reset_s:g}s",
        )

    async def _ask(self, observation: Observation, messages: list[ChatMessage]) -> tuple[LlmAssessment, LlmReply, int]:
        """One call, and one retry if the reply is not a valid answer."""
        invalid: list[ValidationError] = []
        for attempt in (1, 2):
            try:
                async with asyncio.timeout(self.timeout_s):
                    reply = await self.backend.complete(messages, _answer_schema())
            except TimeoutError:
                raise _Fallback("timeout", f"no reply within {self.timeout_s:g}s") from None
            except LlmError as err:
                raise _Fallback(err.reason, err.brief, str(err)) from None
            try:
                return parse_reply(reply.text), reply, attempt
            except ValidationError as err:
                invalid.append(err)
                log.warning(
                    "llm reply invalid camera_id=%s attempt=%d errors=%d first=%r reply=%r",
                    observation.camera_id,
                    attempt,
                    err.error_count(),
                    _first_error(err),
                    reply.text[:200],
                )
        last = invalid[-1]
        raise _Fallback("invalid output", f"{last.error_count()} schema errors, first: {_first_error(last)}")

    def _fallback(self, observation: Observation, rules: Assessment, failed: _Fallback) -> Assessment:
        self.fallbacks[failed.reason] += 1
        log.warning(
            "llm fallback camera_id=%s reason=%s detail=%r circuit=%s consecutive_failures=%d",
            observation.camera_id,
            failed.reason.replace(" ", "_"),
            failed.detail,
            self.breaker.state,
            self.breaker.consecutive_failures,
        )
        return replace(
            rules,
            reasoning=f"{rules.reasoning}. LLM fallback: {failed.reason} ({failed.brief})",
            analysis_source="rules",
            prompt_version=None,
        )

    def _from_answer(
        self, observation: Observation, rules: Assessment, answer: LlmAssessment, reply: LlmReply, attempts: int
    ) -> Assessment:
        level = self.thresholds.level(answer.risk_score)
        reasoning = answer.reasoning
        if level != answer.risk_level:
            reasoning += (
                f" [Level set by the server: the model said {answer.risk_level} for score {answer.risk_score},"
                f" which the configured thresholds make {level}.]"
            )
        rules_points = sum(f.points for f in rules.factors)
        adjustment = answer.risk_score - rules_points
        factors = [
            *rules.factors,
            RiskFactor(
                name="llm_adjustment",
                points=adjustment,
                detail=f"the LLM moved the rules score {rules.risk_score} to {answer.risk_score}"
                if answer.risk_score != rules.risk_score
                else f"the LLM kept the rules score {rules.risk_score}",
            ),
            *(RiskFactor(name=f"llm_{f.name}", points=0, detail=f.detail) for f in answer.factors),
        ]
        tokens_per_s = reply.tokens_per_s
        log.info(
            "llm assessed camera_id=%s model=%s prompt_version=%s risk_score=%d risk_level=%s rules_score=%d"
            " level_corrected=%s attempts=%d seconds=%.2f completion_tokens=%s tokens_per_s=%s",
            observation.camera_id,
            self.backend.model,
            self.prompt_version,
            answer.risk_score,
            level,
            rules.risk_score,
            level != answer.risk_level,
            attempts,
            reply.seconds,
            reply.completion_tokens,
            f"{tokens_per_s:.1f}" if tokens_per_s is not None else None,
        )
        return Assessment(
            risk_score=answer.risk_score,
            risk_level=level,
            summary=answer.summary,
            reasoning=reasoning,
            factors=factors,
            analysis_source="llm",
            model=self.backend.model,
            objects=rules.objects,
            prompt_version=self.prompt_version,
        )


def _first_error(err: ValidationError) -> str:
    first = err.errors(include_url=False)[0]
    where = ".".join(str(part) for part in first["loc"]) or "reply"
    return f"{where}: {first['msg']}"
