"""Assist: the LLM API's tools called as a conversation agent calls them (``llm.async_get_api``
then ``async_call_tool``), against a REAL running server (PostgreSQL, full-text search); the
``summarize`` service and the digest event."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from datetime import datetime, timedelta
from typing import Any

import pytest
import pytest_socket
import voluptuous as vol
from homeassistant.core import Context, HomeAssistant
from homeassistant.exceptions import HomeAssistantError, ServiceValidationError
from homeassistant.helpers import llm
from homeassistant.util import dt as dt_util
from pytest_homeassistant_custom_component.common import MockConfigEntry, async_capture_events
from pytest_homeassistant_custom_component.test_util.aiohttp import AiohttpClientMocker

from custom_components.home_security_intelligence.const import DOMAIN
from custom_components.home_security_intelligence.llm_api import resolve_period

from .conftest import URL, camera_online, publish, sample
from .server import RealServer, server_file

PARIS = "Europe/Paris"


@pytest.fixture
def expected_lingering_timers() -> bool:
    return True


@pytest.fixture
async def real_entry(
    hass: HomeAssistant, socket_enabled: None, mqtt_mock: Any, real_server: RealServer
) -> AsyncGenerator[MockConfigEntry]:
    pytest_socket.socket_allow_hosts(["127.0.0.1"], allow_unix_socket=True)
    await hass.config.async_set_time_zone(PARIS)
    entry = MockConfigEntry(
        domain=DOMAIN,
        unique_id="hsi",
        title="Home Security Intelligence",
        data={"url": real_server.url, "api_key": real_server.api_key, "prefix": "hsi"},
    )
    entry.add_to_hass(hass)
    assert await hass.config_entries.async_setup(entry.entry_id)
    await hass.async_block_till_done()
    yield entry
    assert await hass.config_entries.async_unload(entry.entry_id)


@pytest.fixture(scope="module")
def night(real_server: RealServer) -> dict[str, Any]:
    """Last night's events (Paris time) and one three days ago, written into the real server."""
    tz = dt_util.get_time_zone(PARIS)
    assert tz is not None
    today = datetime.now(tz).replace(hour=0, minute=0, second=0, microsecond=0)
    rows = [
        ("yard", "Back yard", today - timedelta(minutes=30), 92, "critical", "Person forcing the shed door"),
        ("front", "Front door", today - timedelta(hours=1, minutes=30), 40, "medium", "Person leaves a parcel"),
        ("front", "Front door", today - timedelta(days=3), 5, "low", "Cat crossing the lawn"),
    ]
    # The shed's snapshot: a real camera picture in the server's snapshot folder.
    shed_snapshot = real_server.data_dir / "snapshots" / "yard" / "shed.jpg"
    shed_snapshot.parent.mkdir(parents=True, exist_ok=True)
    shed_snapshot.write_bytes(server_file("demo_assets.image('bus.jpg')").read_bytes())
    ids = real_server.add_events(
        [
            {
                "camera_id": camera,
                "camera_name": name,
                "started_at": at.isoformat(),
                "score": score,
                "level": level,
                "summary": summary,
                "objects": {"cat": 1} if "Cat" in summary else {"person": 1},
            }
            | ({"snapshot_path": str(shed_snapshot)} if "shed" in summary else {})
            for camera, name, at, score, level, summary in rows
        ]
    )
    return {
        "shed": ids[0],
        "parcel": ids[1],
        "cat": ids[2],
        "shed_time": rows[0][2],
        "parcel_time": rows[1][2],
        "shed_snapshot": shed_snapshot.read_bytes(),
    }


async def _api(hass: HomeAssistant, entry: MockConfigEntry) -> llm.APIInstance:
    context = llm.LLMContext(
        platform="conversation",
        context=Context(),
        user_prompt="what happened last night?",
        language="en",
        assistant="conversation",
        device_id=None,
    )
    return await llm.async_get_api(hass, f"{DOMAIN}-{entry.entry_id}", context)


async def _tool(api: llm.APIInstance, name: str, **args: Any) -> Any:
    return await api.async_call_tool(llm.ToolInput(tool_name=name, tool_args=args))


