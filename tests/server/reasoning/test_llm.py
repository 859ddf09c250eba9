"""When the LLM is down, slow or talks nonsense, the rules assessment comes back, labelled, and the
circuit breaker stops the server from waiting on a broken LLM.

TEST DOUBLE: ``MisbehavingLlmServer`` is a tiny local aiohttp server speaking the OpenAI chat
completions protocol, scripted to be slow, to answer garbage or schema-violating JSON, or to
answer well. It stands in for a misbehaving LLM server, which cannot be produced on demand
from a real model; the real-model paths are in backends/test_llamacpp.py and backends/test_openai.py.

FAKE: ``FakeLlmBackend`` is an in-process ``LlmBackend`` returning scripted replies of the kinds
the real SmolLM2-135M model wrote in the alert-quality review (issue 16): a score far below
the rules', a weapon nobody saw, "High, High, High", a reasoning of ", ". The real model
cannot be made to write each of them on demand; its own path is tested in
tests/server/pipeline/test_llm_stage.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp import web

from inference_server.config import LlmSettings
from inference_server.domain import Assessment, Detection, Observation
from inference_server.reasoning.backends.base import LlmReply, build_llm_backend
from inference_server.reasoning.backends.openai import OpenAiBackend
from inference_server.reasoning.llm import LOWERING_GROUNDS, LOWERING_REFUSED, LlmReasoner
from inference_server.reasoning.prompts import PROMPT_VERSION, ChatMessage, answer_schema
from inference_server.reasoning.reasoner import LevelThresholds, Reasoner
from inference_server.reasoning.rules import MODEL_NAME as RULES_MODEL
from inference_server.reasoning.rules import RulesReasoner
from inference_server.schemas import RiskFactor
from tests.support.net import free_port

OBSERVATION = Observation(
    "back_door",
    "Back Door",
    datetime(2026, 11, 24, 2, 10, tzinfo=UTC),
    [Detection("person", 0.92, (0.1, 0.1, 0.4, 0.9))],
)
RULES = RulesReasoner(LevelThresholds()).assess_now(OBSERVATION)

GOOD = {
    "reasoning": "A person at the back door at 02:10 while the alarm is armed.",
    "factors": [{"name": "night_entry", "detail": "back door at night"}],
    "risk_score": 80,
    "risk_level": "high",
    "summary": "Person at the back door at night",
}


@dataclass
class MisbehavingLlmServer:
    """TEST DOUBLE of an OpenAI-compatible LLM server (see module docstring).

    Each request takes the next behaviour from ``script`` (the last one repeats):
    ``good``, ``slow`` (sleeps ``slow_s`` first), ``garbage`` (prose, not JSON),
    ``violation`` (JSON that breaks the schema), ``inconsistent`` (score 1, level high).
    """

    script: list[str] = field(default_factory=lambda: ["good"])
    slow_s: float = 5.0
    requests: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append(await request.json())
        self.headers.append(dict(request.headers))
        behaviour = self.script[min(len(self.requests), len(self.script)) - 1]
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if behaviour == "slow":
                await asyncio.sleep(self.slow_s)
            content = {
                "good": json.dumps(GOOD),
                "slow": json.dumps(GOOD),
                "garbage": "I think the person is probably the neighbour, nothing to worry about!",
                "violation": json.dumps({**GOOD, "risk_score": 150, "risk_level": "extreme"}),
                "inconsistent": json.dumps({**GOOD, "risk_score": 1, "risk_level": "high"}),
            }[behaviour]
        finally:
            self.in_flight -= 1
        return web.json_response(
            {
                "id": "chatcmpl-test",
                "object": "chat.completion",
                "model": "test-double",
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
                ],
                "usage": {"prompt_tokens": 600, "completion_tokens": 60, "total_tokens": 660},
            }
        )


@pytest.fixture
async def llm_server() -> AsyncIterator[MisbehavingLlmServer]:
    double = MisbehavingLlmServer()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", double.handle)
    runner = web.AppRunner(app, handler_cancellation=True)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    double.url = f"http://127.0.0.1:{port}"
    yield double
    await runner.cleanup()


class ManualClock:
    """The circuit breaker's clock (monotonic seconds), moved on by the test instead of waiting."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
