"""Device triggers per camera: "an event started" and "risk level became <level>"."""

from __future__ import annotations

from typing import Any

import voluptuous as vol
from homeassistant.components.device_automation import DEVICE_TRIGGER_BASE_SCHEMA
from homeassistant.components.device_automation.exceptions import InvalidDeviceAutomationConfig
from homeassistant.components.homeassistant.triggers import event as event_trigger
from homeassistant.const import CONF_DEVICE_ID, CONF_DOMAIN, CONF_EVENT_DATA, CONF_PLATFORM, CONF_TYPE
from homeassistant.core import CALLBACK_TYPE, HomeAssistant
from homeassistant.helpers import device_registry as dr
from homeassistant.helpers.trigger import TriggerActionType, TriggerInfo
from homeassistant.helpers.typing import ConfigType

from .const import DOMAIN, EVENT_BUS, RISK_LEVELS

EVENT_STARTED = "event_started"
LEVEL_TRIGGERS = {f"risk_level_{level}": level for level in RISK_LEVELS}
TRIGGER_TYPES = {EVENT_STARTED, *LEVEL_TRIGGERS}

TRIGGER_SCHEMA = DEVICE_TRIGGER_BASE_SCHEMA.extend({vol.Required(CONF_TYPE): vol.In(TRIGGER_TYPES)})


def _camera_id(hass: HomeAssistant, device_id: str) -> str | None:
    device = dr.async_get(hass).async_get(device_id)
    if device is None:
        return None
    for domain, identifier in device.identifiers:
        # Camera devices are "<server>_<camera>" and go via the server's device.
        if domain == DOMAIN and device.via_device_id is not None:
            server = dr.async_get(hass).async_get(device.via_device_id)
            server_ids = {i for d, i in (server.identifiers if server else set()) if d == DOMAIN}
            for server_id in server_ids:
                if identifier.startswith(f"{server_id}_"):
                    return identifier.removeprefix(f"{server_id}_")
    return None


async def async_get_triggers(hass: HomeAssistant, device_id: str) -> list[dict[str, Any]]:
    if _camera_id(hass, device_id) is None:
        return []
    base = {CONF_PLATFORM: "device", CONF_DOMAIN: DOMAIN, CONF_DEVICE_ID: device_id}
    return [{**base, CONF_TYPE: kind} for kind in (EVENT_STARTED, *LEVEL_TRIGGERS)]


async def async_attach_trigger(
    hass: HomeAssistant, config: ConfigType, action: TriggerActionType, trigger_info: TriggerInfo
) -> CALLBACK_TYPE:
    camera_id = _camera_id(hass, config[CONF_DEVICE_ID])
    if camera_id is None:
        raise InvalidDeviceAutomationConfig(f"device {config[CONF_DEVICE_ID]} is not an HSI camera")
    data: dict[str, Any] = {"camera_id": camera_id}
    if config[CONF_TYPE] == EVENT_STARTED:
        data["type"] = "new"
    else:
        # The same rule as notifications (alerts.py): the event's "new", or a judgement above every
        # level the event already alerted at. A review, a repeated or lower level, a failed LLM
        # phase or the event's "end" (also when the LLM's update comes after it) fires nothing.
        data |= {"risk_level": LEVEL_TRIGGERS[config[CONF_TYPE]], "alert": True}
    event_config = event_trigger.TRIGGER_SCHEMA(
        {
            CONF_PLATFORM: "event",
            event_trigger.CONF_EVENT_TYPE: EVENT_BUS,
            CONF_EVENT_DATA: data,
        }
    )
    return await event_trigger.async_attach_trigger(hass, event_config, action, trigger_info, platform_type="device")
