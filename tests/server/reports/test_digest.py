"""The digest: rules text always, the LLM's prose when it answers (labelled), the scheduled
period sent once even across restarts, and published on hsi/digest through the outbox."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import asyncpg
import pytest

from inference_server.comms.topics import Topics
from inference_server.config import LlmSettings, Settings
from inference_server.domain import Assessment, Detection, Observation
from inference_server.reasoning.backends.base import LlmBackend, LlmReply, LlmUnavailable
from inference_server.reasoning.llm import LlmReasoner
from inference_server.reasoning.prompts import ChatMessage
from inference_server.reasoning.reasoner import LevelThresholds
from inference_server.reasoning.rules import RulesReasoner
from inference_server.reports.digest import DigestService
from inference_server.reports.scheduler import DigestScheduler, latest_period, next_end
from inference_server.schemas import CameraCreate, Digest
from inference_server.server import digest_prose
from inference_server.store import cameras, events
from inference_server.store.db import create_pool
from inference_server.store.migrate import migrate
from tests.support.mqtt import Subscriber
from tests.support.waiting import wait_until

from ..conftest import FakeClock, auth_headers, running

PARIS = ZoneInfo("Europe/Paris")
#: 2025-06-02 07:00 in Paris: the end of the night of the 1st.
MORNING = datetime(2025, 6, 2, 7, 0, tzinfo=PARIS)


class FakeLlm:
    """A FAKE language model (none can run here): answers with the text given, or fails."""

    name = "fake"
    model = "fake-llm"

    def __init__(self, text: str | None = None) -> None:
        self.text = text
        self.asked: list[str] = []

    async def start(self) -> None:
        return None

    async def can_see(self) -> bool:
        return False

    async def complete(self, messages: Sequence[ChatMessage], schema: Mapping[str, Any]) -> LlmReply:
        self.asked.append(str(messages[-1]["content"]))
        if self.text is None:
            raise LlmUnavailable("connection refused")
        return LlmReply(json.dumps({"text": self.text}), 0.1)

    async def close(self) -> None:
        return None


def _reasoner(backend: LlmBackend, **options: Any) -> LlmReasoner:
    """The events' LLM reasoner, whose slots and circuit breaker the digest shares."""
    return LlmReasoner(backend, LevelThresholds(), **options)


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(database_url, 3)
    await migrate(pool)
    for camera_id, name in (("front", "Front door"), ("yard", "Back yard")):
        await cameras.create(pool, CameraCreate(id=camera_id, name=name))
    try:
        yield pool
    finally:
        await pool.close()


async def _event(pool: asyncpg.Pool, camera_id: str, at: datetime, score: int, level: str, summary: str) -> uuid.UUID:
    event_id = uuid.uuid4()
    async with pool.acquire() as conn:
        await events.insert(
            conn,
            event_id=event_id,
            camera_id=camera_id,
            image_id=None,  # type: ignore[arg-type]
            batch_id=None,
            started_at=at,
            assessment=Assessment(score, level, summary, "why", [], "rules", "rules-v2", {"person": 1}),  # type: ignore[arg-type]
            is_fast_path=False,
            snapshot_path=None,
            context=None,
            llm_pending=False,
        )
    return event_id


async def _night(pool: asyncpg.Pool) -> uuid.UUID:
    """Five events in the night of 1-2 June (Paris), one outside it; the critical one's id."""
    night = datetime(2025, 6, 1, 22, 0, tzinfo=PARIS)
    await _event(pool, "front", night + timedelta(minutes=30), 10, "low", "Cat on the path")
    critical = await _event(pool, "yard", night + timedelta(hours=4, minutes=14), 92, "critical", "Person at the shed")
    await _event(pool, "front", night + timedelta(hours=5), 65, "high", "Person at the door")
    await _event(pool, "front", night + timedelta(hours=6), 40, "medium", "Car in the drive")
    await _event(pool, "yard", night + timedelta(hours=9, minutes=30), 12, "low", "Bird")
    await _event(pool, "front", night - timedelta(minutes=1), 99, "critical", "Before the night")
    return critical


