"""Phase two through the whole server: the rules publish `new`, the LLM's `update` follows on
the same event id; an LLM that cannot be reached leaves the rules result, labelled, with the reason."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime

import asyncpg

from inference_server import demo_assets
from inference_server.clock import SystemClock
from inference_server.config import LlmSettings, Settings
from inference_server.detection.ultralytics_backend import UltralyticsDetector
from inference_server.domain import Assessment
from inference_server.pipeline.llm import bound_adjustment
from inference_server.reasoning.llm import LOWERING_GROUNDS, LOWERING_REFUSED
from inference_server.reasoning.reasoner import LevelThresholds
from inference_server.schemas import EventMessage, HouseholdContext, RiskFactor
from inference_server.server import Server
from inference_server.store import context, events
from inference_server.telemetry.metrics import REGISTRY
from tests.support.fake_vlm import FakeVlm, assessments
from tests.support.mqtt import Subscriber
from tests.support.net import free_port
from tests.support.waiting import wait_until

from ..conftest import drop, running

ARMED_AWAY_NOBODY_HOME = HouseholdContext(alarm_state="armed_away", people_home=[], sun="below_horizon")


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
    """The real SmolLM2-135M model: it answers 1-15 nearly always, which must never lower a
    rules-high event nor replace the rules' headline; its words are only a labelled description."""
    llm = LlmSettings(backend="llamacpp", model_path=demo_assets.smollm2_gguf(), timeout_s=60, temperature=0.0)
    settings = make_settings(mqtt_url=mosquitto_url, llm=llm)
    subscriber = await Subscriber(mosquitto_url, "hsi/events").ready()
    try:
        async with running(settings, pose_detector) as server:
            await context.put(server.pool, ARMED_AWAY_NOBODY_HOME, "test", set_at=datetime(2026, 11, 23, tzinfo=UTC))
            drop(demo_assets.image("astronaut.png"), settings.cameras_path / "hall" / "MDAlarm_20261124-021000.png")
            new, update = await _phases(subscriber)
            row = await server.pool.fetchrow("SELECT llm_state, rules_result, llm_result FROM events")
            stored = await events.get(server.pool, update.id)
    finally:
        subscriber.close()
    assert new.analysis_source == "rules" and new.id == update.id and new.alert
    assert update.alert is (row["llm_state"] == "done")  # a fallback repeats the rules: no new alert
    assert row["rules_result"]["risk_score"] == new.risk_score  # phase one is kept beside phase two
    # A person at night, armed away, nobody home: the rules say high or critical; the LLM cannot lower it.
    assert new.risk_level in {"high", "critical"}
    assert update.risk_score >= new.risk_score and update.risk_level in {"high", "critical"}
    # The headline is the rules' factual summary, in the payload and in the stored event.
    assert update.summary == new.summary == row["rules_result"]["summary"]
    assert stored is not None and stored.summary == new.summary
    if row["llm_state"] == "done":
        assert update.analysis_source == "llm" and update.model == "SmolLM2-135M-Instruct.Q4_1"
        assert update.prompt_version == "security-v1"
        assert update.risk_score - new.risk_score <= llm.max_adjust
        assert LevelThresholds().level(update.risk_score) == update.risk_level
        assert row["llm_result"]["analysis_source"] == "llm"
        assert update.description and stored.description == update.description and update.llm_error is None
    else:  # the 135M model may fail validation or grounding twice: then the fallback must say why
        assert row["llm_state"] == "failed" and update.analysis_source == "rules"
        assert update.llm_error is not None and update.llm_error.split(" (")[0] in {"invalid output", "rejected"}
        assert f"LLM fallback: {update.llm_error}" in update.reasoning
        assert update.description is None and stored.llm_error == update.llm_error


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
    assert update.llm_error is not None and update.llm_error.startswith("unreachable")
    assert update.description is None and update.summary == new.summary
    # The rules' judgement was told by `new`; the fallback's update records it and alerts nobody.
    assert new.alert and not update.alert
    assert row["llm_state"] == "failed" and "unreachable" in row["llm_result"]["error"]
    assert row["analysis_source"] == "rules"
    assert (REGISTRY.get_sample_value("hsi_llm_calls_total", {"outcome": "unreachable"}) or 0) >= 1


