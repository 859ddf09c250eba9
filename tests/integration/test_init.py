"""Setup and unload of an entry: subscriptions, reauth on a rejected or revoked key, and every
entity the dashboard names."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from homeassistant.config_entries import ConfigEntryState
from homeassistant.const import STATE_UNAVAILABLE
from homeassistant.core import HomeAssistant
from homeassistant.exceptions import HomeAssistantError
from homeassistant.helpers import entity_registry as er
from pytest_homeassistant_custom_component.common import MockConfigEntry
from pytest_homeassistant_custom_component.test_util.aiohttp import AiohttpClientMocker

from custom_components.home_security_intelligence.const import DOMAIN

from .conftest import KEY, URL, camera_online, publish, sample

DASHBOARD = Path(__file__).resolve().parents[2] / "docs" / "dashboard.yaml"


async def test_unload_removes_the_subscriptions(hass: HomeAssistant, entry: MockConfigEntry) -> None:
    await camera_online(hass)
    assert await hass.config_entries.async_unload(entry.entry_id)
    await hass.async_block_till_done()
    assert entry.state is ConfigEntryState.NOT_LOADED
    assert hass.states.get("sensor.back_door_risk_score").state == STATE_UNAVAILABLE
    publish(hass, "hsi/cameras/back_door/state", {**sample("camera_state.json"), "risk_score": 1})
    await hass.async_block_till_done()
    assert hass.states.get("sensor.back_door_risk_score").state == STATE_UNAVAILABLE


async def test_a_rejected_key_starts_reauth(
    hass: HomeAssistant, mqtt_mock: Any, aioclient_mock: AiohttpClientMocker
) -> None:
    aioclient_mock.get(
        f"{URL}/api/v1/system/status", status=401, json={"error": {"code": "unauthorized", "message": ""}}
    )
    entry = MockConfigEntry(domain=DOMAIN, unique_id="hsi", data={"url": URL, "api_key": KEY})
    entry.add_to_hass(hass)
    assert not await hass.config_entries.async_setup(entry.entry_id)
    assert entry.state is ConfigEntryState.SETUP_ERROR
    flows = hass.config_entries.flow.async_progress_by_handler(DOMAIN)
    assert [f["context"]["source"] for f in flows] == ["reauth"]


async def test_a_key_revoked_while_running_starts_reauth(
    hass: HomeAssistant, entry: MockConfigEntry, aioclient_mock: AiohttpClientMocker
) -> None:
    await camera_online(hass)
    assert hass.config_entries.flow.async_progress_by_handler(DOMAIN) == []
    aioclient_mock.clear_requests()
    aioclient_mock.get(f"{URL}/api/v1/events", status=401, json={"error": {"code": "unauthorized", "message": ""}})
    with pytest.raises(HomeAssistantError):
        await hass.services.async_call(
            DOMAIN, "get_events", {"config_entry_id": entry.entry_id}, blocking=True, return_response=True
        )
    await hass.async_block_till_done()
    flows = hass.config_entries.flow.async_progress_by_handler(DOMAIN)
    assert [f["context"]["source"] for f in flows] == ["reauth"]
    # A second rejection does not open a second flow.
    with pytest.raises(HomeAssistantError):
        await hass.services.async_call(
            DOMAIN, "get_events", {"config_entry_id": entry.entry_id}, blocking=True, return_response=True
        )
    await hass.async_block_till_done()
    assert len(hass.config_entries.flow.async_progress_by_handler(DOMAIN)) == 1


async def test_every_entity_of_the_dashboard_exists(hass: HomeAssistant, entry: MockConfigEntry) -> None:
    import re

    await camera_online(hass)
    publish(hass, "hsi/cameras/driveway/state", sample("camera_state.json"))
    await hass.async_block_till_done()
    text = await hass.async_add_executor_job(DASHBOARD.read_text, "utf-8")
    entity_ids = set(re.findall(r"\b(?:sensor|binary_sensor|camera|switch|event|image)\.[a-z0-9_]+", text))
    assert len(entity_ids) >= 20
    # Registered (GPU sensors of this CPU-only sample are registered but disabled, so have no state).
    registry = er.async_get(hass)
    assert sorted(e for e in entity_ids if registry.async_get(e) is None) == []
    assert sorted(e for e in entity_ids if hass.states.get(e) is None and "_gpu_" not in e) == []
