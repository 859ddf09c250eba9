"""Services against a REAL running server (PostgreSQL, YOLO on a real image): the integration
uploads a Home Assistant camera's image, and reads, reviews and requeues what the server made;
and how they report a server's failure or a wrong entry (a mocked server, the ``entry`` fixture)."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_socket
from homeassistant.core import HomeAssistant
from homeassistant.exceptions import HomeAssistantError, ServiceValidationError
from pytest_homeassistant_custom_component.common import MockConfigEntry
from pytest_homeassistant_custom_component.test_util.aiohttp import AiohttpClientMocker

from custom_components.home_security_intelligence.const import DOMAIN

from .conftest import URL, call_service
from .server import RealServer, server_file


async def test_analyze_review_and_list_through_the_real_server(
    hass: HomeAssistant, real_entry: MockConfigEntry, real_server: RealServer, tmp_path: Path
) -> None:
    # A Home Assistant camera showing a real picture (4 people at a bus stop).
    picture = tmp_path / "porch.jpg"
    shutil.copy(server_file("demo_assets.image('bus.jpg')"), picture)
    hass.config.allowlist_external_dirs = {str(tmp_path)}
    camera_entry = MockConfigEntry(
        domain="local_file", title="Porch", options={"name": "Porch", "file_path": str(picture)}
    )
    camera_entry.add_to_hass(hass)
    assert await hass.config_entries.async_setup(camera_entry.entry_id)
    await hass.async_block_till_done()
    assert hass.states.get("camera.porch") is not None
    # The server's camera: a folder it knows (created by the first file, here over REST).
    client = real_entry.runtime_data.client
    await client._request("POST", "/cameras", json={"id": "porch", "name": "Porch"})

    await call_service(hass, "set_context", real_entry, alarm_state="armed_away", people_home=[], sun="below_horizon")
    result = await call_service(
        hass, "analyze_snapshot", real_entry, entity_id="camera.porch", camera_id="porch", wait=True
    )
    assert result["state"] == "done" and result["job_id"] > 0
    event = result["event"]
    assert event["camera_id"] == "porch" and event["objects"] == {"person": 4}
    assert event["context"]["alarm_state"] == "armed_away"
    assert event["risk_level"] in ("high", "critical")

    reviewed = await call_service(
        hass, "mark_reviewed", real_entry, event_id=event["id"], feedback="correct", notes="delivery"
    )
    assert reviewed["reviewed"] is True and reviewed["feedback"] == "correct" and reviewed["notes"] == "delivery"
    # A naive time, as the UI's datetime selector sends it: Home Assistant's time zone.
    listed = await call_service(
        hass, "get_events", real_entry, camera="porch", reviewed=True, since="2020-01-01 00:00:00"
    )
    assert [e["id"] for e in listed["events"]] == [event["id"]]


async def test_requeue_dead_letters_through_the_real_server(
    hass: HomeAssistant, real_entry: MockConfigEntry, real_server: RealServer
) -> None:
    # A JPEG whose data cannot be decoded, damaged in the image store: the worker dead-letters it.
    data = bytearray(server_file("demo_assets.image('bus.jpg')").read_bytes())
    dht = data.index(b"\xff\xc4")
    data[dht + 5 : dht + 21] = b"\xff" * 16
    await asyncio.to_thread(real_server.add_damaged_image, "shed", bytes(data))
    client = real_entry.runtime_data.client
    for _ in range(200):
        if await client.list_dlq():
            break
        await asyncio.sleep(0.2)
    result = await call_service(hass, "requeue_dead_letters", real_entry)
    assert result == {"requeued": 1}


async def test_a_service_for_an_unknown_entry_is_refused(hass: HomeAssistant, real_entry: MockConfigEntry) -> None:
    with pytest.raises(ServiceValidationError) as err:
        await hass.services.async_call(
            DOMAIN, "get_events", {"config_entry_id": "nope"}, blocking=True, return_response=True
        )
    assert err.value.translation_key == "unknown_entry"


async def test_chosen_entities_are_forwarded_as_context_debounced(
    hass: HomeAssistant, socket_enabled: None, mqtt_mock: Any, real_server: RealServer
) -> None:
    from datetime import timedelta

    from homeassistant.util import dt as dt_util
    from pytest_homeassistant_custom_component.common import async_fire_time_changed

    from custom_components.home_security_intelligence import context as context_module

    pytest_socket.socket_allow_hosts(["127.0.0.1"], allow_unix_socket=True)
    hass.states.async_set("alarm_control_panel.home", "disarmed")
    hass.states.async_set("person.anna", "home", {"friendly_name": "Anna"})
    hass.states.async_set("binary_sensor.back_door", "off", {"friendly_name": "Back door", "device_class": "door"})
    hass.states.async_set("sun.sun", "above_horizon")
    entry = MockConfigEntry(
        domain=DOMAIN,
        unique_id="hsi",
        data={"url": real_server.url, "api_key": real_server.api_key, "prefix": "hsi"},
        options={
            "alarm_entity": "alarm_control_panel.home",
            "presence_entities": ["person.anna"],
            "entry_entities": ["binary_sensor.back_door"],
            "sun_entity": "sun.sun",
        },
    )
    entry.add_to_hass(hass)
    assert await hass.config_entries.async_setup(entry.entry_id)
    await hass.async_block_till_done()
    client = entry.runtime_data.client
    stored = (await client.get_context())["context"]
    assert stored["alarm_state"] == "disarmed" and stored["people_home"] == ["Anna"]

    # Three changes within the debounce window: one PUT with the final picture.
    hass.states.async_set("person.anna", "not_home", {"friendly_name": "Anna"})
    hass.states.async_set("alarm_control_panel.home", "armed_away")
    hass.states.async_set("binary_sensor.back_door", "on", {"friendly_name": "Back door", "device_class": "door"})
    await hass.async_block_till_done()
    forwarder = entry.runtime_data.context
    assert forwarder.last_sent is not None and forwarder.last_sent["alarm_state"] == "disarmed"
    async_fire_time_changed(hass, dt_util.utcnow() + timedelta(seconds=context_module.DEBOUNCE_S + 1))
    await hass.async_block_till_done()
    for _ in range(50):
        stored = (await client.get_context())["context"]
        if stored["alarm_state"] == "armed_away":
            break
        await asyncio.sleep(0.1)
    assert stored["alarm_state"] == "armed_away"
    assert stored["people_home"] == [] and stored["open_entries"] == ["Back door"]
    assert stored["sun"] == "above_horizon"
    assert await hass.config_entries.async_unload(entry.entry_id)


@pytest.mark.parametrize(
    ("service", "data", "method", "path"),
    [
        ("mark_reviewed", {"event_id": "e1", "feedback": "false_alarm"}, "patch", "/events/e1"),
        ("get_events", {"level": "high"}, "get", "/events"),
        ("requeue_dead_letters", {}, "get", "/dlq"),
        # set_context changes only the fields it is given: it reads the context first.
        ("set_context", {"alarm_state": "armed_away"}, "get", "/context"),
    ],
)
async def test_service_failures_are_reported_with_their_reason(
    hass: HomeAssistant,
    entry: MockConfigEntry,
    aioclient_mock: AiohttpClientMocker,
    service: str,
    data: dict[str, Any],
    method: str,
    path: str,
) -> None:
    getattr(aioclient_mock, method)(
        f"{URL}/api/v1{path}", status=503, json={"error": {"code": "database_unavailable", "message": "down"}}
    )
    with pytest.raises(HomeAssistantError) as raised:
        await hass.services.async_call(
            DOMAIN, service, {"config_entry_id": entry.entry_id, **data}, blocking=True, return_response=True
        )
    assert raised.value.translation_key == "server_error"
    assert "database_unavailable" in str(raised.value.translation_placeholders)


async def test_an_unreachable_server_is_cannot_connect_not_a_refusal(
    hass: HomeAssistant, entry: MockConfigEntry, aioclient_mock: AiohttpClientMocker
) -> None:
    """Issue 15, item 14: "refused the request: Cannot connect to host" said the server refused
    what it never received."""
    aioclient_mock.get(f"{URL}/api/v1/events", exc=aiohttp.ClientConnectionError("Cannot connect to host"))
    with pytest.raises(HomeAssistantError) as raised:
        await hass.services.async_call(
            DOMAIN, "get_events", {"config_entry_id": entry.entry_id}, blocking=True, return_response=True
        )
    assert raised.value.translation_key == "cannot_connect"
    assert raised.value.translation_placeholders == {"error": "Cannot connect to host"}


async def test_services_refuse_an_unknown_or_unloaded_entry(hass: HomeAssistant, entry: MockConfigEntry) -> None:
    with pytest.raises(ServiceValidationError) as raised:
        await hass.services.async_call(
            DOMAIN, "get_events", {"config_entry_id": "nope"}, blocking=True, return_response=True
        )
    assert raised.value.translation_key == "unknown_entry"
    assert await hass.config_entries.async_unload(entry.entry_id)
    with pytest.raises(ServiceValidationError) as raised:
        await hass.services.async_call(
            DOMAIN, "get_events", {"config_entry_id": entry.entry_id}, blocking=True, return_response=True
        )
    assert raised.value.translation_key == "entry_not_loaded"


@pytest.mark.parametrize(
    ("since", "sent"),
    [
        # The UI's datetime selector: a naive time, meant in Home Assistant's time zone.
        ("2026-12-02 19:00:00", "2026-12-02T19:00:00+01:00"),
        ("2026-07-02 19:00:00", "2026-07-02T19:00:00+02:00"),
        # An explicit offset is kept as given.
        ("2026-12-02T19:00:00+00:00", "2026-12-02T19:00:00+00:00"),
    ],
)
async def test_get_events_reads_a_naive_since_in_home_assistants_time_zone(
    hass: HomeAssistant, entry: MockConfigEntry, aioclient_mock: AiohttpClientMocker, since: str, sent: str
) -> None:
    await hass.config.async_set_time_zone("Europe/Berlin")
    aioclient_mock.get(f"{URL}/api/v1/events", json={"events": [], "next_cursor": None})
    result = await call_service(hass, "get_events", entry, since=since)
    assert result == {"events": [], "next_cursor": None}
    url = aioclient_mock.mock_calls[-1][1]
    assert url.query["since"] == sent


async def test_saving_the_options_keeps_what_set_context_set(hass: HomeAssistant, real_entry: MockConfigEntry) -> None:
    client = real_entry.runtime_data.client
    await client.put_context({})  # the module's server: start from an empty context
    await call_service(hass, "set_context", real_entry, alarm_state="armed_away", notes="on holiday")
    # set_context changes only the fields it is given, too.
    await call_service(hass, "set_context", real_entry, open_entries=["Garage"])
    stored = (await client.get_context())["context"]
    assert stored["alarm_state"] == "armed_away" and stored["notes"] == "on holiday"
    assert stored["open_entries"] == ["Garage"]

    # The options name no alarm panel and no doors: the forwarder owns only presence and the sun.
    hass.states.async_set("person.anna", "home", {"friendly_name": "Anna"})
    hass.states.async_set("sun.sun", "below_horizon")
    result = await hass.config_entries.options.async_init(real_entry.entry_id)
    result = await hass.config_entries.options.async_configure(
        result["flow_id"], {"presence_entities": ["person.anna"], "sun_entity": "sun.sun"}
    )
    await hass.async_block_till_done()
    forwarder = real_entry.runtime_data.context
    assert forwarder.last_sent == {"people_home": ["Anna"], "sun": "below_horizon"}
    stored = (await client.get_context())["context"]
    assert stored == {
        "alarm_state": "armed_away",
        "people_home": ["Anna"],
        "open_entries": ["Garage"],
        "sun": "below_horizon",
        "notes": "on holiday",
    }
