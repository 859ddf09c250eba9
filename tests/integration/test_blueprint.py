"""The notification blueprint: notify at the chosen level, per-camera cooldown, and the same
notification (tag) updated when the LLM's narrative arrives."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from homeassistant.components import automation
from homeassistant.core import HomeAssistant
from homeassistant.setup import async_setup_component
from pytest_homeassistant_custom_component.common import (
    MockConfigEntry,
    async_fire_mqtt_message,
    async_mock_service,
)
from pytest_homeassistant_custom_component.test_util.aiohttp import AiohttpClientMocker
from pytest_homeassistant_custom_component.typing import WebSocketGenerator

from custom_components.home_security_intelligence.const import DOMAIN

from .conftest import sample

BLUEPRINT = (
    Path(__file__).resolve().parents[2]
    / "blueprints"
    / "automation"
    / "home_security_intelligence"
    / "notify_on_risk.yaml"
)
URL = "http://192.168.1.20:8765"


def _install(target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    shutil.copy(BLUEPRINT, target / BLUEPRINT.name)


@pytest.fixture
def expected_lingering_timers() -> bool:
    """HA's ``mqtt_mock`` leaves MQTT's periodic housekeeping timer running (a harness trait)."""
    return True


async def _set_up_with_blueprint(hass: HomeAssistant, aioclient_mock: AiohttpClientMocker) -> None:
    """The blueprint installed where HA looks for it, and the integration set up against a mocked server."""
    target = Path(hass.config.path("blueprints/automation/home_security_intelligence"))
    await hass.async_add_executor_job(_install, target)
    aioclient_mock.get(f"{URL}/api/v1/system/status", json=sample("status.json"))
    aioclient_mock.get(f"{URL}/api/v1/cameras", json={"cameras": []})
    entry = MockConfigEntry(domain=DOMAIN, unique_id="hsi", data={"url": URL, "api_key": "k", "prefix": "hsi"})
    entry.add_to_hass(hass)
    assert await hass.config_entries.async_setup(entry.entry_id)


async def test_notifies_high_events_once_per_cooldown_and_updates_the_same_notification(
    hass: HomeAssistant, mqtt_mock: Any, aioclient_mock: AiohttpClientMocker
) -> None:
    await _set_up_with_blueprint(hass, aioclient_mock)
    notifications = async_mock_service(hass, "notify", "phone")
    assert await async_setup_component(
        hass,
        automation.DOMAIN,
        {
            automation.DOMAIN: {
                "use_blueprint": {
                    "path": f"home_security_intelligence/{BLUEPRINT.name}",
                    "input": {
                        "notification_kind": "notify",
                        "notify_service": "notify.phone",
                        "min_level": "high",
                        "cooldown": {"minutes": 5},
                    },
                }
            }
        },
    )
    await hass.async_block_till_done()

    def publish(name: str, **changes: Any) -> None:
        async_fire_mqtt_message(hass, "hsi/events", json.dumps({**sample(name), **changes}))

    publish("event_new.json")  # high, back door
    await hass.async_block_till_done()
    assert len(notifications) == 1
    first = notifications[0].data
    assert first["title"] == "Back door: High (82)"
    assert first["data"]["tag"] == "hsi-5f0c1f7e-2b7a-4c1e-9a55-0d3b1a6c9e21"

    publish("event_update.json")  # the LLM: critical, same event
    await hass.async_block_till_done()
    assert len(notifications) == 2
    assert notifications[1].data["data"]["tag"] == first["data"]["tag"]
    assert notifications[1].data["title"] == "Back door: Critical (88)"

    # A second event on the same camera within the cooldown: silent.
    publish("event_new.json", id="11111111-2222-4333-8444-555555555555")
    await hass.async_block_till_done()
    assert len(notifications) == 2
    # ... and so is the LLM's update of that silenced event.
    publish("event_update.json", id="11111111-2222-4333-8444-555555555555")
    await hass.async_block_till_done()
    assert len(notifications) == 2
    # A low event elsewhere: below the chosen level, silent too.
    publish("event_new.json", id="66666666-2222-4333-8444-555555555555", camera_id="garden", risk_level="low")
    await hass.async_block_till_done()
    assert len(notifications) == 2
    # A high event on another camera: notified.
    publish("event_new.json", id="77777777-2222-4333-8444-555555555555", camera_id="driveway")
    await hass.async_block_till_done()
    assert len(notifications) == 3

    # A low event (the cat) does not silence the high one that follows on the same camera.
    publish("event_new.json", id="88888888-2222-4333-8444-555555555555", camera_id="porch", risk_level="low")
    publish("event_new.json", id="99999999-2222-4333-8444-555555555555", camera_id="porch")
    await hass.async_block_till_done()
    assert [n.data["data"]["tag"] for n in notifications[3:]] == ["hsi-99999999-2222-4333-8444-555555555555"]
    # An escalation within the quiet period is told: a critical after a high.
    publish("event_new.json", id="aaaaaaaa-2222-4333-8444-555555555555", camera_id="porch", risk_level="critical")
    await hass.async_block_till_done()
    assert len(notifications) == 5 and notifications[4].data["title"].endswith("Critical (82)")
    # A second critical on that camera within the quiet period is not.
    publish("event_new.json", id="bbbbbbbb-2222-4333-8444-555555555555", camera_id="porch", risk_level="critical")
    await hass.async_block_till_done()
    assert len(notifications) == 5


async def test_persistent_notifications_one_per_event_replaced_by_its_rise(
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
                    "input": {"notification_kind": "persistent_notification", "min_level": "high"},
                }
            }
        },
    )
    await hass.async_block_till_done()
    client = await hass_ws_client(hass)

    async def shown() -> dict[str, str]:
        await client.send_json_auto_id({"type": "persistent_notification/get"})
        response = await client.receive_json()
        assert response["success"], response
        return {n["notification_id"]: n["title"] for n in response["result"]}

    def publish(name: str, **changes: Any) -> None:
        async_fire_mqtt_message(hass, "hsi/events", json.dumps({**sample(name), **changes}))

    publish("event_new.json")
    await hass.async_block_till_done()
    assert await shown() == {"hsi-5f0c1f7e-2b7a-4c1e-9a55-0d3b1a6c9e21": "Back door: High (82)"}
    # The rise to critical replaces it in place: still one notification for the event.
    publish("event_update.json")
    await hass.async_block_till_done()
    assert await shown() == {"hsi-5f0c1f7e-2b7a-4c1e-9a55-0d3b1a6c9e21": "Back door: Critical (88)"}
    # Another camera's event: a second notification.
    publish("event_new.json", id="77777777-2222-4333-8444-555555555555", camera_id="driveway", camera_name="Driveway")
    await hass.async_block_till_done()
    assert await shown() == {
        "hsi-5f0c1f7e-2b7a-4c1e-9a55-0d3b1a6c9e21": "Back door: Critical (88)",
        "hsi-77777777-2222-4333-8444-555555555555": "Driveway: High (82)",
    }


async def test_the_models_description_updates_the_same_notification(
    hass: HomeAssistant, mqtt_mock: Any, aioclient_mock: AiohttpClientMocker
) -> None:
    """Phase two: the fast rules alert first, then the description in the same notification (tag)."""
    await _set_up_with_blueprint(hass, aioclient_mock)
    notifications = async_mock_service(hass, "notify", "phone")
    assert await async_setup_component(
        hass,
        automation.DOMAIN,
        {
            automation.DOMAIN: {
                "use_blueprint": {
                    "path": f"home_security_intelligence/{BLUEPRINT.name}",
                    "input": {"notification_kind": "notify", "notify_service": "notify.phone", "min_level": "high"},
                }
            }
        },
    )
    await hass.async_block_till_done()
    vision = sample("event_update_vision.json")

    async_fire_mqtt_message(hass, "hsi/events", json.dumps(sample("event_new.json")))
    await hass.async_block_till_done()
    assert [n.data["message"] for n in notifications] == ["1 person at Back door at 02:10 (night) while armed away"]
    # The description at the same level: the same notification, now with the model's words.
    async_fire_mqtt_message(hass, "hsi/events", json.dumps({**vision, "risk_level": "high", "risk_score": 82}))
    await hass.async_block_till_done()
    assert len(notifications) == 2
    assert notifications[1].data["data"]["tag"] == notifications[0].data["data"]["tag"]
    assert notifications[1].data["title"] == "Back door: High (82)"
    seen = f"Seen by qwen3-vl-8b-instruct: {vision['description']}"
    assert notifications[1].data["message"] == f"1 person at Back door at 02:10 (night) while armed away\n{seen}"
    # The same description again (a rescoring) and a review: nothing more.
    async_fire_mqtt_message(hass, "hsi/events", json.dumps({**vision, "risk_level": "high", "risk_score": 82}))
    async_fire_mqtt_message(hass, "hsi/events", json.dumps({**vision, "reviewed": True, "alert": False}))
    await hass.async_block_till_done()
    assert len(notifications) == 2