async def make_reasoner() -> AsyncIterator[Any]:
    made: list[LlmReasoner] = []

    def make(base_url: str, clock: Callable[[], float] = time.monotonic, **overrides: Any) -> LlmReasoner:
        values: dict[str, Any] = {
            "backend": "openai",
            "base_url": base_url,
            "model": "test-double",
            "timeout_s": 2.0,
            "circuit_failures": 3,
            "circuit_reset_s": 60.0,
        }
        values.update(overrides)
        reasoner = LlmReasoner.from_settings(LlmSettings(**values), LevelThresholds(), clock)
        made.append(reasoner)
        return reasoner

    yield make
    for reasoner in made:
        await reasoner.close()


def _is_labelled_rules_fallback(result: Assessment, reason: str) -> bool:
    return (
        result.analysis_source == "rules"
        and result.model == RULES_MODEL
        and result.prompt_version is None
        and (result.risk_score, result.risk_level, result.factors)
        == (RULES.risk_score, RULES.risk_level, RULES.factors)
        and result.reasoning.startswith(RULES.reasoning)
        and f"LLM fallback: {reason}" in result.reasoning
    )


async def test_good_answer_is_the_llm_assessment_with_model_and_prompt_version(
    llm_server: MisbehavingLlmServer, make_reasoner: Any
) -> None:
    reasoner: Reasoner = make_reasoner(llm_server.url, api_key="s3cret")

    result = await reasoner.assess(OBSERVATION)

    assert RULES.risk_score <= 80 <= RULES.risk_score + 25, "GOOD must raise the rules score within the bound"
    assert result.analysis_source == "llm"
    assert (result.risk_score, result.risk_level) == (80, "high")
    # The headline stays the rules' factual summary; the model's words are its labelled description.
    assert result.summary == RULES.summary
    assert result.description == f"{GOOD['summary']}. {GOOD['reasoning']}"
    assert result.reasoning.startswith(RULES.reasoning) and str(GOOD["reasoning"]) not in result.reasoning
    assert (result.model, result.prompt_version) == ("test-double", PROMPT_VERSION)
    # Rules factors stay, the LLM's move is one factor, so the points still add up to the score.
    rules_points = sum(f.points for f in RULES.factors)
    assert [(f.name, f.points) for f in result.factors] == [
        *((f.name, f.points) for f in RULES.factors),
        ("llm_adjustment", 80 - rules_points),
        ("llm_night_entry", 0),
    ]
    assert sum(f.points for f in result.factors) == result.risk_score
    assert result.objects == {"person": 1}
    sent = llm_server.requests[0]
    assert sent["model"] == "test-double"
    assert sent["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "security_assessment", "strict": True, "schema": answer_schema()},
    }
    assert f"Rules engine: score {RULES.risk_score} ({RULES.risk_level})" in sent["messages"][1]["content"]
    assert llm_server.headers[0]["Authorization"] == "Bearer s3cret"


async def test_level_that_disagrees_with_the_score_is_recomputed_and_noted(
    llm_server: MisbehavingLlmServer, make_reasoner: Any
) -> None:
    llm_server.script = ["inconsistent"]

    result = await make_reasoner(llm_server.url).assess(OBSERVATION)

    assert result.analysis_source == "llm"
    # Score 1 would lower the rules' score without a checkable reason: the rules' score stays.
    assert (result.risk_score, result.risk_level) == (RULES.risk_score, RULES.risk_level)
    assert "the model said high for score 1, which the configured thresholds make low" in result.reasoning


async def test_unreachable_llm_falls_back_to_labelled_rules(
    make_reasoner: Any, caplog: pytest.LogCaptureFixture
) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    caplog.set_level(logging.WARNING, logger="inference_server.reasoning.llm")

    result = await make_reasoner(closed).assess(OBSERVATION)

    assert _is_labelled_rules_fallback(result, "unreachable")
    assert any("llm fallback camera_id=back_door reason=unreachable" in r.getMessage() for r in caplog.records)