def test_latest_period_is_the_night_that_ended_last() -> None:
    at_8 = datetime(2025, 6, 2, 8, 0, tzinfo=PARIS)
    assert latest_period(at_8, "22:00", "07:00", PARIS) == (
        datetime(2025, 6, 1, 22, 0, tzinfo=PARIS),
        datetime(2025, 6, 2, 7, 0, tzinfo=PARIS),
    )
    at_6 = datetime(2025, 6, 2, 6, 59, tzinfo=PARIS)  # before 07:00: the night before is the latest
    assert latest_period(at_6, "22:00", "07:00", PARIS)[1] == datetime(2025, 6, 1, 7, 0, tzinfo=PARIS)
    # Same start and end: the whole day before. A start before the end: the same day.
    assert latest_period(at_8, "07:00", "07:00", PARIS)[0] == datetime(2025, 6, 1, 7, 0, tzinfo=PARIS)
    assert latest_period(at_8, "00:00", "07:00", PARIS)[0] == datetime(2025, 6, 2, 0, 0, tzinfo=PARIS)
    assert next_end(at_6, "07:00", PARIS) == datetime(2025, 6, 2, 7, 0, tzinfo=PARIS)
    assert next_end(at_8, "07:00", PARIS) == datetime(2025, 6, 3, 7, 0, tzinfo=PARIS)


def test_a_night_across_the_dst_change_lasts_its_real_length() -> None:
    # 30 March 2025: Paris skips 02:00-03:00; the night 22:00-07:00 is 8 hours long.
    since, until = latest_period(datetime(2025, 3, 30, 9, 0, tzinfo=PARIS), "22:00", "07:00", PARIS)
    assert until - since == timedelta(hours=8)


async def test_rules_digest_counts_the_night_and_names_its_three_most_important_events(pool: asyncpg.Pool) -> None:
    critical = await _night(pool)
    service = DigestService(pool, Topics(), "Europe/Paris")
    since, until = latest_period(MORNING, "22:00", "07:00", PARIS)
    digest = await service.compose(since, until, kind="scheduled", now=MORNING)
    assert (digest.total, digest.by_level.model_dump()) == (4, {"low": 1, "medium": 1, "high": 1, "critical": 1})
    assert [(e.local_time, e.camera_name, e.risk_level) for e in digest.top] == [
        ("02:14", "Back yard", "critical"),
        ("03:00", "Front door", "high"),
        ("04:00", "Front door", "medium"),
    ]
    assert digest.top[0].snapshot_url == f"/api/v1/events/{critical}/snapshot.jpg"
    assert digest.text_source == "rules" and digest.text == digest.rules_text and digest.llm_error is None
    assert (
        digest.text.splitlines()[0]
        == "Sun 01 Jun 22:00 – Mon 02 Jun 07:00: 4 events (1 critical, 1 high, 1 medium, 1 low)."
    )
    assert "- 02:14 Back yard, critical (92): Person at the shed" in digest.text
    assert "Before the night" not in digest.text and "Bird" not in digest.text


async def test_quiet_night_says_so(pool: asyncpg.Pool) -> None:
    service = DigestService(pool, Topics(), "Europe/Paris")
    digest = await service.compose(*latest_period(MORNING, "22:00", "07:00", PARIS), kind="scheduled", now=MORNING)
    assert digest.total == 0 and digest.top == []
    assert digest.text == "Sun 01 Jun 22:00 – Mon 02 Jun 07:00: no events."


async def test_llm_prose_is_shown_and_labelled_with_the_rules_text_kept(pool: asyncpg.Pool) -> None:
    await _night(pool)
    fake = FakeLlm("A quiet night except a person at the shed at 02:14 (critical).")
    service = DigestService(pool, Topics(), "Europe/Paris", digest_prose(_reasoner(fake), 5))
    digest = await service.compose(*latest_period(MORNING, "22:00", "07:00", PARIS), kind="scheduled", now=MORNING)
    assert (digest.text_source, digest.model, digest.llm_error) == ("llm", "fake-llm", None)
    assert digest.text == digest.llm_text == "A quiet night except a person at the shed at 02:14 (critical)."
    assert "02:14 Back yard, critical" in digest.rules_text
    assert "02:14 Back yard, critical" in fake.asked[0]  # the model is given the facts


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        (None, "unreachable: connection refused"),
        ("Someone came at 03:30.", "rejected: names times not in the facts (03:30)"),
    ],
)
async def test_llm_failure_falls_back_to_the_rules_text_labelled(
    pool: asyncpg.Pool, reply: str | None, error: str
) -> None:
    await _night(pool)
    service = DigestService(pool, Topics(), "Europe/Paris", digest_prose(_reasoner(FakeLlm(reply)), 5))
    digest = await service.compose(*latest_period(MORNING, "22:00", "07:00", PARIS), kind="scheduled", now=MORNING)
    assert (digest.text_source, digest.llm_text, digest.model, digest.llm_error) == ("rules", None, None, error)
    assert digest.text == digest.rules_text