def _when(moment: datetime) -> str:
    return dt_util.as_local(moment).strftime("%a %d %b %Y %H:%M")


async def test_an_agent_finds_last_nights_events_with_times_and_levels(
    hass: HomeAssistant, real_entry: MockConfigEntry, night: dict[str, Any]
) -> None:
    api = await _api(hass, real_entry)
    assert {t.name for t in api.tools} == {
        "search_security_events",
        "get_security_event",
        "get_security_camera_status",
        "summarize_security_events",
    }
    assert "cite each event's local time, camera and risk level" in api.api_prompt
    assert "CET" in api.api_prompt or "CEST" in api.api_prompt

    found = await _tool(api, "search_security_events", query="person", period="last_night")
    assert [(e["id"], e["local_time"], e["camera"], e["risk_level"]) for e in found["events"]] == [
        (night["shed"], _when(night["shed_time"]), "Back yard", "critical"),
        (night["parcel"], _when(night["parcel_time"]), "Front door", "medium"),
    ]
    assert found["count"] == 2 and found["more"] is False
    assert found["period"]["from"].endswith(("+01:00", "+02:00"))

    high = await _tool(api, "search_security_events", period="last_7_days", min_level="high")
    assert [e["id"] for e in high["events"]] == [night["shed"]]
    by_name = await _tool(api, "search_security_events", camera="back yard", period="last_night")
    assert [e["id"] for e in by_name["events"]] == [night["shed"]]
    words = await _tool(api, "search_security_events", query="cat lawn")
    assert [e["id"] for e in words["events"]] == [night["cat"]]
    nothing = await _tool(api, "search_security_events", query="cat", period="last_night")
    assert nothing["count"] == 0 and nothing["events"] == []

    one = await _tool(api, "get_security_event", event_id=night["shed"])
    assert (one["summary"], one["risk_level"], one["risk_score"], one["judged_by"]) == (
        "Person forcing the shed door",
        "critical",
        92,
        "rules",
    )
    assert one["snapshot_url"] == f"{real_entry.data['url']}/api/v1/events/{night['shed']}/snapshot.jpg"


async def test_an_agent_summarises_a_period(
    hass: HomeAssistant, real_entry: MockConfigEntry, night: dict[str, Any]
) -> None:
    api = await _api(hass, real_entry)
    summary = await _tool(api, "summarize_security_events", period="last_night")
    assert summary["total"] == 2
    assert summary["by_level"] == {"low": 0, "medium": 1, "high": 0, "critical": 1}
    assert [(c["camera"], c["events"]) for c in summary["by_camera"]] == [("Front door", 1), ("Back yard", 1)]
    assert [(e["local_time"], e["risk_level"]) for e in summary["most_important"]] == [
        (_when(night["shed_time"]), "critical"),
        (_when(night["parcel_time"]), "medium"),
    ]
    week = await _tool(api, "summarize_security_events", since=(dt_util.now() - timedelta(days=4)).isoformat())
    assert week["total"] == 3
    # Without a period: the last 24 hours. Last night's parcel (22:30 yesterday, Paris time) is in
    # them only while the clock there is before 22:30.
    before = dt_util.now()
    default = await _tool(api, "summarize_security_events", camera="Front door")
    since = datetime.fromisoformat(default["period"]["from"])
    assert before - timedelta(hours=24) <= since <= dt_util.now() - timedelta(hours=24)
    assert default["total"] == (night["parcel_time"] >= since)


async def test_camera_status_reports_what_mqtt_said(hass: HomeAssistant, real_entry: MockConfigEntry) -> None:
    await camera_online(hass)
    api = await _api(hass, real_entry)
    status = await _tool(api, "get_security_camera_status")
    state = sample("camera_state.json")
    assert status["server_online"] is True
    [camera] = [c for c in status["cameras"] if c["id"] == "back_door"]
    assert (camera["current_risk_level"], camera["objects_now"], camera["last_event_id"]) == (
        state["risk_level"],
        state["objects"],
        state["last_event_id"],
    )


