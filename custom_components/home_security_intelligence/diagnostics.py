"""Diagnostics: the entry, the server's status and what each camera last published — the API
key and MQTT-borne secrets redacted."""

from __future__ import annotations

from typing import Any

from homeassistant.components.diagnostics import async_redact_data
from homeassistant.core import HomeAssistant

from . import HsiConfigEntry
from .const import CONF_API_KEY

TO_REDACT = {CONF_API_KEY, "api_key", "password", "username"}


async def async_get_config_entry_diagnostics(hass: HomeAssistant, entry: HsiConfigEntry) -> dict[str, Any]:
    coordinator = entry.runtime_data.coordinator
    return {
        "entry": {"data": async_redact_data(dict(entry.data), TO_REDACT), "options": dict(entry.options)},
        "online": coordinator.online,
        "status": async_redact_data(coordinator.status or {}, TO_REDACT),
        "cameras": {
            camera_id: {
                "name": camera.name,
                "state": camera.state,
                "snapshot_bytes": len(camera.snapshot) if camera.snapshot else 0,
                "last_event": camera.last_event,
            }
            for camera_id, camera in coordinator.cameras.items()
        },
        "context_last_sent": entry.runtime_data.context.last_sent,
    }
