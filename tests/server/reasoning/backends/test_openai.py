"""The OpenAI-compatible backend against a real server: llama-cpp-python's own server
(``python -m llama_cpp.server``) serving the SmolLM2-135M GGUF in a subprocess.

The 135M model's judgement is weak; these tests check structure and enforcement, not its opinion.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from inference_server.domain import Detection, Observation
from inference_server.reasoning.backends.openai import OpenAiBackend
from inference_server.reasoning.llm import LlmReasoner
from inference_server.reasoning.prompts import PROMPT_VERSION, answer_schema, build_messages, parse_reply
from inference_server.reasoning.reasoner import LevelThresholds
from inference_server.reasoning.rules import RulesReasoner
from tests.support.net import free_port

from .test_llamacpp import smollm2_gguf

pytestmark = pytest.mark.slow

ALIAS = "smollm2-135m"
OBSERVATION = Observation(
    "driveway",
    "Driveway",
    datetime(2026, 11, 24, 23, 40, tzinfo=UTC),
    [Detection("person", 0.81, (0.3, 0.2, 0.5, 0.9)), Detection("car", 0.9, (0.0, 0.4, 0.6, 1.0))],
)


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``python -m llama_cpp.server`` on a loopback port; yields its base URL."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("llama-server") / "server.log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "llama_cpp.server",
                "--model",
                str(smollm2_gguf()),
                "--model_alias",
                ALIAS,
                "--n_ctx",
                "4096",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"llama_cpp.server exited ({proc.returncode}):\n{log_path.read_text()[-2000:]}")
            with (
                contextlib.suppress(OSError, urllib.error.URLError),
                urllib.request.urlopen(f"{base_url}/v1/models", timeout=1) as response,
            ):
                if response.status == 200:
                    break
            if time.monotonic() > deadline:
                pytest.fail(f"llama_cpp.server did not start:\n{log_path.read_text()[-2000:]}")
            time.sleep(0.2)
        yield base_url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


async def test_server_reply_is_valid_against_the_answer_schema_and_reports_usage(llama_server: str) -> None:
    thresholds = LevelThresholds()
    rules = RulesReasoner(thresholds).assess_now(OBSERVATION)
    backend = OpenAiBackend(llama_server, ALIAS, response_format="json_object", temperature=0.0)
    try:
        reply = await backend.complete(build_messages(OBSERVATION, rules, thresholds=thresholds), answer_schema())
    finally:
        await backend.close()

    answer = parse_reply(reply.text)
    assert 0 <= answer.risk_score <= 100
    assert reply.prompt_tokens is not None and reply.prompt_tokens > 100
    assert reply.completion_tokens is not None and reply.completion_tokens > 10


async def test_server_assessment_is_labelled_llm_with_a_level_consistent_with_its_score(llama_server: str) -> None:
    thresholds = LevelThresholds()
    backend = OpenAiBackend(f"{llama_server}/v1", ALIAS, response_format="json_object", temperature=0.0)
    reasoner = LlmReasoner(backend, thresholds, timeout_s=240)
    try:
        result = await reasoner.assess(OBSERVATION)
    finally:
        await reasoner.close()

    assert result.analysis_source == "llm", result.reasoning
    assert (result.model, result.prompt_version) == (ALIAS, PROMPT_VERSION)
    assert result.risk_level == thresholds.level(result.risk_score)
    assert sum(f.points for f in result.factors) == result.risk_score
    assert result.objects == {"person": 1, "car": 1}


async def test_schema_form_the_server_rejects_is_a_labelled_fallback(llama_server: str) -> None:
    # llama-cpp-python's server knows only {"type": "json_object", "schema": ...}; the OpenAI
    # json_schema form (llama-server, vLLM, Ollama) gets an HTTP 500 from it. That must not crash.
    thresholds = LevelThresholds()
    reasoner = LlmReasoner(OpenAiBackend(llama_server, ALIAS, response_format="json_schema"), thresholds)
    try:
        result = await reasoner.assess(OBSERVATION)
    finally:
        await reasoner.close()

    assert result.analysis_source == "rules"
    assert result.reasoning.endswith("LLM fallback: bad response (HTTP 500)")
    assert result.risk_score == RulesReasoner(thresholds).assess_now(OBSERVATION).risk_score
