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
- the LLM may raise the rules' score by at most ``max_adjust`` points; it may lower it only
  when a check the server can verify gives a reason (``grounding.LOWERING_CHECKS``, none yet),
  never by opinion: a refused lowering keeps the rules' score and says so in a 0-point
  ``llm_lowering_refused`` factor and in the reasoning;
- the headline ``summary`` stays the rules' factual one; the model's words go to
  ``description``, and only after ``grounding.check`` found them grounded in the evidence and
  consistent with the level the event will carry. A reply that fails is retried once, then
  the rules' judgement is the fallback (reason ``rejected (<what was wrong>)``);
- the LLM's assessment keeps the rules factors and adds an ``llm_adjustment`` factor, so the
  points of the factors still add up to the score; the LLM's own factors follow with 0 points;
- at most ``max_concurrency`` LLM calls run at once; each call is limited to ``timeout_s``;
- the digest's prose (``write_digest``) shares those slots and the circuit breaker: it takes a
  slot only when no event's call is waiting for one (events never queue behind a digest), waits
  for one at most its timeout, and an open breaker skips it; it then fails with a reason and the
  digest keeps its rules text, labelled as the fallback;
- with key frames (``images``) and a model that sees (``vision``: ``True``, or ``"auto"`` and
  the backend says so), the frames go with prompt ``security-v2``; its ``description``,
  ``activity``, ``threat_indicators`` and ``confidence`` reach the assessment with the ids of
  the frames sent; what it saw beyond the detector is kept as its labelled observation
  (``grounding.review``); its activity moves the score as ``reasoning.activity`` maps it.
  Without frames or vision the text-only prompt runs exactly as before.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any, Literal

from pydantic import ValidationError

from inference_server.config import LlmSettings
from inference_server.domain import Assessment, Observation
from inference_server.reasoning.activity import activity_grounds, raised_score
from inference_server.reasoning.backends.base import LlmBackend, LlmError, LlmReply, build_llm_backend
from inference_server.reasoning.breaker import CircuitBreaker, CircuitState
from inference_server.reasoning.digest import DigestProseError, write_prose
from inference_server.reasoning.grounding import LOWERING_CHECKS, Evidence, LoweringCheck, lowering_grounds, review
from inference_server.reasoning.prompts import (
    PROMPT_VERSION,
    PROMPT_VERSIONS,
    VISION_PROMPT_VERSION,
    Answer,
    ChatMessage,
    VisionAssessment,
    build_messages,
    parse_reply,
)
from inference_server.reasoning.prompts import answer_schema as _answer_schema
from inference_server.reasoning.reasoner import LevelThresholds
from inference_server.reasoning.rules import RulesReasoner
from inference_server.schemas import RiskFactor

log = logging.getLogger(__name__)

#: The 0-point factor that records a lowering the server refused.
LOWERING_REFUSED = "llm_lowering_refused"
#: The 0-point factor that names the verified reason that allowed a lowering.
LOWERING_GROUNDS = "llm_lowering_grounds"


#: The rules' factor that caps their score (a doubtful sighting at medium, critical without
#: corroboration at high): an LLM's opinion is no corroboration, so it cannot raise past it.
RULES_CAP = "cap"


def settle_score(
    suggested: int, rules_score: int, max_adjust: int, grounds: str | None, *, capped: str | None = None
) -> tuple[int, str | None]:
    """The score the LLM's ``suggested`` one becomes, and the server's note when it changed it.

    Raising is allowed up to ``max_adjust`` points, and not at all past a rules cap (``capped``:
    its reason); lowering only with ``grounds`` (a reason the server verified), and then by at
    most ``max_adjust``; without grounds the rules' score stays."""
    if suggested < rules_score and grounds is None:
        return rules_score, f"LLM suggested {suggested}; lowering needs a checkable reason: kept {rules_score}"
    if suggested > rules_score and capped is not None:
        return rules_score, f"LLM suggested {suggested}; the rules cap the score ({capped}): kept {rules_score}"
    low, high = max(0, rules_score - max_adjust), min(100, rules_score + max_adjust)
    if low <= suggested <= high:
        return suggested, None
    bounded = min(max(suggested, low), high)
    return bounded, (
        f"Score bounded by the server: the LLM said {suggested}, more than {max_adjust} points"
        f" from the rules' {rules_score}; kept at {bounded}"
    )