async def test_slow_llm_falls_back_after_the_timeout_without_retrying(
    llm_server: MisbehavingLlmServer, make_reasoner: Any, caplog: pytest.LogCaptureFixture
) -> None:
    llm_server.script = ["slow"]
    caplog.set_level(logging.WARNING, logger="inference_server.reasoning.llm")
    reasoner = make_reasoner(llm_server.url, timeout_s=0.3)

    started = time.monotonic()
    result = await reasoner.assess(OBSERVATION)
    elapsed = time.monotonic() - started

    assert _is_labelled_rules_fallback(result, "timeout (no reply within 0.3s)")
    assert elapsed < 1.5
    assert len(llm_server.requests) == 1
    assert reasoner.fallbacks == {"timeout": 1}
    assert any("reason=timeout" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("behaviour", ["garbage", "violation"])
async def test_invalid_output_is_retried_once_then_falls_back(
    llm_server: MisbehavingLlmServer, make_reasoner: Any, behaviour: str
) -> None:
    llm_server.script = [behaviour]

    result = await make_reasoner(llm_server.url).assess(OBSERVATION)

    assert _is_labelled_rules_fallback(result, "invalid output")
    assert len(llm_server.requests) == 2


async def test_one_invalid_reply_is_rescued_by_the_retry(llm_server: MisbehavingLlmServer, make_reasoner: Any) -> None:
    llm_server.script = ["garbage", "good"]

    result = await make_reasoner(llm_server.url).assess(OBSERVATION)

    assert result.analysis_source == "llm"
    assert result.risk_score == 80
    assert len(llm_server.requests) == 2


async def test_circuit_opens_after_n_failures_skips_the_llm_and_closes_after_cooldown_on_success(
    llm_server: MisbehavingLlmServer, make_reasoner: Any
) -> None:
    llm_server.script = ["garbage"]
    clock = ManualClock()
    reasoner = make_reasoner(llm_server.url, clock, circuit_failures=2, circuit_reset_s=60)

    first = await reasoner.assess(OBSERVATION)
    assert reasoner.circuit_state == "closed"
    second = await reasoner.assess(OBSERVATION)
    assert reasoner.circuit_state == "open"
    asked = len(llm_server.requests)

    skipped = await reasoner.assess(OBSERVATION)

    assert _is_labelled_rules_fallback(first, "invalid output")
    assert _is_labelled_rules_fallback(second, "invalid output")
    assert _is_labelled_rules_fallback(skipped, "circuit open")
    assert len(llm_server.requests) == asked == 4  # two calls, each retried once; none while open

    clock.advance(59.9)
    assert reasoner.circuit_state == "open"
    clock.advance(0.1)
    assert reasoner.circuit_state == "half_open"
    llm_server.script = ["good"]
    llm_server.requests.clear()

    recovered = await reasoner.assess(OBSERVATION)

    assert recovered.analysis_source == "llm"
    assert reasoner.circuit_state == "closed"
    assert len(llm_server.requests) == 1
    assert reasoner.fallbacks == {"invalid output": 2, "circuit open": 1}


async def test_failed_half_open_trial_reopens_the_circuit(llm_server: MisbehavingLlmServer, make_reasoner: Any) -> None:
    clock = ManualClock()
    reasoner = make_reasoner(f"http://127.0.0.1:{free_port()}", clock, circuit_failures=1, circuit_reset_s=60)

    await reasoner.assess(OBSERVATION)
    assert reasoner.circuit_state == "open"
    clock.advance(60)
    trial = await reasoner.assess(OBSERVATION)

    assert _is_labelled_rules_fallback(trial, "unreachable")
    assert reasoner.circuit_state == "open"
    assert _is_labelled_rules_fallback(await reasoner.assess(OBSERVATION), "circuit open")


async def test_no_more_than_max_concurrency_calls_reach_the_llm(
    llm_server: MisbehavingLlmServer, make_reasoner: Any
) -> None:
    llm_server.script = ["slow"]
    llm_server.slow_s = 0.2
    reasoner = make_reasoner(llm_server.url, max_concurrency=2)

    results = await asyncio.gather(*(reasoner.assess(OBSERVATION) for _ in range(5)))

    assert [r.analysis_source for r in results] == ["llm"] * 5
    assert llm_server.max_in_flight == 2


async def test_refine_keeps_the_rules_phase_result_it_was_given(
    llm_server: MisbehavingLlmServer, make_reasoner: Any
) -> None:
    # The pipeline publishes the rules result first (phase one), then asks the LLM to refine it.
    llm_server.script = ["garbage"]

    result = await make_reasoner(llm_server.url).refine(
        OBSERVATION, RULES, context={"alarm": "armed_away"}, zones=None, baseline=None
    )

    assert _is_labelled_rules_fallback(result, "invalid output")
    assert "- alarm: armed_away" in llm_server.requests[0]["messages"][1]["content"]


def test_backends_are_chosen_by_name_and_say_what_they_need() -> None:
    backend = build_llm_backend(LlmSettings(backend="openai", base_url="http://127.0.0.1:11434/v1/", model="qwen3"))
    assert isinstance(backend, OpenAiBackend)
    assert backend.url == "http://127.0.0.1:11434/v1/chat/completions"
    with pytest.raises(ValueError, match="needs base_url and model"):
        build_llm_backend(LlmSettings(backend="openai"))
    with pytest.raises(ValueError, match="needs model_path"):
        build_llm_backend(LlmSettings(backend="llamacpp"))
    with pytest.raises(ValueError, match="unknown llm backend 'tensorrt'"):
        build_llm_backend(LlmSettings(backend="tensorrt"))
    with pytest.raises(ValueError, match="unknown prompt version 'security-v0'"):
        LlmReasoner(backend, LevelThresholds(), prompt_version="security-v0")


@dataclass
class FakeLlmBackend:
    """FAKE ``LlmBackend`` (see module docstring): replies from ``replies`` in order, the last repeating."""

    replies: list[dict[str, Any] | str]
    name: str = "fake"
    model: str = "fake-model"
    calls: int = 0

    async def start(self) -> None:
        return None

    async def complete(self, messages: Sequence[ChatMessage], schema: Mapping[str, Any]) -> LlmReply:
        reply = self.replies[min(self.calls, len(self.replies) - 1)]
        self.calls += 1
        return LlmReply(text=reply if isinstance(reply, str) else json.dumps(reply), seconds=0.01)

    async def can_see(self) -> bool:
        return False

    async def close(self) -> None:
        return None


def _fake(*replies: dict[str, Any] | str, **kwargs: Any) -> tuple[LlmReasoner, FakeLlmBackend]:
    backend = FakeLlmBackend(list(replies))
    return LlmReasoner(backend, LevelThresholds(), **kwargs), backend


def _answer(**changes: Any) -> dict[str, Any]:
    return {**GOOD, **changes}


async def test_a_lower_score_without_a_checkable_reason_is_refused_and_recorded() -> None:
    reasoner, _ = _fake(_answer(risk_score=12, risk_level="low"))

    result = await reasoner.refine(OBSERVATION, RULES)

    assert result.analysis_source == "llm"
    assert (result.risk_score, result.risk_level) == (RULES.risk_score, RULES.risk_level)
    refused = f"LLM suggested 12; lowering needs a checkable reason: kept {RULES.risk_score}"
    assert [(f.name, f.points, f.detail) for f in result.factors if f.name == LOWERING_REFUSED] == [
        (LOWERING_REFUSED, 0, refused)
    ]
    assert refused in result.reasoning
    assert next(f.points for f in result.factors if f.name == "llm_adjustment") == 0
    assert sum(f.points for f in result.factors) == result.risk_score


async def test_a_verified_reason_allows_lowering_within_the_bound() -> None:
    def known_person(observation: Observation, context: Mapping[str, Any] | None) -> str:
        return "known_person: Anna recognised at 0.93 (a future recognition check)"

    reasoner, _ = _fake(_answer(risk_score=RULES.risk_score - 10), lowering_checks=[known_person])
    lowered = await reasoner.refine(OBSERVATION, RULES)
    assert lowered.risk_score == RULES.risk_score - 10
    assert [f.detail for f in lowered.factors if f.name == LOWERING_GROUNDS] == [known_person(OBSERVATION, None)]

    reasoner, _ = _fake(_answer(risk_score=0), lowering_checks=[known_person], max_adjust=25)
    bounded = await reasoner.refine(OBSERVATION, RULES)
    assert bounded.risk_score == RULES.risk_score - 25
    assert "the LLM said 0, more than 25 points" in bounded.reasoning


async def test_a_raise_is_allowed_up_to_the_bound() -> None:
    reasoner, _ = _fake(_answer(risk_score=100, risk_level="critical"), max_adjust=10)

    result = await reasoner.refine(OBSERVATION, RULES)

    assert result.risk_score == RULES.risk_score + 10
    assert sum(f.points for f in result.factors) == result.risk_score


async def test_a_raise_cannot_pass_a_rules_cap() -> None:
    # The rules cap an uncorroborated sighting below critical; the LLM's opinion is no corroboration.
    why = "capped at high: critical needs two signals of a real activity, there is only a confident detection"
    capped = replace(RULES, factors=[*RULES.factors, RiskFactor(name="cap", points=-2, detail=why)])
    reasoner, _ = _fake(_answer(risk_score=RULES.risk_score + 10))

    result = await reasoner.refine(OBSERVATION, capped)

    assert result.risk_score == RULES.risk_score
    assert f"LLM suggested {RULES.risk_score + 10}; the rules cap the score ({why})" in result.reasoning


def _is_rejected(result: Assessment, problem: str) -> bool:
    return _is_labelled_rules_fallback(result, f"rejected ({problem})")


async def test_a_weapon_nobody_saw_is_rejected_retried_then_the_rules_stand() -> None:
    weapon = _answer(summary="A person armed with a gun at the back door")
    reasoner, backend = _fake(weapon)

    result = await reasoner.refine(OBSERVATION, RULES)

    assert _is_rejected(result, "summary names a weapon not in the evidence: 'armed with'")
    assert result.description is None
    assert backend.calls == 2
    assert reasoner.fallbacks == {"rejected": 1}


async def test_ungrounded_replies_do_not_open_the_outage_circuit() -> None:
    """A weak model's rejected words are not an outage: after more rejections than the breaker's
    threshold the LLM is still asked for the next event (it was skipped for 60 s before)."""
    weapon = _answer(summary="A person armed with a gun at the back door")
    reasoner, backend = _fake(weapon, circuit_failures=3)

    for _ in range(4):
        result = await reasoner.refine(OBSERVATION, RULES)
        assert _is_rejected(result, "summary names a weapon not in the evidence: 'armed with'")

    assert reasoner.circuit_state == "closed"
    assert backend.calls == 8  # two tries for each of the four events: none skipped
    assert reasoner.fallbacks == {"rejected": 4}


async def test_a_rejected_reply_is_rescued_by_a_grounded_retry() -> None:
    reasoner, backend = _fake(_answer(reasoning="An explosive device by the door."), GOOD)

    result = await reasoner.refine(OBSERVATION, RULES)

    assert result.analysis_source == "llm" and backend.calls == 2
    assert result.description is not None and "explosive" not in result.description


@pytest.mark.parametrize(
    ("reply", "problem"),
    [
        (_answer(summary="High, High, High, High"), "summary repeats 'high' three times in a row"),
        (_answer(reasoning=", "), "reasoning is empty (', ')"),
        (
            _answer(reasoning="The risk of this observation is low.", risk_score=12, risk_level="low"),
            f"reasoning says 'risk of this observation is low' while the level is {RULES.risk_level}",
        ),
        (_answer(summary="Two people at the back door"), "summary counts two people where the detector saw 1 person"),
    ],
)
async def test_repeated_empty_contradicting_or_miscounted_replies_are_rejected(
    reply: dict[str, Any], problem: str
) -> None:
    reasoner, backend = _fake(reply)

    result = await reasoner.refine(OBSERVATION, RULES)

    assert _is_rejected(result, problem)
    assert backend.calls == 2
