"""The digest: rules text always, the LLM's prose when it answers (labelled), the scheduled
period sent once even across restarts, and published on hsi/digest through the outbox."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import asyncpg
import pytest

from inference_server.comms.topics import Topics
from inference_server.config import Settings
from inference_server.domain import Assessment
from inference_server.reasoning.backends.base import LlmReply, LlmUnavailable
from inference_server.reasoning.prompts import ChatMessage
from inference_server.reports.digest import DigestService
from inference_server.reports.scheduler import DigestScheduler, latest_period, next_end
from inference_server.schemas import CameraCreate, Digest
from inference_server.server import digest_prose
from inference_server.store import cameras, events
from inference_server.store.db import create_pool
from inference_server.store.migrate import migrate
from tests.support.mqtt import Subscriber

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

    async def complete(self, messages: Sequence[ChatMessage], schema: Mapping[str, Any]) -> LlmReply:
        self.asked.append(str(messages[-1]["content"]))
        if self.text is None:
            raise LlmUnavailable("connection refused")
        return LlmReply(json.dumps({"text": self.text}), 0.1)

    async def close(self) -> None:
        return None


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
    service = DigestService(pool, Topics(), "Europe/Paris", digest_prose(fake, 5))
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
    service = DigestService(pool, Topics(), "Europe/Paris", digest_prose(FakeLlm(reply), 5))
    digest = await service.compose(*latest_period(MORNING, "22:00", "07:00", PARIS), kind="scheduled", now=MORNING)
    assert (digest.text_source, digest.llm_text, digest.model, digest.llm_error) == ("rules", None, None, error)
    assert digest.text == digest.rules_text


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