class _Slots:
    """At most ``n`` holders at once. A freed slot goes to the longest-waiting event's call, and to
    a side call (the digest) only when no event's call waits: a digest never delays an event more
    than the one call it already holds a slot for."""

    def __init__(self, n: int) -> None:
        self._free = n
        self._urgent: deque[asyncio.Future[None]] = deque()
        self._side: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> tuple[int, int]:
        """Calls waiting for a slot: (events', side calls')."""
        return len(self._urgent), len(self._side)

    @asynccontextmanager
    async def hold(self) -> AsyncIterator[None]:
        """A slot for an event's call."""
        await self.acquire(urgent=True)
        try:
            yield
        finally:
            self.release()

    async def acquire(self, *, urgent: bool) -> None:
        """Wait for a slot (``urgent``: an event's call); ``release`` it after."""
        waiting = self._urgent if urgent else self._side
        # A free slot means nobody waits (a released slot is handed straight to a waiter).
        if self._free > 0:
            self._free -= 1
            return
        granted = asyncio.get_running_loop().create_future()
        waiting.append(granted)
        try:
            await granted
        except asyncio.CancelledError:
            if granted.done() and not granted.cancelled():
                self.release()  # handed a slot in the same moment it was cancelled: pass it on
            elif granted in waiting:  # (a release may have dropped it already, seeing it cancelled)
                waiting.remove(granted)
            raise

    def release(self) -> None:
        for waiting in (self._urgent, self._side):
            while waiting:
                granted = waiting.popleft()
                if not granted.done():
                    granted.set_result(None)
                    return
        self._free += 1


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
        max_adjust: int = 25,
        lowering_checks: Sequence[LoweringCheck] = LOWERING_CHECKS,
        clock: Callable[[], float] = time.monotonic,
        vision: Literal["auto"] | bool = "auto",
    ) -> None:
        if prompt_version not in PROMPT_VERSIONS:
            raise ValueError(f"unknown prompt version {prompt_version!r}; known: {sorted(PROMPT_VERSIONS)}")
        self.backend = backend
        self.thresholds = thresholds
        self.rules = RulesReasoner(thresholds)
        self.timeout_s = timeout_s
        self.prompt_version = prompt_version
        self.max_adjust = max_adjust
        self.lowering_checks = tuple(lowering_checks)
        self.vision = vision
        self.breaker = CircuitBreaker(circuit_failures, circuit_reset_s, clock)
        self._slots = _Slots(max_concurrency)
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
            max_adjust=settings.max_adjust,
            clock=clock,
            vision=settings.vision,
        )

    @property
    def circuit_state(self) -> CircuitState:
        """``closed`` | ``open`` | ``half_open``, for status pages and metrics."""
        return self.breaker.state

    async def start(self) -> None:
        await self.backend.start()

    async def sees(self) -> bool:
        """Whether key frames go to the model: ``vision`` true, or ``auto`` and the backend says it can see."""
        if self.vision == "auto":
            return await self.backend.can_see()
        return self.vision

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
        images: Mapping[int, bytes] | None = None,
    ) -> Assessment:
        """The LLM's assessment of ``observation`` given the rules engine's ``rules``, or ``rules``
        labelled as the fallback (see module doc). ``images``: key frames (image id: JPEG, best
        first), sent when the model sees. Never raises for an LLM failure."""
        if self.breaker.blocks():
            return self._fallback(observation, rules, self._circuit_open())
        frames = dict(images or {})
        if frames and not await self.sees():
            frames = {}
        version = VISION_PROMPT_VERSION if frames else self.prompt_version
        messages = build_messages(
            observation,
            rules,
            thresholds=self.thresholds,
            context=context,
            zones=zones,
            baseline=baseline,
            version=version,
            images=list(frames.values()),
        )
        async with self._slots.hold():
            # Checked again: the circuit may have opened, or another caller claimed the
            # half-open trial, while this one waited for a slot.
            if not self.breaker.allow():
                return self._fallback(observation, rules, self._circuit_open())
            try:
                result = await self._ask(
                    observation, rules, messages, context=context, zones=zones, version=version, frames=tuple(frames)
                )
            except _Fallback as failed:
                if failed.reason == "rejected":
                    # The backend answered, in valid JSON: the model is weak, not down. The breaker
                    # is for outages (timeouts, errors, broken output); tripping it on words would
                    # skip the next events' LLM phase after three ungrounded replies.
                    self.breaker.success()
                else:
                    self.breaker.failure()
                return self._fallback(observation, rules, failed)
            except asyncio.CancelledError:
                self.breaker.abandon()
                raise
        self.breaker.success()
        return result

    async def write_digest(self, facts: str, timeout_s: float) -> str:
        """The digest's prose for ``facts`` (``reasoning.digest``), through this reasoner's slots
        and circuit breaker (see module doc); raises ``DigestProseError`` with the reason when it
        has none: ``circuit open``, ``busy`` (no slot within ``timeout_s``) or the call's failure."""
        if self.breaker.blocks():
            raise DigestProseError(f"circuit open: {self._circuit_open().brief}")
        try:
            async with asyncio.timeout(timeout_s):
                await self._slots.acquire(urgent=False)
        except TimeoutError:
            raise DigestProseError(f"busy: no LLM slot free within {timeout_s:g}s (events' calls go first)") from None
        try:
            if not self.breaker.allow():
                raise DigestProseError(f"circuit open: {self._circuit_open().brief}")
            try:
                prose = await write_prose(self.backend, facts, timeout_s)
            except DigestProseError as err:
                # An outage (timeout, unreachable, broken output) counts towards the breaker as
                # an event's call would; prose refused for its content is the model, not an outage.
                if err.outage:
                    self.breaker.failure()
                else:
                    self.breaker.success()
                raise
            except asyncio.CancelledError:
                self.breaker.abandon()
                raise
            self.breaker.success()
            return prose
        finally:
            self._slots.release()

    def _circuit_open(self) -> _Fallback:
        return _Fallback(
            "circuit open",
            f"LLM skipped after {self.breaker.threshold} failures in a row; next try after {self.breaker.reset_s:g}s",
        )

    async def _ask(
        self,
        observation: Observation,
        rules: Assessment,
        messages: list[ChatMessage],
        *,
        context: Mapping[str, Any] | None,
        zones: str | None,
        version: str,
        frames: tuple[int, ...],
    ) -> Assessment:
        """One call, and one retry if the reply is not a valid answer or not a grounded one."""
        failed: _Fallback | None = None
        evidence = Evidence.of(
            observation, objects=rules.objects or None, context=context, zones=zones, saw_picture=bool(frames)
        )
        checked = lowering_grounds(observation, context, self.lowering_checks)
        for attempt in (1, 2):
            try:
                async with asyncio.timeout(self.timeout_s):
                    reply = await self.backend.complete(messages, _answer_schema(version))
            except TimeoutError:
                raise _Fallback("timeout", f"no reply within {self.timeout_s:g}s") from None
            except LlmError as err:
                raise _Fallback(err.reason, err.brief, str(err)) from None
            try:
                answer = parse_reply(reply.text, version)
            except ValidationError as err:
                failed = _Fallback("invalid output", f"{err.error_count()} schema errors, first: {_first_error(err)}")
                log.warning(
                    "llm reply invalid camera_id=%s attempt=%d errors=%d first=%r reply=%r",
                    observation.camera_id,
                    attempt,
                    err.error_count(),
                    _first_error(err),
                    reply.text[:200],
                )
                continue
            grounds = checked
            if grounds is None and isinstance(answer, VisionAssessment) and frames:
                grounds = activity_grounds(answer, observation, rules, context)
            result = self._from_answer(observation, rules, answer, reply, attempt, grounds, frames, version)
            texts = {"summary": answer.summary, "reasoning": answer.reasoning}
            if isinstance(answer, VisionAssessment):
                texts["description"] = answer.description
                texts |= {f"threat indicator {i + 1}": t for i, t in enumerate(answer.threat_indicators)}
            texts |= {f"factor {f.name}": f"{f.name.replace('_', ' ')}: {f.detail}" for f in answer.factors}
            verdict = review(texts, evidence, result.risk_level)
            problem = verdict.problem
            if problem is None:
                return replace(result, model_observations=verdict.observations)
            failed = _Fallback("rejected", problem)
            log.warning(
                "llm reply rejected camera_id=%s attempt=%d problem=%r reply=%r",
                observation.camera_id,
                attempt,
                problem,
                reply.text[:200],
            )
        assert failed is not None
        raise failed

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
        self,
        observation: Observation,
        rules: Assessment,
        answer: Answer,
        reply: LlmReply,
        attempts: int,
        grounds: str | None,
        frames: tuple[int, ...],
        version: str,
    ) -> Assessment:
        capped = next((f.detail for f in rules.factors if f.name == RULES_CAP and f.points < 0), None)
        seen = answer if isinstance(answer, VisionAssessment) and frames else None
        suggested = raised_score(seen, rules) if seen is not None else answer.risk_score
        score, settled = settle_score(suggested, rules.risk_score, self.max_adjust, grounds, capped=capped)
        level = self.thresholds.level(score)
        notes: list[str] = []
        said_level = self.thresholds.level(answer.risk_score)
        if said_level != answer.risk_level:
            notes.append(
                f"Level set by the server: the model said {answer.risk_level} for score {answer.risk_score},"
                f" which the configured thresholds make {said_level}."
            )
        if seen is not None and suggested != answer.risk_score:
            notes.append(
                f"The model saw {seen.activity}, which asks for at least {suggested} (it said {answer.risk_score})."
            )
        if settled is not None:
            notes.append(f"{settled}.")
        moved = (
            f"the LLM moved the rules score {rules.risk_score} to {score}"
            if score != rules.risk_score
            else f"the LLM kept the rules score {rules.risk_score}"
        )
        factors = [
            *rules.factors,
            RiskFactor(name="llm_adjustment", points=score - sum(f.points for f in rules.factors), detail=moved),
        ]
        if seen is not None:
            effect = f"sets at least {suggested}" if suggested != answer.risk_score else "no minimum score of its own"
            factors.append(RiskFactor(name="llm_activity", points=0, detail=f"{seen.activity} (seen): {effect}"))
        if suggested < rules.risk_score:
            if grounds is None:
                factors.append(RiskFactor(name=LOWERING_REFUSED, points=0, detail=settled or moved))
            else:
                factors.append(RiskFactor(name=LOWERING_GROUNDS, points=0, detail=grounds))
        factors += [RiskFactor(name=f"llm_{f.name}", points=0, detail=f.detail) for f in answer.factors]
        tokens_per_s = reply.tokens_per_s
        log.info(
            "llm assessed camera_id=%s model=%s prompt_version=%s risk_score=%d risk_level=%s suggested_score=%d"
            " rules_score=%d level_corrected=%s attempts=%d seconds=%.2f completion_tokens=%s tokens_per_s=%s",
            observation.camera_id,
            self.backend.model,
            version,
            score,
            level,
            answer.risk_score,
            rules.risk_score,
            said_level != answer.risk_level,
            attempts,
            reply.seconds,
            reply.completion_tokens,
            f"{tokens_per_s:.1f}" if tokens_per_s is not None else None,
        )
        # Small models open with stray punctuation (", no, ..."): trimmed, the words are kept as written.
        summary = answer.summary.strip().lstrip(",;:.- ")
        reasoning = answer.reasoning.strip().lstrip(",;:.- ")
        headline = summary.rstrip(".")
        description = reasoning if reasoning.startswith(headline) else f"{headline}. {reasoning}"
        if seen is not None:
            # A model that saw the frames describes them: that is its description.
            description = seen.description.strip()
        return Assessment(
            risk_score=score,
            risk_level=level,
            # The headline stays the rules' factual summary; the model's words are its description.
            summary=rules.summary,
            reasoning=" ".join([rules.reasoning, f"LLM ({self.backend.model}): {moved}.", *notes]),
            factors=factors,
            analysis_source="llm",
            model=self.backend.model,
            objects=rules.objects,
            prompt_version=version,
            description=description,
            activity=answer.activity if isinstance(answer, VisionAssessment) else None,
            threat_indicators=tuple(answer.threat_indicators) if isinstance(answer, VisionAssessment) else (),
            frames_sent=frames,
            confidence=answer.confidence if isinstance(answer, VisionAssessment) else None,
        )


def _first_error(err: ValidationError) -> str:
    first = err.errors(include_url=False)[0]
    where = ".".join(str(part) for part in first["loc"]) or "reply"
    return f"{where}: {first['msg']}"
