"""The detection switch: goes through REST and reports the server's refusal."""

from __future__ import annotations

import pytest
from homeassistant.const import STATE_OFF
from homeassistant.core import HomeAssistant
from homeassistant.exceptions import HomeAssistantError
from pytest_homeassistant_custom_component.common import MockConfigEntry
from pytest_homeassistant_custom_component.test_util.aiohttp import AiohttpClientMocker

from .conftest import URL, camera_online


async def test_detection_switch_goes_through_rest_and_reports_a_failure(
    hass: HomeAssistant, entry: MockConfigEntry, aioclient_mock: AiohttpClientMocker
) -> None:
    await camera_online(hass)
    camera_url = f"{URL}/api/v1/cameras/back_door"
    aioclient_mock.patch(camera_url, json={"id": "back_door", "name": "Back door", "enabled": False})
    await hass.services.async_call("switch", "turn_off", {"entity_id": "switch.back_door_detection"}, blocking=True)
    assert hass.states.get("switch.back_door_detection").state == STATE_OFF
    assert aioclient_mock.mock_calls[-1][2] == {"enabled": False}
    aioclient_mock.clear_requests()
    aioclient_mock.patch(camera_url, status=500, json={"error": {"code": "internal", "message": "boom"}})
    with pytest.raises(HomeAssistantError) as raised:
        await hass.services.async_call("switch", "turn_on", {"entity_id": "switch.back_door_detection"}, blocking=True)
    assert raised.value.translation_key == "camera_update_failed"
    assert hass.states.get("switch.back_door_detection").state == STATE_OFF
