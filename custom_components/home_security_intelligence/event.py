"""Event entity per camera: fires when a security event opens (``new``) and when it rises to a
higher level, as the notifications do; an unchanged update, a review or an end fire nothing."""

from __future__ import annotations

from typing import Any

from homeassistant.components.event import EventEntity, EventEntityDescription
from homeassistant.core import HomeAssistant, callback
from homeassistant.helpers.entity_platform import AddEntitiesCallback

from . import HsiConfigEntry
from .const import RISK_LEVELS
from .entity import HsiCameraEntity, async_add_camera_entities

PARALLEL_UPDATES = 0

SECURITY_EVENT = EventEntityDescription(key="security_event", translation_key="security_event", event_types=RISK_LEVELS)


async def async_setup_entry(
    hass: HomeAssistant, entry: HsiConfigEntry, async_add_entities: AddEntitiesCallback
) -> None:
    async_add_camera_entities(
        hass, entry, async_add_entities, lambda coord, camera_id: [HsiSecurityEvent(coord, camera_id, SECURITY_EVENT)]
    )


class HsiSecurityEvent(HsiCameraEntity, EventEntity):
    """Event type = risk level; attributes carry the why (summary, reasoning, factors)."""

    async def async_added_to_hass(self) -> None:
        await super().async_added_to_hass()
        self.async_on_remove(self.coordinator.async_add_event_listener(self._on_event))

    @callback
    def _on_event(self, event: dict[str, Any]) -> None:
        camera = self.coordinator.cameras.get(self.camera_id)
        if event.get("camera_id") != self.camera_id or camera is None or not camera.last_event_alerted:
            return
        level = event.get("risk_level")
        if level not in RISK_LEVELS:
            return
        self._trigger_event(
            level,
            {
                "event_id": event.get("id"),
                "phase": event.get("type"),
                "risk_score": event.get("risk_score"),
                "summary": event.get("summary"),
                "reasoning": event.get("reasoning"),
                "factors": [f.get("name") for f in event.get("risk_factors", []) if isinstance(f, dict)],
                "objects": event.get("objects"),
                "analysis_source": event.get("analysis_source"),
                "started_at": event.get("started_at"),
            },
        )
        self.async_write_ha_state()
