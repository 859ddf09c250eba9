"""Known people in Home Assistant: the enroll_person and forget_person services against a real
server with the real face and body embedders; identities in the alert data and the event
entity's attributes; the per-camera "last recognised person" sensor."""

from __future__ import annotations

import asyncio
import json
import shutil
from typing import Any

import pytest
from homeassistant.components import automation
from homeassistant.const import STATE_UNKNOWN
from homeassistant.core import HomeAssistant, State
from homeassistant.exceptions import ServiceValidationError
from homeassistant.setup import async_setup_component
from pytest_homeassistant_custom_component.common import (
    MockConfigEntry,
    async_fire_mqtt_message,
    mock_restore_cache_with_extra_data,
)
from pytest_homeassistant_custom_component.test_util.aiohttp import AiohttpClientMocker
from pytest_homeassistant_custom_component.typing import WebSocketGenerator

from custom_components.home_security_intelligence.alerts import recognised_people, unfamiliar_face

from .conftest import call_service, camera_online, publish, sample, set_up_entry
from .server import RealServer, server_file
from .test_blueprint import BLUEPRINT, _set_up_with_blueprint

#: How conftest's ``real_server`` starts this module's server.
REAL_SERVER_OPTIONS = {"recognition": True}


async def test_enroll_from_an_event_then_forget_deletes_the_person_and_embeddings(
    hass: HomeAssistant, real_entry: MockConfigEntry, real_server: RealServer
) -> None:
    client = real_entry.runtime_data.client
    await client._request("POST", "/cameras", json={"id": "door", "name": "Door"})
    target = real_server.cameras / "door" / "MDAlarm_20261124-230000.png"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(server_file("demo_assets.image('astronaut.png')"), target)
    events: list[dict[str, Any]] = []
    for _ in range(600):
        events = (await client.get_events(camera="door"))["events"]
        if events:
            break
        await asyncio.sleep(0.1)
    [event] = events
    identity = event["detections"][0]["identity"]
    assert identity == {
        "person": None,
        "person_id": None,
        "similarity": None,
        "source": "face",
        "visitor": identity["visitor"],
        # An unknown person's stranger id (first sighting): no vector, only the id, count and time.
        "stranger": identity["stranger"],
        "visits": 1,
        "first_seen": "2026-11-24T23:00:00Z",
    }
    assert identity["stranger"].startswith("S-")

    enrolled = await call_service(
        hass, "enroll_person", real_entry, event_id=event["id"], name="Anna", person_entity_id="person.anna"
    )
    assert (enrolled["name"], enrolled["entity_id"], enrolled["embeddings"]) == (
        "Anna",
        "person.anna",
        {"face": 1, "body": 1},
    )
    # Again (another view, here the same one): the same person gets more embeddings, no second person.
    again = await call_service(hass, "enroll_person", real_entry, event_id=event["id"], name="anna")
    assert again["id"] == enrolled["id"] and again["embeddings"] == {"face": 2, "body": 2}

    forgotten = await call_service(hass, "forget_person", real_entry, name="Anna")
    assert forgotten == {"forgotten": "Anna", "embeddings_deleted": 4}
    assert await client.list_people() == []
    with pytest.raises(ServiceValidationError) as err:
        await call_service(hass, "forget_person", real_entry, name="Anna")
    assert err.value.translation_key == "unknown_person"


def _message(identities: list[dict[str, Any] | None]) -> dict[str, Any]:
    return {"detections": [{"label": "person", "identity": i} for i in identities]}


def test_alert_data_names_recognised_people_and_flags_an_unfamiliar_face() -> None:
    anna = {"person": "Anna", "person_id": 1, "similarity": 0.91, "source": "face", "visitor": None}
    stranger = {"person": None, "person_id": None, "similarity": None, "source": "face", "visitor": 9}
    back = {"person": None, "person_id": None, "similarity": None, "source": "body", "visitor": 10}
    assert recognised_people(_message([anna, anna, None])) == ["Anna"]
    assert unfamiliar_face(_message([anna, stranger])) is True
    assert unfamiliar_face(_message([anna, back])) is False  # a body seen without a face is not "unfamiliar"
    assert recognised_people({"detections": []}) == [] and unfamiliar_face({}) is False


