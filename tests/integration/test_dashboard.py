"""docs/dashboard.yaml: valid YAML whose every entity id is one the integration creates (two
cameras, "Back door" and "Driveway"), and whose "Mark reviewed" button, through the script of
docs/integration.md, reviews the camera's last event on the server."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from homeassistant.core import HomeAssistant
from homeassistant.helpers import entity_registry as er
from homeassistant.setup import async_setup_component
from pytest_homeassistant_custom_component.common import MockConfigEntry
from pytest_homeassistant_custom_component.test_util.aiohttp import AiohttpClientMocker

from custom_components.home_security_intelligence.const import DOMAIN

from .conftest import KEY, URL, publish, sample

DOCS = Path(__file__).resolve().parents[2] / "docs"
ENTITY_ID = re.compile(r"\b(?:sensor|binary_sensor|camera|image|event|switch|script)\.[a-z0-9_]+\b")


def _strings(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [s for value in node.values() for s in _strings(value)]
    if isinstance(node, list):
        return [s for value in node for s in _strings(value)]
    return [node] if isinstance(node, str) else []


def _script() -> dict[str, Any]:
    text = (DOCS / "integration.md").read_text(encoding="utf-8")
    block = text.split("<!-- dashboard-script -->", 1)[1].split("```yaml", 1)[1].split("```", 1)[0]
    loaded = yaml.safe_load(block)
    assert isinstance(loaded, dict)
    return loaded


async def test_dashboard_names_only_entities_the_integration_creates_and_reviews_the_last_event(
    hass: HomeAssistant, mqtt_mock: Any, aioclient_mock: AiohttpClientMocker
) -> None:
    dashboard = yaml.safe_load((DOCS / "dashboard.yaml").read_text(encoding="utf-8"))
    assert {view["path"] for view in dashboard["views"]} == {"security", "live", "server"}
    named = {m for s in _strings(dashboard) for m in ENTITY_ID.findall(s)}
    aioclient_mock.get(f"{URL}/api/v1/system/status", json=sample("status.json"))
    aioclient_mock.get(
        f"{URL}/api/v1/cameras",
        json={
            "cameras": [
                {"id": "back_door", "name": "Back door", "folder": "back_door", "enabled": True},
                {"id": "driveway", "name": "Driveway", "folder": "driveway", "enabled": True},
            ]
        },
    )
    event = sample("event_new.json")
    aioclient_mock.patch(f"{URL}/api/v1/events/{event['id']}", json={**event, "reviewed": True})
    entry = MockConfigEntry(domain=DOMAIN, unique_id="hsi", data={"url": URL, "api_key": KEY, "prefix": "hsi"})
    entry.add_to_hass(hass)
    assert await hass.config_entries.async_setup(entry.entry_id)
    assert await async_setup_component(hass, "script", {"script": {"hsi_mark_last_event_reviewed": _script()}})
    await hass.async_block_till_done()
    publish(hass, "hsi/availability", "online")
    for camera in ("back_door", "driveway"):
        publish(hass, f"hsi/cameras/{camera}/state", sample("camera_state.json"))
    publish(hass, "hsi/events", event)
    await hass.async_block_till_done()

    registry = er.async_get(hass)
    missing = sorted(e for e in named if registry.async_get(e) is None and hass.states.get(e) is None)
    assert not missing, f"the dashboard names entities that do not exist: {missing}"
    assert "sensor.home_security_intelligence_server_home_risk_level" in named
    assert "sensor.back_door_current_risk_level" in named and "sensor.back_door_last_event" in named

    # The back door's "Mark reviewed" button, as the dashboard calls it.
    buttons = [
        card["tap_action"]
        for card in _cards(dashboard)
        if card.get("type") == "button" and "back_door" in str(card.get("tap_action"))
    ]
    assert len(buttons) == 1
    domain, name = buttons[0]["perform_action"].split(".")
    await hass.services.async_call(domain, name, buttons[0]["data"], blocking=True)
    await hass.async_block_till_done()
    calls = [(method, str(url)) for method, url, *_ in aioclient_mock.mock_calls if method == "PATCH"]
    assert calls == [("PATCH", f"{URL}/api/v1/events/{event['id']}")]


def _cards(node: Any) -> list[dict[str, Any]]:
    if isinstance(node, dict):
        found = [node] if "type" in node else []
        return found + [c for value in node.values() for c in _cards(value)]
    if isinstance(node, list):
        return [c for value in node for c in _cards(value)]
    return []