OBSERVATION = Observation(
    "front", "Front door", MORNING.astimezone(UTC), [Detection("person", 0.9, (0.1, 0.1, 0.4, 0.9))]
)
RULES = RulesReasoner(LevelThresholds()).assess_now(OBSERVATION)


class GatedLlm:
    """A FAKE language model: every call waits for ``gate``, then events' calls fail (unreachable)
    and the digest's gets its prose; records the calls in the order they reached it and the most
    in flight at once."""

    name = "fake"
    model = "fake-llm"

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.order: list[str] = []
        self.in_flight = 0
        self.most_in_flight = 0

    async def start(self) -> None:
        return None

    async def can_see(self) -> bool:
        return False

    async def complete(self, messages: Sequence[ChatMessage], schema: Mapping[str, Any]) -> LlmReply:
        kind = "digest" if "morning summary" in str(messages[0]["content"]) else "event"
        self.order.append(kind)
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await self.gate.wait()
        finally:
            self.in_flight -= 1
        if kind == "event":
            raise LlmUnavailable("connection refused")
        return LlmReply(json.dumps({"text": "A calm night."}), 0.1)

    async def close(self) -> None:
        return None


async def test_open_circuit_breaker_gives_the_rules_digest_labelled_as_the_fallback(
    pool: asyncpg.Pool, caplog: pytest.LogCaptureFixture
) -> None:
    await _night(pool)
    down = FakeLlm(None)
    now = [0.0]
    reasoner = _reasoner(down, circuit_failures=3, circuit_reset_s=60, clock=lambda: now[0])
    service = DigestService(pool, Topics(), "Europe/Paris", digest_prose(reasoner, 5))
    period = latest_period(MORNING, "22:00", "07:00", PARIS)
    # Three events' calls fail: the breaker the events opened skips the digest's call too.
    for _ in range(3):
        assert (await reasoner.refine(OBSERVATION, RULES)).analysis_source == "rules"
    assert reasoner.circuit_state == "open"
    down.text = "A calm night."  # would answer now, but is not asked while the circuit is open
    asked = len(down.asked)
    caplog.set_level(logging.WARNING, logger="inference_server.reports.digest")
    digest = await service.compose(*period, kind="scheduled", now=MORNING)
    assert (digest.text_source, digest.llm_text, digest.model) == ("rules", None, None)
    assert digest.text == digest.rules_text
    assert digest.llm_error == "circuit open: LLM skipped after 3 failures in a row; next try after 60s"
    assert len(down.asked) == asked
    assert any("(fallback)" in r.getMessage() and "circuit open" in r.getMessage() for r in caplog.records)
    # After the cooling-down the digest is the half-open trial; its success closes the circuit.
    now[0] = 61.0
    digest = await service.compose(*period, kind="scheduled", now=MORNING)
    assert (digest.text_source, digest.text) == ("llm", "A calm night.")
    state: str = reasoner.circuit_state  # (read again: the breaker moved since the last look)
    assert state == "closed"


async def test_digest_failures_count_towards_the_events_circuit_breaker(pool: asyncpg.Pool) -> None:
    down = FakeLlm(None)
    reasoner = _reasoner(down, circuit_failures=3, circuit_reset_s=60, clock=lambda: 0.0)
    service = DigestService(pool, Topics(), "Europe/Paris", digest_prose(reasoner, 5))
    for _ in range(3):
        digest = await service.compose(*latest_period(MORNING, "22:00", "07:00", PARIS), kind="scheduled", now=MORNING)
        assert digest.llm_error == "unreachable: connection refused"
    assert reasoner.circuit_state == "open"
    event = await reasoner.refine(OBSERVATION, RULES)
    assert event.analysis_source == "rules" and "LLM fallback: circuit open" in event.reasoning
    assert len(down.asked) == 3  # the event's call was skipped, not sent


