"""Diagnostics: what each camera last published, the API key redacted."""

from __future__ import annotations

import json

from homeassistant.core import HomeAssistant
from pytest_homeassistant_custom_component.common import MockConfigEntry

from custom_components.home_security_intelligence.diagnostics import async_get_config_entry_diagnostics

from .conftest import KEY, camera_online


async def test_diagnostics_redact_the_api_key(hass: HomeAssistant, entry: MockConfigEntry) -> None:
    await camera_online(hass)
    diagnostics = await async_get_config_entry_diagnostics(hass, entry)
    assert diagnostics["entry"]["data"]["api_key"] == "**REDACTED**"
    assert KEY not in json.dumps(diagnostics, default=str)
    assert diagnostics["cameras"]["back_door"]["state"]["risk_score"] == 82
