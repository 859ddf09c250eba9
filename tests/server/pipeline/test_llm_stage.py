"""Phase two through the whole server: the rules publish `new`, the LLM's `update` follows on
the same event id; an LLM that cannot be reached leaves the rules result, labelled, with the reason."""

from __future__ import annotations

from collections.abc import Callable

from inference_server import demo_assets
from inference_server.config import LlmSettings, Settings
from inference_server.detection.ultralytics_backend import UltralyticsDetector
from inference_server.domain import Assessment
from inference_server.pipeline.llm import bound_adjustment
from inference_server.reasoning.reasoner import LevelThresholds
from inference_server.schemas import EventMessage, RiskFactor
from inference_server.telemetry.metrics import REGISTRY
from tests.support.mqtt import Subscriber
from tests.support.net import free_port

from ..conftest import drop, running


async def _phases(subscriber: Subscriber) -> tuple[EventMessage, EventMessage]:
    new = EventMessage.model_validate_json(
        (await subscriber.wait_for(lambda m: b'"type":"new"' in m.payload, timeout=60)).payload
    )
    update = EventMessage.model_validate_json(
        (await subscriber.wait_for(lambda m: b'"type":"update"' in m.payload, timeout=120)).payload
    )
    return new, update


async def test_llm_update_follows_the_rules_alert_on_the_same_event(
    make_settings: Callable[..., Settings], pose_detector: UltralyticsDetector, mosquitto_url: str
) -> None:
    llm = LlmSettings(backend="llamacpp", model_path=demo_assets.smollm2_gguf(), timeout_s=60, temperature=0.0)
    settings = make_settings(mqtt_url=mosquitto_url, llm=llm)
    subscriber = await Subscriber(mosquitto_url, "hsi/events").ready()
    try:
        async with running(settings, pose_detector) as server:
            drop(demo_assets.image("astronaut.png"), settings.cameras_path / "hall" / "MDAlarm_20261124-021000.png")
            new, update = await _phases(subscriber)
            row = await server.pool.fetchrow("SELECT llm_state, rules_result, llm_result FROM events")
    finally:
        subscriber.close()
    assert new.analysis_source == "rules" and new.id == update.id and new.alert
    assert update.alert is (row["llm_state"] == "done")  # a fallback repeats the rules: no new alert
    assert row["rules_result"]["risk_score"] == new.risk_score  # phase one is kept beside phase two
    if row["llm_state"] == "done":
        assert update.analysis_source == "llm" and update.model == "SmolLM2-135M-Instruct.Q4_1"
        assert update.prompt_version == "security-v1"
        assert abs(update.risk_score - new.risk_score) <= llm.max_adjust
        assert LevelThresholds().level(update.risk_score) == update.risk_level
        assert row["llm_result"]["analysis_source"] == "llm"
    else:  # the 135M model may fail validation twice: then the fallback must say so
        assert row["llm_state"] == "failed" and update.analysis_source == "rules"
        assert "LLM fallback: invalid output" in update.reasoning


async def test_unreachable_llm_leaves_the_rules_result_labelled_with_the_reason(
    make_settings: Callable[..., Settings], pose_detector: UltralyticsDetector, mosquitto_url: str
) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    llm = LlmSettings(backend="openai", base_url=closed, model="none", timeout_s=2)
    settings = make_settings(mqtt_url=mosquitto_url, llm=llm)
    subscriber = await Subscriber(mosquitto_url, "hsi/events").ready()
    try:
        async with running(settings, pose_detector) as server:
            drop(demo_assets.image("zidane.jpg"), settings.cameras_path / "hall" / "MDAlarm_20261124-021000.jpg")
            new, update = await _phases(subscriber)
            row = await server.pool.fetchrow("SELECT llm_state, llm_result, analysis_source FROM events")
    finally:
        subscriber.close()
    assert (new.risk_score, new.risk_level) == (update.risk_score, update.risk_level)
    assert update.analysis_source == "rules" and "LLM fallback: unreachable" in update.reasoning
    # The rules' judgement was told by `new`; the fallback's update records it and alerts nobody.
    assert new.alert and not update.alert
    assert row["llm_state"] == "failed" and "unreachable" in row["llm_result"]["error"]
    assert row["analysis_source"] == "rules"
    assert (REGISTRY.get_sample_value("hsi_llm_calls_total", {"outcome": "unreachable"}) or 0) >= 1


def test_llm_cannot_move_the_score_further_than_allowed_from_the_rules() -> None:
    rules = Assessment(
        100, "critical", "s", "r", [RiskFactor(name="person_seen", points=100, detail="d")], "rules", "r"
    )
    llm = Assessment(
        1,
        "low",
        "nothing to see",
        "calm",
        [
            RiskFactor(name="person_seen", points=100, detail="d"),
            RiskFactor(name="llm_adjustment", points=-99, detail="the LLM's view"),
        ],
        "llm",
        "tiny",
    )
    bounded = bound_adjustment(llm, rules, 25, LevelThresholds())
    assert (bounded.risk_score, bounded.risk_level) == (75, "high")
    assert sum(f.points for f in bounded.factors) == 75
    assert "the LLM said 1" in bounded.reasoning
    assert bound_adjustment(llm, rules, 100, LevelThresholds()) is llm
