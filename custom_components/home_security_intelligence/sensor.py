"""Sensors: risk score and level per camera, its current (held, decaying) level and its last event;
the home's current level, queue, throughput, latency and GPU of the server."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from homeassistant.components.sensor import (
    RestoreSensor,
    SensorDeviceClass,
    SensorEntity,
    SensorEntityDescription,
    SensorStateClass,
)
from homeassistant.const import PERCENTAGE, EntityCategory, UnitOfInformation, UnitOfTemperature, UnitOfTime
from homeassistant.core import HomeAssistant
from homeassistant.helpers.entity_platform import AddEntitiesCallback
from homeassistant.helpers.restore_state import ExtraStoredData, RestoreEntity
from homeassistant.util import dt as dt_util

from . import HsiConfigEntry
from .const import RISK_LEVELS
from .coordinator import CameraData, HsiCoordinator
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
#: The enrolled person this camera last recognised (known people); restored after a restart.
LAST_PERSON = SensorEntityDescription(key="last_recognised_person", translation_key="last_recognised_person")

#: How worried to be now: the camera's active events' highest level, held then decaying after
#: they end (coordinator.CameraRisk), never below the live risk level.
CURRENT_LEVEL = SensorEntityDescription(
    key="current_level", translation_key="current_level", device_class=SensorDeviceClass.ENUM, options=RISK_LEVELS
)
#: The camera's latest event as it was last judged; keeps its values until the next event.
LAST_EVENT_LEVEL = SensorEntityDescription(
    key="last_event_level",
    translation_key="last_event_level",
    device_class=SensorDeviceClass.ENUM,
    options=RISK_LEVELS,
)
#: The home's current level: the highest current level over the cameras (a server-device sensor).
HOME_LEVEL = SensorEntityDescription(
    key="home_risk_level", translation_key="home_risk_level", device_class=SensorDeviceClass.ENUM, options=RISK_LEVELS
)
#: The last event's values kept as attributes (and restored with the state after a reload).
LAST_EVENT_ATTRIBUTES = ("event_id", "risk_score", "summary", "started_at", "ended_at", "reviewed", "analysis_source")

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
    async_add_entities([HsiHomeLevelSensor(coordinator, HOME_LEVEL)])

    def camera_sensors(coordinator: HsiCoordinator, camera_id: str) -> list[SensorEntity]:
        sensors: list[SensorEntity] = [HsiCameraSensor(coordinator, camera_id, d) for d in CAMERA_SENSORS]
        sensors.append(HsiCurrentLevelSensor(coordinator, camera_id, CURRENT_LEVEL))
        sensors.append(HsiLastEventSensor(coordinator, camera_id, LAST_EVENT_LEVEL))
        sensors.append(HsiLastPersonSensor(coordinator, camera_id, LAST_PERSON))
        return sensors

    async_add_camera_entities(hass, entry, async_add_entities, camera_sensors)


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


@dataclass
class _RiskData(ExtraStoredData):
    """The events a camera's current level follows (CameraRisk.as_dict), kept across restarts."""

    risk: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return self.risk


class HsiCurrentLevelSensor(HsiCameraEntity, SensorEntity, RestoreEntity):
    """How worried to be now at this camera (see coordinator.CameraRisk for the hold and decay).

    After a reload or restart the events it followed come back from Home Assistant's restore state
    (not from the server: its retained camera state holds no event level, and an event's ``end``
    heard by nobody is bounded by RISK_ACTIVE_TIMEOUT)."""

    async def async_added_to_hass(self) -> None:
        await super().async_added_to_hass()
        if (saved := await self.async_get_last_extra_data()) is not None:
            self.coordinator.async_restore_risk(self.camera_id, saved.as_dict())

    @property
    def extra_restore_state_data(self) -> _RiskData:
        camera = self.coordinator.cameras.get(self.camera_id)
        return _RiskData(camera.risk.as_dict() if camera else {})

    @property
    def native_value(self) -> str | None:
        camera = self.coordinator.cameras.get(self.camera_id)
        return camera.current_level(dt_util.utcnow()) if camera else None

    @property
    def extra_state_attributes(self) -> dict[str, Any]:
        camera = self.coordinator.cameras.get(self.camera_id)
        return {"active_events": len(camera.risk.active) if camera else 0}


class HsiLastEventSensor(HsiCameraEntity, RestoreSensor):
    """The camera's latest event: its level as state, score, summary, times and review as attributes.
    Restored after a reload or restart until the server publishes a newer event."""

    _restored: dict[str, Any] | None = None
    _restored_level: str | None = None

    async def async_added_to_hass(self) -> None:
        await super().async_added_to_hass()
        if (last := await self.async_get_last_state()) is not None and last.state in RISK_LEVELS:
            self._restored_level = last.state
            self._restored = {key: last.attributes.get(key) for key in LAST_EVENT_ATTRIBUTES}

    def _event(self) -> dict[str, Any] | None:
        camera = self.coordinator.cameras.get(self.camera_id)
        return camera.last_event if camera else None

    @property
    def native_value(self) -> str | None:
        event = self._event()
        if event is None:
            return self._restored_level
        level = event.get("risk_level")
        return str(level) if level in RISK_LEVELS else None

    @property
    def extra_state_attributes(self) -> dict[str, Any] | None:
        event = self._event()
        if event is None:
            return self._restored
        return {key: event.get("id" if key == "event_id" else key) for key in LAST_EVENT_ATTRIBUTES}


class HsiLastPersonSensor(HsiCameraEntity, RestoreSensor):
    """The enrolled person this camera last recognised. The server keeps no such state (nothing
    retained says it), so after a restart or reload the value Home Assistant saved comes back
    until an event recognises someone again."""

    _restored: str | None = None

    async def async_added_to_hass(self) -> None:
        await super().async_added_to_hass()
        if (last := await self.async_get_last_sensor_data()) is not None and isinstance(last.native_value, str):
            self._restored = last.native_value

    @property
    def native_value(self) -> str | None:
        camera = self.coordinator.cameras.get(self.camera_id)
        if camera is not None and camera.last_person is not None:
            return camera.last_person
        return self._restored


class HsiHomeLevelSensor(HsiServerEntity, SensorEntity):
    """The home's current level: the highest current level of its cameras."""

    @property
    def native_value(self) -> str | None:
        return self.coordinator.home_level()