async def test_camera_sensor_shows_the_last_recognised_person_and_the_event_entity_carries_identities(
    hass: HomeAssistant, entry: MockConfigEntry
) -> None:
    await camera_online(hass)
    sensor = "sensor.back_door_last_recognised_person"
    assert hass.states.get(sensor).state == STATE_UNKNOWN  # no one recognised yet
    event = sample("event_new.json")
    anna = {"person": "Anna", "person_id": 1, "similarity": 0.9, "source": "face", "visitor": None}
    event["detections"] = [{**event["detections"][0], "identity": anna}]
    publish(hass, "hsi/events", event)
    await hass.async_block_till_done()
    assert hass.states.get(sensor).state == "Anna"
    fired = [s for s in hass.states.async_all("event") if s.attributes.get("event_id") == event["id"]]
    assert fired and fired[0].attributes["people"] == ["Anna"] and fired[0].attributes["unfamiliar"] is False
    # A later event with nobody recognised keeps the last one recognised.
    publish(hass, "hsi/events", {**sample("event_end.json")})
    await hass.async_block_till_done()
    assert hass.states.get(sensor).state == "Anna"


async def test_blueprint_skips_events_of_known_people_only_when_asked(
    hass: HomeAssistant, mqtt_mock: Any, aioclient_mock: AiohttpClientMocker, hass_ws_client: WebSocketGenerator
) -> None:
    await _set_up_with_blueprint(hass, aioclient_mock)
    assert await async_setup_component(hass, "persistent_notification", {})
    assert await async_setup_component(
        hass,
        automation.DOMAIN,
        {
            automation.DOMAIN: {
                "use_blueprint": {
                    "path": f"home_security_intelligence/{BLUEPRINT.name}",
                    "input": {
                        "notification_kind": "persistent_notification",
                        "min_level": "high",
                        "skip_known_people": True,
                    },
                }
            }
        },
    )
    await hass.async_block_till_done()
    client = await hass_ws_client(hass)

    async def shown() -> set[str]:
        await client.send_json_auto_id({"type": "persistent_notification/get"})
        response = await client.receive_json()
        return {n["notification_id"] for n in response["result"]}

    base = sample("event_new.json")
    anna = {"person": "Anna", "person_id": 1, "similarity": 0.9, "source": "face", "visitor": None}
    stranger = {"person": None, "person_id": None, "similarity": None, "source": "face", "visitor": 4}
    cases = {
        "11111111-2222-4333-8444-000000000001": ([anna], False),  # only Anna: skipped
        "11111111-2222-4333-8444-000000000002": ([anna, stranger], True),  # Anna with a stranger
        "11111111-2222-4333-8444-000000000003": ([None], True),  # recognition off or not embedded
    }
    for n, (event_id, (identities, _)) in enumerate(cases.items()):
        detections = [{**base["detections"][0], "identity": i} for i in identities]
        camera = f"cam{n}"
        async_fire_mqtt_message(
            hass,
            "hsi/events",
            json.dumps({**base, "id": event_id, "camera_id": camera, "camera_name": camera, "detections": detections}),
        )
        await hass.async_block_till_done()
    assert await shown() == {f"hsi-{event_id}" for event_id, (_, told) in cases.items() if told}


async def test_last_recognised_person_survives_a_home_assistant_restart_and_a_reload(
    hass: HomeAssistant, mqtt_mock: Any, aioclient_mock: AiohttpClientMocker
) -> None:
    sensor = "sensor.back_door_last_recognised_person"
    # What Home Assistant saved when it stopped (a RestoreSensor's state and native value).
    mock_restore_cache_with_extra_data(
        hass, [(State(sensor, "Anna"), {"native_value": "Anna", "native_unit_of_measurement": None})]
    )
    entry = await set_up_entry(hass, aioclient_mock)
    await camera_online(hass)
    assert hass.states.get(sensor).state == "Anna"  # restored: the server keeps no "last recognised"

    # An event with nobody recognised keeps her; one recognising Ben replaces her.
    publish(hass, "hsi/events", sample("event_end.json"))
    await hass.async_block_till_done()
    assert hass.states.get(sensor).state == "Anna"
    event = sample("event_new.json")
    ben = {"person": "Ben", "person_id": 2, "similarity": 0.88, "source": "face", "visitor": None}
    publish(hass, "hsi/events", {**event, "detections": [{**event["detections"][0], "identity": ben}]})
    await hass.async_block_till_done()
    assert hass.states.get(sensor).state == "Ben"

    # A reload restores the latest one from what Home Assistant keeps while running.
    assert await hass.config_entries.async_reload(entry.entry_id)
    await hass.async_block_till_done()
    await camera_online(hass)
    assert hass.states.get(sensor).state == "Ben"
