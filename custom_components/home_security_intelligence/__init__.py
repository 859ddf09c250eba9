"""Home Security Intelligence: contextual security events from the HSI server, over MQTT and REST."""

from __future__ import annotations

from dataclasses import dataclass

from homeassistant.components import mqtt
from homeassistant.config_entries import ConfigEntry
from homeassistant.const import Platform
from homeassistant.core import HomeAssistant
from homeassistant.exceptions import ConfigEntryAuthFailed, ConfigEntryNotReady
from homeassistant.helpers import config_validation as cv
from homeassistant.helpers.aiohttp_client import async_get_clientsession
from homeassistant.helpers.typing import ConfigType

from .api import HsiAuthError, HsiClient, HsiConnectionError
from .const import CONF_API_KEY, CONF_PREFIX, CONF_URL, DEFAULT_PREFIX, DOMAIN
from .context import ContextForwarder
from .coordinator import HsiCoordinator
from .llm_api import async_register_llm_api
from .services import async_setup_services
from .views import async_register_views

CONFIG_SCHEMA = cv.config_entry_only_config_schema(DOMAIN)

PLATFORMS: list[Platform] = [
    Platform.BINARY_SENSOR,
    Platform.CAMERA,
    Platform.EVENT,
    Platform.IMAGE,
    Platform.SENSOR,
    Platform.SWITCH,
]


@dataclass
class HsiData:
    """What one config entry holds at run time."""

    client: HsiClient
    coordinator: HsiCoordinator
    context: ContextForwarder


type HsiConfigEntry = ConfigEntry[HsiData]


async def async_setup(hass: HomeAssistant, config: ConfigType) -> bool:
    """Register the services and the snapshot view once; each call names its server's config entry."""
    async_setup_services(hass)
    async_register_views(hass)
    return True


async def async_setup_entry(hass: HomeAssistant, entry: HsiConfigEntry) -> bool:
    """Set up one HSI server."""
    if not await mqtt.async_wait_for_mqtt_client(hass):
        raise ConfigEntryNotReady(translation_domain=DOMAIN, translation_key="mqtt_unavailable")
    client = HsiClient(async_get_clientsession(hass), entry.data[CONF_URL], entry.data[CONF_API_KEY])
    try:
        status = await client.system_status()
    except HsiAuthError as err:
        raise ConfigEntryAuthFailed(translation_domain=DOMAIN, translation_key="invalid_auth") from err
    except HsiConnectionError as err:
        raise ConfigEntryNotReady(
            translation_domain=DOMAIN, translation_key="cannot_connect", translation_placeholders={"error": str(err)}
        ) from err
    # A key revoked later (seen by a service call, the context forwarder, the image entity) asks the
    # user for a new one, as a rejected key at set-up does through ConfigEntryAuthFailed.
    client.on_auth_error = lambda: entry.async_start_reauth(hass)
    coordinator = HsiCoordinator(hass, entry, client, entry.data.get(CONF_PREFIX, DEFAULT_PREFIX))
    # The same model as the retained hsi/status, so entities know the server (a GPU?) before MQTT speaks.
    coordinator.status = status
    context = ContextForwarder(hass, entry, client)
    entry.runtime_data = HsiData(client, coordinator, context)
    async_register_llm_api(hass, entry)
    await hass.config_entries.async_forward_entry_setups(entry, PLATFORMS)
    # Subscribed after the platforms listen, so retained camera states create their entities.
    await coordinator.async_start()
    entry.async_on_unload(coordinator.async_stop)
    await context.async_start()
    entry.async_on_unload(context.async_stop)
    entry.async_on_unload(entry.add_update_listener(_async_options_updated))
    return True


async def _async_options_updated(hass: HomeAssistant, entry: HsiConfigEntry) -> None:
    await hass.config_entries.async_reload(entry.entry_id)


async def async_unload_entry(hass: HomeAssistant, entry: HsiConfigEntry) -> bool:
    """Unload a config entry."""
    return await hass.config_entries.async_unload_platforms(entry, PLATFORMS)
