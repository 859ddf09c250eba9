"""Switch: detection on/off for a camera (the server's ``enabled`` flag, via REST)."""

from __future__ import annotations

from typing import Any

from homeassistant.components.switch import SwitchEntity, SwitchEntityDescription
from homeassistant.const import EntityCategory
from homeassistant.core import HomeAssistant
from homeassistant.exceptions import HomeAssistantError
from homeassistant.helpers.entity_platform import AddEntitiesCallback

from . import HsiConfigEntry
from .api import HsiError
from .const import DOMAIN
from .entity import HsiCameraEntity, async_add_camera_entities

PARALLEL_UPDATES = 1

DETECTION = SwitchEntityDescription(key="detection", translation_key="detection", entity_category=EntityCategory.CONFIG)


async def async_setup_entry(
    hass: HomeAssistant, entry: HsiConfigEntry, async_add_entities: AddEntitiesCallback
) -> None:
    async_add_camera_entities(
        hass, entry, async_add_entities, lambda coord, camera_id: [HsiDetectionSwitch(coord, camera_id, DETECTION)]
    )


class HsiDetectionSwitch(HsiCameraEntity, SwitchEntity):
    @property
    def is_on(self) -> bool | None:
        camera = self.coordinator.cameras.get(self.camera_id)
        return camera.state.get("enabled") if camera else None

    async def async_turn_on(self, **kwargs: Any) -> None:
        await self._set(True)

    async def async_turn_off(self, **kwargs: Any) -> None:
        await self._set(False)

    async def _set(self, enabled: bool) -> None:
        try:
            await self.coordinator.client.set_camera_enabled(self.camera_id, enabled)
        except HsiError as err:
            raise HomeAssistantError(
                translation_domain=DOMAIN,
                translation_key="camera_update_failed",
                translation_placeholders={"error": str(err)},
            ) from err
        camera = self.coordinator.cameras.get(self.camera_id)
        if camera is not None:
            camera.state["enabled"] = enabled
        self.async_write_ha_state()
