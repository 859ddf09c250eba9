"""Image entity per camera: the snapshot of the camera's latest security event (REST)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from homeassistant.components.image import ImageEntity
from homeassistant.core import HomeAssistant, callback
from homeassistant.helpers.entity import EntityDescription
from homeassistant.helpers.entity_platform import AddEntitiesCallback
from homeassistant.util import dt as dt_util

from . import HsiConfigEntry
from .api import HsiError
from .coordinator import HsiCoordinator
from .entity import HsiCameraEntity, async_add_camera_entities

PARALLEL_UPDATES = 0

EVENT_SNAPSHOT = EntityDescription(key="event_snapshot", translation_key="event_snapshot")


async def async_setup_entry(
    hass: HomeAssistant, entry: HsiConfigEntry, async_add_entities: AddEntitiesCallback
) -> None:
    async_add_camera_entities(
        hass,
        entry,
        async_add_entities,
        lambda coordinator, camera_id: [HsiEventSnapshot(hass, coordinator, camera_id, EVENT_SNAPSHOT)],
    )


class HsiEventSnapshot(HsiCameraEntity, ImageEntity):
    """Fetched from ``GET /events/{id}/snapshot.jpg`` when the camera's event changes."""

    _attr_content_type = "image/jpeg"

    def __init__(
        self, hass: HomeAssistant, coordinator: HsiCoordinator, camera_id: str, description: EntityDescription
    ) -> None:
        HsiCameraEntity.__init__(self, coordinator, camera_id, description)
        ImageEntity.__init__(self, hass)
        self._event_id: str | None = None
        self._image: bytes | None = None

    async def async_added_to_hass(self) -> None:
        # Before the base class's listener, so each state written already shows the retained event.
        self._adopt_retained_event()
        self.async_on_remove(self.coordinator.async_add_listener(self._adopt_retained_event))
        await super().async_added_to_hass()
        self.async_on_remove(self.coordinator.async_add_event_listener(self._on_event))

    @callback
    def _adopt_retained_event(self) -> None:
        """The camera's retained state names its last event: after a reload or restart that is
        the only source, so a newer event there replaces the one shown (an older one never does)."""
        camera = self.coordinator.cameras.get(self.camera_id)
        if camera is None or camera.last_event_id is None or camera.last_event_id == self._event_id:
            return
        started = camera.last_event_at
        shown = self._attr_image_last_updated
        if shown is not None and (started is None or started <= shown):
            return
        self._event_id = camera.last_event_id
        self._image = None
        self._attr_image_last_updated = started or dt_util.utcnow()

    @callback
    def _on_event(self, event: dict[str, Any]) -> None:
        if event.get("camera_id") != self.camera_id or event.get("type") != "new":
            return
        self._event_id = str(event.get("id"))
        self._image = None
        started = dt_util.parse_datetime(str(event.get("started_at", "")))
        self._attr_image_last_updated = started or dt_util.utcnow()
        self.async_write_ha_state()

    @property
    def image_last_updated(self) -> datetime | None:
        return self._attr_image_last_updated

    async def async_image(self) -> bytes | None:
        if self._event_id is None:
            return None
        if self._image is None:
            try:
                self._image = await self.coordinator.client.event_snapshot(self._event_id)
            except HsiError:
                return None
        return self._image
