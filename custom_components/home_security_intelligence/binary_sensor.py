"""Binary sensors: person / vehicle / animal occupancy and tampering per camera; server connectivity."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from homeassistant.components.binary_sensor import (
    BinarySensorDeviceClass,
    BinarySensorEntity,
    BinarySensorEntityDescription,
)
from homeassistant.const import EntityCategory
from homeassistant.core import HomeAssistant
from homeassistant.helpers.entity_platform import AddEntitiesCallback

from . import HsiConfigEntry
from .coordinator import CameraData, HsiCoordinator
from .entity import HsiCameraEntity, HsiServerEntity, async_add_camera_entities

PARALLEL_UPDATES = 0

# COCO class names the server publishes in a camera's ``objects``, by occupancy category.
VEHICLES = frozenset({"bicycle", "car", "motorcycle", "bus", "truck", "boat", "train", "airplane"})
ANIMALS = frozenset({"bird", "cat", "dog", "horse", "sheep", "cow", "bear", "elephant", "zebra", "giraffe"})


def _seen(labels: frozenset[str]) -> Callable[[CameraData], bool]:
    return lambda camera: any(n > 0 for label, n in camera.state.get("objects", {}).items() if label in labels)


@dataclass(frozen=True, kw_only=True)
class HsiOccupancyDescription(BinarySensorEntityDescription):
    is_on_fn: Callable[[CameraData], bool]


OCCUPANCY: tuple[HsiOccupancyDescription, ...] = (
    HsiOccupancyDescription(
        key="person",
        translation_key="person",
        device_class=BinarySensorDeviceClass.OCCUPANCY,
        is_on_fn=_seen(frozenset({"person"})),
    ),
    HsiOccupancyDescription(
        key="vehicle",
        translation_key="vehicle",
        device_class=BinarySensorDeviceClass.OCCUPANCY,
        is_on_fn=_seen(VEHICLES),
    ),
    HsiOccupancyDescription(
        key="animal", translation_key="animal", device_class=BinarySensorDeviceClass.OCCUPANCY, is_on_fn=_seen(ANIMALS)
    ),
)

TAMPER = BinarySensorEntityDescription(
    key="tamper",
    translation_key="tamper",
    device_class=BinarySensorDeviceClass.PROBLEM,
)

CONNECTIVITY = BinarySensorEntityDescription(
    key="connectivity",
    translation_key="connectivity",
    device_class=BinarySensorDeviceClass.CONNECTIVITY,
    entity_category=EntityCategory.DIAGNOSTIC,
)


async def async_setup_entry(
    hass: HomeAssistant, entry: HsiConfigEntry, async_add_entities: AddEntitiesCallback
) -> None:
    coordinator = entry.runtime_data.coordinator
    async_add_entities([HsiConnectivity(coordinator, CONNECTIVITY)])

    async_add_camera_entities(
        hass,
        entry,
        async_add_entities,
        lambda coordinator, camera_id: (
            *(HsiOccupancy(coordinator, camera_id, d) for d in OCCUPANCY),
            HsiTamper(coordinator, camera_id, TAMPER),
        ),
    )


class HsiOccupancy(HsiCameraEntity, BinarySensorEntity):
    entity_description: HsiOccupancyDescription

    @property
    def is_on(self) -> bool | None:
        camera = self.coordinator.cameras.get(self.camera_id)
        return self.entity_description.is_on_fn(camera) if camera else None


class HsiTamper(HsiCameraEntity, BinarySensorEntity):
    """On while the server judges the camera's view tampered with (covered, blinded, pointed
    elsewhere, out of focus); unknown until it has learned the camera's scene."""

    @property
    def is_on(self) -> bool | None:
        camera = self.coordinator.cameras.get(self.camera_id)
        if camera is None or camera.tamper is None:
            return None
        return bool(camera.tamper["tampered"])

    @property
    def extra_state_attributes(self) -> Mapping[str, Any] | None:
        camera = self.coordinator.cameras.get(self.camera_id)
        if camera is None or camera.tamper is None:
            return None
        return {"kind": camera.tamper.get("kind"), "since": camera.tamper.get("since")}


class HsiConnectivity(HsiServerEntity, BinarySensorEntity):
    """On while the server's availability topic says online; itself always available."""

    def __init__(self, coordinator: HsiCoordinator, description: BinarySensorEntityDescription) -> None:
        super().__init__(coordinator, description)

    @property
    def available(self) -> bool:
        return True

    @property
    def is_on(self) -> bool:
        return self.coordinator.online