async def test_digest_shares_the_events_llm_slots_and_never_goes_before_a_waiting_event(pool: asyncpg.Pool) -> None:
    await _night(pool)
    llm = GatedLlm()
    reasoner = _reasoner(llm, max_concurrency=1, circuit_failures=10)
    service = DigestService(pool, Topics(), "Europe/Paris", digest_prose(reasoner, 30))
    period = latest_period(MORNING, "22:00", "07:00", PARIS)
    first_event = asyncio.create_task(reasoner.refine(OBSERVATION, RULES))
    await wait_until(lambda: llm.order == ["event"], timeout=5, interval=0.01)
    digest = asyncio.create_task(service.compose(*period, kind="scheduled", now=MORNING))
    # The digest has composed its facts and waits for the LLM's one slot; then an event comes.
    await wait_until(lambda: reasoner._slots.waiting == (0, 1), timeout=5, interval=0.01)
    second_event = asyncio.create_task(reasoner.refine(OBSERVATION, RULES))
    await wait_until(lambda: reasoner._slots.waiting == (1, 1), timeout=5, interval=0.01)
    assert llm.order == ["event"] and llm.in_flight == 1
    llm.gate.set()
    async with asyncio.timeout(10):
        results = await asyncio.gather(first_event, second_event)
        made = await digest
    # One call at a time, and the event that came after the digest still went before it.
    assert llm.most_in_flight == 1
    assert llm.order == ["event", "event", "digest"]
    assert [r.analysis_source for r in results] == ["rules", "rules"]
    assert (made.text_source, made.text) == ("llm", "A calm night.")


async def test_digest_waits_for_a_slot_at_most_its_timeout_then_keeps_the_rules_text(pool: asyncpg.Pool) -> None:
    llm = GatedLlm()
    reasoner = _reasoner(llm, max_concurrency=1)
    service = DigestService(pool, Topics(), "Europe/Paris", digest_prose(reasoner, 0.2))
    event = asyncio.create_task(reasoner.refine(OBSERVATION, RULES))
    try:
        await wait_until(lambda: llm.order == ["event"], timeout=5, interval=0.01)
        digest = await service.compose(*latest_period(MORNING, "22:00", "07:00", PARIS), kind="scheduled", now=MORNING)
        assert digest.text_source == "rules"
        assert digest.llm_error == "busy: no LLM slot free within 0.2s (events' calls go first)"
        assert llm.order == ["event"]
        assert reasoner.circuit_state == "closed"  # a busy LLM is no outage
    finally:
        llm.gate.set()
        await event
    # The digest that gave up left no claim behind: the next one gets the free slot at once.
    assert reasoner._slots.waiting == (0, 0)
    again = await service.compose(*latest_period(MORNING, "22:00", "07:00", PARIS), kind="scheduled", now=MORNING)
    assert (again.text_source, again.text) == ("llm", "A calm night.")


async def test_scheduled_digest_is_sent_once_even_after_a_restart(pool: asyncpg.Pool) -> None:
    await _night(pool)
    clock = FakeClock(MORNING.astimezone(UTC) + timedelta(minutes=1))
    first = DigestScheduler(DigestService(pool, Topics(), "Europe/Paris"), clock, "22:00", "07:00")
    assert await first.send_due() is True
    assert await first.send_due() is False
    restarted = DigestScheduler(DigestService(pool, Topics(), "Europe/Paris"), clock, "22:00", "07:00")
    assert await restarted.send_due() is False
    rows = await pool.fetch("SELECT topic, payload FROM outbox WHERE topic = 'hsi/digest'")
    assert len(rows) == 1
    sent = Digest.model_validate_json(rows[0]["payload"])
    assert (sent.kind, sent.total, sent.period_end) == ("scheduled", 4, MORNING)
    clock.advance(24 * 3600)  # the next morning: the next night is due
    assert await restarted.send_due() is True