def _llm(score: int, *extra: RiskFactor) -> Assessment:
    return Assessment(
        score,
        LevelThresholds().level(score),
        "s",
        "calm",
        [
            RiskFactor(name="person_seen", points=100, detail="d"),
            RiskFactor(name="llm_adjustment", points=score - 100, detail="the LLM's view"),
            *extra,
        ],
        "llm",
        "tiny",
    )


def test_llm_cannot_lower_the_rules_score_by_opinion_nor_raise_it_past_the_bound() -> None:
    rules = Assessment(
        100, "critical", "s", "r", [RiskFactor(name="person_seen", points=100, detail="d")], "rules", "r"
    )
    kept = bound_adjustment(_llm(1), rules, 25, LevelThresholds())
    assert (kept.risk_score, kept.risk_level) == (100, "critical")
    assert sum(f.points for f in kept.factors) == 100
    assert "LLM suggested 1; lowering needs a checkable reason: kept 100" in kept.reasoning
    assert [(f.name, f.points) for f in kept.factors[1:]] == [("llm_adjustment", 0), (LOWERING_REFUSED, 0)]

    rules_40 = replace(rules, risk_score=40, risk_level="medium", factors=[RiskFactor(name="p", points=40, detail="d")])
    raised = bound_adjustment(
        replace(_llm(100), factors=[*rules_40.factors, RiskFactor(name="llm_adjustment", points=60, detail="d")]),
        rules_40,
        25,
        LevelThresholds(),
    )
    assert (raised.risk_score, raised.risk_level) == (65, "high")
    assert sum(f.points for f in raised.factors) == 65
    assert "the LLM said 100" in raised.reasoning

    # A lowering the reasoner allowed for a verified reason stays, within the bound.
    grounded = _llm(80, RiskFactor(name=LOWERING_GROUNDS, points=0, detail="known_person: Anna"))
    assert bound_adjustment(grounded, rules, 25, LevelThresholds()) is grounded
    assert bound_adjustment(_llm(100), rules, 100, LevelThresholds()).risk_score == 100


async def test_a_stop_during_phase_two_gives_the_event_back_at_once(
    make_settings: Callable[..., Settings], pose_detector: UltralyticsDetector, database_url: str
) -> None:
    """A model still thinking when the server stops (a minute on a CPU is not rare): the stop does
    not wait for it, and the event goes back to the LLM queue at once instead of staying claimed
    for the lease (here 240 s), so the next start takes its phase two up straight away. Before:
    the stop waited for the model until its 10 s grace ran out, and the event stayed claimed."""
    fake = FakeVlm(hold=asyncio.Event())
    await fake.start()
    llm = LlmSettings(backend="openai", base_url=fake.base_url, model="fake-vlm", timeout_s=60)
    settings = make_settings(llm=llm)
    server = Server(settings, detector=pose_detector, clock=SystemClock())
    stopped = False
    try:
        await server.start()
        drop(demo_assets.image("zidane.jpg"), settings.cameras_path / "hall" / "MDAlarm_20261124-021000.jpg")
        await wait_until(lambda: assessments(fake), timeout=60, what="the LLM asked")
        claimed = await server.pool.fetchrow("SELECT id, llm_state, llm_claimed_until FROM events")
        assert claimed["llm_state"] == "running" and claimed["llm_claimed_until"] is not None
        await asyncio.wait_for(server.stop(), 8)
        stopped = True
    finally:
        if not stopped:
            await server.stop()
        fake.hold.set()
        await fake.close()
    db = await asyncpg.connect(database_url)
    try:
        row = await db.fetchrow("SELECT llm_state, llm_claimed_until FROM events WHERE id = $1", claimed["id"])
    finally:
        await db.close()
    assert (row["llm_state"], row["llm_claimed_until"]) == ("pending", None)
