"""Camera entity: the latest annotated snapshot the server published (retained MQTT)."""

from __future__ import annotations

from homeassistant.components.camera import Camera
from homeassistant.core import HomeAssistant
from homeassistant.helpers.entity import EntityDescription
from homeassistant.helpers.entity_platform import AddEntitiesCallback

from . import HsiConfigEntry
from .coordinator import HsiCoordinator
from .entity import HsiCameraEntity, async_add_camera_entities

PARALLEL_UPDATES = 0

SNAPSHOT = EntityDescription(key="snapshot", translation_key="snapshot")


async def async_setup_entry(
    hass: HomeAssistant, entry: HsiConfigEntry, async_add_entities: AddEntitiesCallback
) -> None:
    async_add_camera_entities(
        hass, entry, async_add_entities, lambda coord, camera_id: [HsiSnapshotCamera(coord, camera_id, SNAPSHOT)]
    )


class HsiSnapshotCamera(HsiCameraEntity, Camera):
    _attr_content_type = "image/jpeg"

    def __init__(self, coordinator: HsiCoordinator, camera_id: str, description: EntityDescription) -> None:
        HsiCameraEntity.__init__(self, coordinator, camera_id, description)
        Camera.__init__(self)

    async def async_camera_image(self, width: int | None = None, height: int | None = None) -> bytes | None:
        camera = self.coordinator.cameras.get(self.camera_id)
        return camera.snapshot if camera else None