async def test_on_demand_digest_over_rest_is_published_on_hsi_digest(
    make_settings: Callable[..., Settings], mosquitto_url: str, tmp_path: Any
) -> None:
    settings = make_settings(mqtt_url=mosquitto_url, role="api", camera_timezone="Europe/Paris", digest_enabled=False)
    subscriber = await Subscriber(mosquitto_url, "hsi/digest").ready()
    try:
        async with running(settings) as server:
            await cameras.create(server.pool, CameraCreate(id="yard", name="Back yard"))
            await _event(server.pool, "yard", MORNING - timedelta(hours=3), 70, "high", "Person at the shed")
            headers = await auth_headers(server)
            async with aiohttp.ClientSession(base_url=server.api_url, headers=headers) as http:
                body = {"since": (MORNING - timedelta(hours=9)).isoformat(), "until": MORNING.isoformat()}
                resp = await http.post("/api/v1/digest", json=body | {"publish": True})
                assert resp.status == 200, await resp.text()
                made = Digest.model_validate(await resp.json())
                assert (made.kind, made.total, made.top[0].local_time, made.text_source) == (
                    "on_demand",
                    1,
                    "04:00",
                    "rules",
                )
                message = await subscriber.wait_for(lambda m: m.topic == "hsi/digest")
                assert Digest.model_validate_json(message.payload) == made
                assert message.retain is False
                # Bad periods are refused.
                quiet = await http.post("/api/v1/digest", json=body)
                assert quiet.status == 200
                backwards = await http.post("/api/v1/digest", json={"since": body["until"], "until": body["since"]})
                assert backwards.status == 400
                assert (await backwards.json())["error"]["message"] == "since must be before until"
                naive = await http.post("/api/v1/digest", json={"since": "2025-06-01T22:00:00"})
                assert naive.status == 422
            # Not published unless asked: one outbox row, one message (both digests recorded).
            assert await server.pool.fetchval("SELECT count(*) FROM outbox WHERE topic = 'hsi/digest'") == 1
            assert await server.pool.fetchval("SELECT count(*) FROM digests WHERE kind = 'on_demand'") == 2
            await subscriber.caught_up()
            assert [m.topic for m in subscriber.drain()] == ["hsi/digest"]
    finally:
        subscriber.close()


async def test_the_server_sends_the_mornings_digest_once_across_a_restart(
    make_settings: Callable[..., Settings], mosquitto_url: str
) -> None:
    settings = make_settings(mqtt_url=mosquitto_url, role="api", camera_timezone="Europe/Paris", digest_enabled=True)
    clock = FakeClock(MORNING.astimezone(UTC) + timedelta(minutes=5))
    subscriber = await Subscriber(mosquitto_url, "hsi/digest").ready()
    try:
        async with running(settings, clock=clock) as server:
            message = await subscriber.wait_for(lambda m: m.topic == "hsi/digest")
            digest = Digest.model_validate_json(message.payload)
            assert (digest.kind, digest.period_start, digest.period_end) == (
                "scheduled",
                MORNING - timedelta(hours=9),
                MORNING,
            )
            assert digest.title == "Security digest, Sun 01 Jun 22:00 – Mon 02 Jun 07:00"
        async with running(settings, clock=clock) as server:
            await subscriber.caught_up()
            assert await server.pool.fetchval("SELECT count(*) FROM digests") == 1
        assert len(subscriber.drain()) == 1
    finally:
        subscriber.close()


async def test_on_demand_digest_speaks_the_time_zone_asked_for(
    make_settings: Callable[..., Settings], mosquitto_url: str
) -> None:
    settings = make_settings(mqtt_url=mosquitto_url, role="api", camera_timezone="UTC", digest_enabled=False)
    async with running(settings) as server:
        await cameras.create(server.pool, CameraCreate(id="yard", name="Back yard"))
        await _event(server.pool, "yard", MORNING - timedelta(hours=3), 70, "high", "Person at the shed")
        async with aiohttp.ClientSession(base_url=server.api_url, headers=await auth_headers(server)) as http:
            body = {"since": (MORNING - timedelta(hours=9)).isoformat(), "until": MORNING.isoformat()}
            utc = Digest.model_validate(await (await http.post("/api/v1/digest", json=body)).json())
            paris = await http.post("/api/v1/digest", json=body | {"timezone": "Europe/Paris"})
            assert paris.status == 200
            local = Digest.model_validate(await paris.json())
            assert (utc.top[0].local_time, local.top[0].local_time) == ("02:00", "04:00")
            assert "- 04:00 Back yard, high (70)" in local.text
            unknown = await http.post("/api/v1/digest", json=body | {"timezone": "Mars/Olympus"})
            assert unknown.status == 422
            assert "unknown time zone 'Mars/Olympus'" in (await unknown.json())["error"]["message"]


def test_digest_times_must_be_clock_times() -> None:
    assert Settings(digest_at="06:30", digest_from="23:15").digest_at == "06:30"
    for bad in ("7:00", "24:00", "07:60", "seven"):
        with pytest.raises(ValueError, match="digest_at"):
            Settings(digest_at=bad)


