"""Sensors: risk score and level per camera; queue, throughput, latency and GPU of the server."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from homeassistant.components.sensor import (
    SensorDeviceClass,
    SensorEntity,
    SensorEntityDescription,
    SensorStateClass,
)
from homeassistant.const import PERCENTAGE, EntityCategory, UnitOfInformation, UnitOfTemperature, UnitOfTime
from homeassistant.core import HomeAssistant
from homeassistant.helpers.entity_platform import AddEntitiesCallback

from . import HsiConfigEntry
from .const import RISK_LEVELS
from .coordinator import CameraData
from .entity import HsiCameraEntity, HsiServerEntity, async_add_camera_entities

PARALLEL_UPDATES = 0


@dataclass(frozen=True, kw_only=True)
class HsiCameraSensorDescription(SensorEntityDescription):
    value_fn: Callable[[CameraData], Any]


@dataclass(frozen=True, kw_only=True)
class HsiServerSensorDescription(SensorEntityDescription):
    value_fn: Callable[[dict[str, Any]], Any]


def _gpu(key: str) -> Callable[[dict[str, Any]], Any]:
    return lambda status: (status.get("gpu") or {}).get(key)


CAMERA_SENSORS: tuple[HsiCameraSensorDescription, ...] = (
    HsiCameraSensorDescription(
        key="risk_score",
        translation_key="risk_score",
        state_class=SensorStateClass.MEASUREMENT,
        value_fn=lambda camera: camera.state.get("risk_score"),
    ),
    HsiCameraSensorDescription(
        key="risk_level",
        translation_key="risk_level",
        device_class=SensorDeviceClass.ENUM,
        options=RISK_LEVELS,
        value_fn=lambda camera: camera.state.get("risk_level"),
    ),
)

SERVER_SENSORS: tuple[HsiServerSensorDescription, ...] = (
    HsiServerSensorDescription(
        key="queue_depth",
        translation_key="queue_depth",
        state_class=SensorStateClass.MEASUREMENT,
        entity_category=EntityCategory.DIAGNOSTIC,
        value_fn=lambda status: sum(v for k, v in status.get("queue", {}).items() if k in ("queued", "running")),
    ),
    HsiServerSensorDescription(
        key="dlq_size",
        translation_key="dlq_size",
        state_class=SensorStateClass.MEASUREMENT,
        entity_category=EntityCategory.DIAGNOSTIC,
        value_fn=lambda status: status.get("dlq_size"),
    ),
    HsiServerSensorDescription(
        key="images_per_s",
        translation_key="images_per_s",
        native_unit_of_measurement="images/s",
        state_class=SensorStateClass.MEASUREMENT,
        entity_category=EntityCategory.DIAGNOSTIC,
        value_fn=lambda status: status.get("images_per_s"),
    ),
    HsiServerSensorDescription(
        key="latency_p95",
        translation_key="latency_p95",
        device_class=SensorDeviceClass.DURATION,
        native_unit_of_measurement=UnitOfTime.MILLISECONDS,
        state_class=SensorStateClass.MEASUREMENT,
        entity_category=EntityCategory.DIAGNOSTIC,
        value_fn=lambda status: status.get("latency_ms_p95"),
    ),
    HsiServerSensorDescription(
        key="gpu_utilization",
        translation_key="gpu_utilization",
        native_unit_of_measurement=PERCENTAGE,
        state_class=SensorStateClass.MEASUREMENT,
        entity_category=EntityCategory.DIAGNOSTIC,
        value_fn=_gpu("utilization_percent"),
    ),
    HsiServerSensorDescription(
        key="gpu_memory_used",
        translation_key="gpu_memory_used",
        device_class=SensorDeviceClass.DATA_SIZE,
        native_unit_of_measurement=UnitOfInformation.MEBIBYTES,
        state_class=SensorStateClass.MEASUREMENT,
        entity_category=EntityCategory.DIAGNOSTIC,
        value_fn=_gpu("memory_used_mb"),
    ),
    HsiServerSensorDescription(
        key="gpu_temperature",
        translation_key="gpu_temperature",
        device_class=SensorDeviceClass.TEMPERATURE,
        native_unit_of_measurement=UnitOfTemperature.CELSIUS,
        state_class=SensorStateClass.MEASUREMENT,
        entity_category=EntityCategory.DIAGNOSTIC,
        value_fn=_gpu("temperature_c"),
    ),
)


async def async_setup_entry(
    hass: HomeAssistant, entry: HsiConfigEntry, async_add_entities: AddEntitiesCallback
) -> None:
    coordinator = entry.runtime_data.coordinator
    # GPU sensors of a CPU-only server would stay unavailable for good: disabled by default there
    # (the choice is made when the entity is first registered; the user can enable them later).
    has_gpu = bool((coordinator.status or {}).get("gpu"))
    async_add_entities(
        HsiServerSensor(
            coordinator,
            replace(description, entity_registry_enabled_default=has_gpu)
            if description.key.startswith("gpu_")
            else description,
        )
        for description in SERVER_SENSORS
    )

    async_add_camera_entities(
        hass,
        entry,
        async_add_entities,
        lambda coordinator, camera_id: (HsiCameraSensor(coordinator, camera_id, d) for d in CAMERA_SENSORS),
    )


class HsiCameraSensor(HsiCameraEntity, SensorEntity):
    entity_description: HsiCameraSensorDescription

    @property
    def native_value(self) -> Any:
        camera = self.coordinator.cameras.get(self.camera_id)
        return self.entity_description.value_fn(camera) if camera else None


class HsiServerSensor(HsiServerEntity, SensorEntity):
    entity_description: HsiServerSensorDescription

    @property
    def available(self) -> bool:
        # GPU sensors have no value on a CPU-only server: unavailable, not zero.
        status = self.coordinator.status
        return super().available and status is not None and self.entity_description.value_fn(status) is not None

    @property
    def native_value(self) -> Any:
        status = self.coordinator.status
        return self.entity_description.value_fn(status) if status else None