async def test_bad_tool_arguments_are_refused_clearly(
    hass: HomeAssistant, real_entry: MockConfigEntry, night: dict[str, Any]
) -> None:
    api = await _api(hass, real_entry)
    with pytest.raises(ServiceValidationError) as unknown:
        await _tool(api, "search_security_events", camera="garage")
    assert unknown.value.translation_key == "unknown_camera"
    assert unknown.value.translation_placeholders == {"camera": "garage", "cameras": "Back yard, Front door"}
    with pytest.raises(ServiceValidationError) as bad_time:
        await _tool(api, "search_security_events", since="last tuesday-ish")
    assert bad_time.value.translation_key == "bad_time"
    with pytest.raises(ServiceValidationError) as backwards:
        await _tool(api, "summarize_security_events", since="2025-06-02T07:00", until="2025-06-01T22:00")
    assert backwards.value.translation_key == "bad_period"
    with pytest.raises(vol.Invalid):
        await _tool(api, "search_security_events", min_level="apocalyptic")
    with pytest.raises(HomeAssistantError) as missing:
        await _tool(api, "get_security_event", event_id="00000000-0000-0000-0000-000000000000")
    assert missing.value.translation_key == "server_error"


async def test_summarize_service_returns_the_digest_with_absolute_snapshot_urls(
    hass: HomeAssistant, real_entry: MockConfigEntry, night: dict[str, Any], hass_client_no_auth: Any
) -> None:
    await hass.config.async_update(external_url="https://home.example.org")
    since = dt_util.start_of_local_day() - timedelta(hours=2)
    digest = await hass.services.async_call(
        DOMAIN,
        "summarize",
        {"config_entry_id": real_entry.entry_id, "since": since.replace(tzinfo=None)},
        blocking=True,
        return_response=True,
    )
    assert digest is not None
    assert (digest["kind"], digest["total"], digest["text_source"], digest["llm_text"]) == (
        "on_demand",
        2,
        "rules",
        None,
    )
    assert digest["text"] == digest["rules_text"]
    shed = digest["top"][0]
    assert (shed["id"], shed["risk_level"], shed["local_time"]) == (
        night["shed"],
        "critical",
        night["shed_time"].strftime("%H:%M"),
    )
    assert shed["snapshot_url"] == f"{real_entry.data['url']}/api/v1/events/{night['shed']}/snapshot.jpg"
    assert digest["server_id"] == "hsi"
    # The same picture through Home Assistant: a signed path a phone opens without the server's key.
    path = f"/api/home_security_intelligence/{real_entry.entry_id}/events/{night['shed']}/snapshot.jpg"
    assert shed["image_path"].startswith(f"{path}?authSig=")
    assert shed["image_url"] == f"https://home.example.org{shed['image_path']}"
    phone = await hass_client_no_auth()
    resp = await phone.get(shed["image_path"])
    assert resp.status == 200 and resp.content_type == "image/jpeg"
    assert await resp.read() == night["shed_snapshot"]  # the real server's file, fetched with the entry's key
    assert (await phone.get(path)).status == 401  # unsigned: Home Assistant's login is needed
    parcel = digest["top"][1]  # an event without a snapshot: the server's 404 passes through
    assert (await phone.get(parcel["image_path"])).status == 404

    # The digest the server publishes on hsi/digest fires one Home Assistant event.
    fired = async_capture_events(hass, f"{DOMAIN}_digest")
    raw = {**digest, "top": [{**e, "snapshot_url": f"/api/v1/events/{e['id']}/snapshot.jpg"} for e in digest["top"]]}
    for event in raw["top"]:
        del event["image_path"], event["image_url"]
    raw.pop("server_id")
    publish(hass, "hsi/digest", raw)
    publish(hass, "hsi/digest", "not json")
    await hass.async_block_till_done()
    assert len(fired) == 1
    # Signed again when it came (its own issue time), for the same paths.
    signed = [e.pop("image_path").split("?")[0] for e in fired[0].data["top"]]
    assert signed == [e["image_path"].split("?")[0] for e in digest["top"]]
    for event in fired[0].data["top"]:
        event.pop("image_url")
    assert fired[0].data == {
        **digest,
        "top": [{k: v for k, v in e.items() if k not in ("image_path", "image_url")} for e in digest["top"]],
    }