async def test_a_server_down_for_three_mornings_catches_up_the_last_night_once_then_keeps_its_schedule(
    pool: asyncpg.Pool, caplog: pytest.LogCaptureFixture
) -> None:
    # One event each night from 29 May to 4 June; the server was down from the evening of the
    # 30th until 07:30 on 2 June: the mornings of the 31st, 1st and 2nd were missed.
    for day in range(29, 35):
        at = datetime(2025, 5, 1, 23, 0, tzinfo=PARIS) + timedelta(days=day - 1)
        await _event(pool, "front", at, 40, "medium", f"Car in the drive on the {at:%d}")
    clock = FakeClock(MORNING.astimezone(UTC) + timedelta(minutes=30))
    caplog.set_level(logging.INFO, logger="inference_server.reports.scheduler")

    async def sent() -> list[tuple[datetime, datetime, int]]:
        rows = await pool.fetch("SELECT payload FROM outbox WHERE topic = 'hsi/digest' ORDER BY id")
        digests = [Digest.model_validate_json(r["payload"]) for r in rows]
        return [(d.period_start.astimezone(PARIS), d.period_end.astimezone(PARIS), d.total) for d in digests]

    @asynccontextmanager
    async def scheduler_running() -> AsyncIterator[None]:
        """The real scheduler loop, looking at the clock every 10 ms."""
        stop = asyncio.Event()
        scheduler = DigestScheduler(DigestService(pool, Topics(), "Europe/Paris"), clock, "22:00", "07:00", wake_s=0.01)
        task = asyncio.create_task(scheduler.run(stop))
        try:
            yield
        finally:
            stop.set()
            async with asyncio.timeout(5):
                await task

    night = (datetime(2025, 6, 1, 22, 0, tzinfo=PARIS), MORNING, 1)
    async with scheduler_running():  # started at 07:30 on the 2nd
        await wait_until(sent, timeout=10, interval=0.02)
        await asyncio.sleep(0.3)  # some 30 more looks at the clock
    assert await sent() == [night]  # the last night only, once
    caught_up = [r.getMessage() for r in caplog.records if "caught up" in r.getMessage()]
    assert len(caught_up) == 1 and "late_by_s=1800" in caught_up[0]

    # Restarted the same morning, it runs through the day and the next night: nothing more
    # until 07:00, then the next night, on time.
    async with scheduler_running():
        await asyncio.sleep(0.2)
        clock.current = (MORNING + timedelta(hours=23, minutes=59)).astimezone(UTC)
        await asyncio.sleep(0.2)
        assert await sent() == [night]
        clock.current = (MORNING + timedelta(days=1)).astimezone(UTC)
        await wait_until(lambda: _count(pool), timeout=10, interval=0.02)
    next_night = (datetime(2025, 6, 2, 22, 0, tzinfo=PARIS), MORNING + timedelta(days=1), 1)
    assert await sent() == [night, next_night]
    assert len([r for r in caplog.records if "caught up" in r.getMessage()]) == 1  # that one was on time


async def _count(pool: asyncpg.Pool, n: int = 2) -> bool:
    found: int = await pool.fetchval("SELECT count(*) FROM outbox WHERE topic = 'hsi/digest'")
    return found >= n


async def test_an_api_only_process_leaves_the_scheduled_digest_to_the_workers_llm(
    make_settings: Callable[..., Settings], mosquitto_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Scale-out: the api process has no LLM; had it sent the morning's digest, the rules text
    would take the period before the worker's LLM wrote its prose."""
    llm = LlmSettings(backend="openai", base_url="http://127.0.0.1:9", model="nowhere")
    settings = make_settings(
        mqtt_url=mosquitto_url, role="api", camera_timezone="Europe/Paris", llm=llm, digest_enabled=True
    )
    clock = FakeClock(MORNING.astimezone(UTC) + timedelta(minutes=5))
    caplog.set_level(logging.INFO, logger="inference_server.server")
    async with running(settings, clock=clock) as server:
        await asyncio.sleep(2)  # a scheduler would have sent the 07:00 digest at once
        assert await server.pool.fetchval("SELECT count(*) FROM digests") == 0
    assert any("left to the worker processes" in r.getMessage() for r in caplog.records)
