"""Base entities: one device per server, one per camera (via the server)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from homeassistant.core import HomeAssistant, callback
from homeassistant.helpers.device_registry import DeviceInfo
from homeassistant.helpers.dispatcher import async_dispatcher_connect
from homeassistant.helpers.entity import Entity, EntityDescription
from homeassistant.helpers.entity_platform import AddEntitiesCallback

from . import HsiConfigEntry
from .const import DOMAIN, SIGNAL_NEW_CAMERA
from .coordinator import HsiCoordinator


@callback
def async_add_camera_entities(
    hass: HomeAssistant,
    entry: HsiConfigEntry,
    async_add_entities: AddEntitiesCallback,
    entities_for: Callable[[HsiCoordinator, str], Iterable[Entity]],
) -> None:
    """Add a platform's entities for every known camera, and for each camera that appears later."""
    coordinator = entry.runtime_data.coordinator

    @callback
    def add_camera(camera_id: str) -> None:
        async_add_entities(entities_for(coordinator, camera_id))

    for camera_id in coordinator.cameras:
        add_camera(camera_id)
    entry.async_on_unload(async_dispatcher_connect(hass, SIGNAL_NEW_CAMERA.format(entry.entry_id), add_camera))


class HsiEntity(Entity):
    """Pushed by the coordinator; unavailable while the server's LWT says offline."""

    _attr_has_entity_name = True
    _attr_should_poll = False

    def __init__(self, coordinator: HsiCoordinator, description: EntityDescription) -> None:
        self.coordinator = coordinator
        self.entity_description = description

    async def async_added_to_hass(self) -> None:
        self.async_on_remove(self.coordinator.async_add_listener(self.async_write_ha_state))

    @property
    def available(self) -> bool:
        return self.coordinator.online


class HsiServerEntity(HsiEntity):
    def __init__(self, coordinator: HsiCoordinator, description: EntityDescription) -> None:
        super().__init__(coordinator, description)
        self._attr_unique_id = f"{coordinator.server_id}_{description.key}"
        self._attr_device_info = DeviceInfo(
            identifiers={(DOMAIN, coordinator.server_id)},
            name="Home Security Intelligence server",
            manufacturer="Home Security Intelligence",
            model="Inference server",
            sw_version=(coordinator.status or {}).get("version"),
            configuration_url=coordinator.client.url,
        )


class HsiCameraEntity(HsiEntity):
    def __init__(self, coordinator: HsiCoordinator, camera_id: str, description: EntityDescription) -> None:
        super().__init__(coordinator, description)
        self.camera_id = camera_id
        self._attr_unique_id = f"{coordinator.server_id}_{camera_id}_{description.key}"
        camera = coordinator.cameras[camera_id]
        self._attr_device_info = DeviceInfo(
            identifiers={(DOMAIN, f"{coordinator.server_id}_{camera_id}")},
            name=camera.name,
            manufacturer="Home Security Intelligence",
            model="Camera",
            via_device=(DOMAIN, coordinator.server_id),
        )

    @property
    def available(self) -> bool:
        return self.coordinator.online and self.camera_id in self.coordinator.cameras
