"""Event entity per camera: fires when a security event opens (``new``) and when it rises to a
higher level, as the notifications do; an unchanged update, a review or an end fire nothing.

The language model's description (and a vision model's activity, threat indicators, its own
observations and the frames it saw) is among the attributes; when it arrives without a new
level, for the event the entity last fired, the attributes are updated in place (the entity's
state, the time it fired, stays)."""

from __future__ import annotations

from typing import Any

from homeassistant.components.event import EventEntity, EventEntityDescription
from homeassistant.core import HomeAssistant, callback
from homeassistant.helpers.entity_platform import AddEntitiesCallback

from . import HsiConfigEntry
from .alerts import recognised_people, unfamiliar_face
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


def reading(event: dict[str, Any]) -> dict[str, Any]:
    """The language model's reading of ``event``, as attributes."""
    return {
        "description": event.get("description"),
        "activity": event.get("activity"),
        "threat_indicators": list(event.get("threat_indicators") or []),
        "model_observations": list(event.get("model_observations") or []),
        "frames_sent": list(event.get("frames_sent") or []),
        "model": event.get("model"),
    }


class HsiSecurityEvent(HsiCameraEntity, EventEntity):
    """Event type = risk level; attributes carry the why (summary, reasoning, factors, description)."""

    _fired_event_id: Any = None
    #: The model's reading that arrived after the entity fired for its event (else empty).
    _late_reading: dict[str, Any] | None = None

    @property
    def extra_state_attributes(self) -> dict[str, Any] | None:
        return self._late_reading

    async def async_added_to_hass(self) -> None:
        await super().async_added_to_hass()
        self.async_on_remove(self.coordinator.async_add_event_listener(self._on_event))

    @callback
    def _on_event(self, event: dict[str, Any]) -> None:
        camera = self.coordinator.cameras.get(self.camera_id)
        if event.get("camera_id") != self.camera_id or camera is None:
            return
        if not camera.last_event_alerted:
            if event.get("id") == self._fired_event_id and event.get("description"):
                late = reading(event)
                if late != self._late_reading:
                    self._late_reading = late
                    self.async_write_ha_state()
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
                # Known people: who was recognised, and whether an unfamiliar face was seen.
                "people": recognised_people(event),
                "unfamiliar": unfamiliar_face(event),
                # The video the event was seen in, as a full URL (it needs the API key, like the snapshot).
                "clip_url": f"{self.coordinator.client.url}{event['clip_url']}" if event.get("clip_url") else None,
                **reading(event),
            },
        )
        self._fired_event_id = event.get("id")
        self._late_reading = None
        self.async_write_ha_state()