async def test_the_api_goes_with_its_entry(hass: HomeAssistant, entry: MockConfigEntry) -> None:
    api_id = f"{DOMAIN}-{entry.entry_id}"
    assert api_id in {api.id for api in llm.async_get_apis(hass)}
    assert await hass.config_entries.async_unload(entry.entry_id)
    assert api_id not in {api.id for api in llm.async_get_apis(hass)}


async def test_an_unreachable_server_is_reported_to_the_agent(
    hass: HomeAssistant, entry: MockConfigEntry, aioclient_mock: AiohttpClientMocker
) -> None:
    aioclient_mock.get(f"{URL}/api/v1/events/summary", exc=TimeoutError())
    api = await _api(hass, entry)
    with pytest.raises(HomeAssistantError) as err:
        await _tool(api, "summarize_security_events", period="today")
    assert err.value.translation_key == "cannot_connect"


@pytest.mark.parametrize(
    ("now", "args", "expected"),
    [
        # 08:30 on Tuesday 3 June 2025, Paris.
        ("2025-06-03T08:30", {"period": "last_night"}, ("2025-06-02T22:00", "2025-06-03T07:00")),
        ("2025-06-03T03:00", {"period": "last_night"}, ("2025-06-02T22:00", "2025-06-03T03:00")),
        ("2025-06-03T08:30", {"period": "today"}, ("2025-06-03T00:00", "2025-06-03T08:30")),
        ("2025-06-03T08:30", {"period": "yesterday"}, ("2025-06-02T00:00", "2025-06-03T00:00")),
        ("2025-06-03T08:30", {"period": "last_hour"}, ("2025-06-03T07:30", "2025-06-03T08:30")),
        ("2025-06-03T08:30", {"period": "last_24_hours"}, ("2025-06-02T08:30", "2025-06-03T08:30")),
        ("2025-06-03T08:30", {"period": "this_week"}, ("2025-06-02T00:00", "2025-06-03T08:30")),
        ("2025-06-03T08:30", {"period": "last_7_days"}, ("2025-05-27T08:30", "2025-06-03T08:30")),
        ("2025-06-03T08:30", {"since": "2025-06-01"}, ("2025-06-01T00:00", "2025-06-03T08:30")),
        (
            "2025-06-03T08:30",
            {"since": "2025-06-01T10:00Z", "until": "2025-06-01T12:00Z"},
            ("2025-06-01T12:00", "2025-06-01T14:00"),
        ),
        ("2025-06-03T08:30", {}, (None, None)),
    ],
)
async def test_periods_in_words_resolve_in_home_assistants_time_zone(
    hass: HomeAssistant, now: str, args: dict[str, Any], expected: tuple[str | None, str | None]
) -> None:
    await hass.config.async_set_time_zone(PARIS)
    moment = dt_util.parse_datetime(now)
    assert moment is not None
    since, until = resolve_period(args, moment.replace(tzinfo=dt_util.get_default_time_zone()))
    as_text = tuple(dt_util.as_local(t).strftime("%Y-%m-%dT%H:%M") if t is not None else None for t in (since, until))
    assert as_text == expected


async def test_summarize_reports_the_servers_refusal(
    hass: HomeAssistant, entry: MockConfigEntry, aioclient_mock: AiohttpClientMocker
) -> None:
    aioclient_mock.post(
        f"{URL}/api/v1/digest",
        status=503,
        json={"error": {"code": "unavailable", "message": "digests are not set up on this server"}},
    )
    with pytest.raises(HomeAssistantError) as err:
        await hass.services.async_call(
            DOMAIN, "summarize", {"config_entry_id": entry.entry_id}, blocking=True, return_response=True
        )
    assert err.value.translation_key == "server_error"
    assert "digests are not set up" in str(err.value.translation_placeholders)
