"""Config flow: by hand (URL + API key), from MQTT discovery, from the Supervisor add-on;
reauth, reconfigure, and options choosing the entities forwarded as household context."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from typing import Any, NamedTuple

import voluptuous as vol
from homeassistant.config_entries import ConfigEntry, ConfigFlow, ConfigFlowResult, OptionsFlow
from homeassistant.core import HomeAssistant, callback
from homeassistant.helpers import issue_registry as ir
from homeassistant.helpers import selector
from homeassistant.helpers.aiohttp_client import async_get_clientsession
from homeassistant.helpers.service_info.hassio import HassioServiceInfo
from homeassistant.helpers.service_info.mqtt import MqttServiceInfo

from .api import HsiApiError, HsiAuthError, HsiClient, HsiConnectionError, normalize_url
from .const import (
    CONF_ALARM_ENTITY,
    CONF_API_KEY,
    CONF_ENTRY_ENTITIES,
    CONF_PREFIX,
    CONF_PRESENCE_ENTITIES,
    CONF_SUN_ENTITY,
    CONF_URL,
    DEFAULT_PREFIX,
    DOMAIN,
    ISSUE_DISCOVERED_URL,
)

_LOGGER = logging.getLogger(__name__)
#: Shown when a 429 names no wait: the server's failure window is a minute.
RETRY_AFTER_DEFAULT_S = 60


class ServerCheck(NamedTuple):
    """Why a server was not accepted: the error's translation key and its placeholders."""

    error: str
    placeholders: dict[str, str]


async def check_server(hass: HomeAssistant, url: str, api_key: str) -> ServerCheck | None:
    """None if the server answers and accepts the key, else the translated error to show.

    Every answer the server can give has its own translated error; none is logged as a traceback
    (a wrong key or a refused request is the user's input, not a bug of the integration)."""
    client = HsiClient(async_get_clientsession(hass), url, api_key)
    try:
        await client.health_ready()
        await client.system_status()
    except HsiAuthError:
        return ServerCheck("invalid_auth", {})
    except HsiConnectionError as err:
        _LOGGER.debug("cannot reach %s: %s", url, err)
        return ServerCheck("cannot_connect", {})
    except HsiApiError as err:
        if err.status == 429:
            # The server's failure lockout for this address (inference_server/api/auth.py): its
            # valid keys are still served, so the right key works at once; a wrong one must wait.
            wait = math.ceil(err.retry_after) if err.retry_after is not None else RETRY_AFTER_DEFAULT_S
            _LOGGER.warning("%s refuses further API keys from this address for %d s", url, wait)
            return ServerCheck("too_many_failures", {"retry_after": str(wait)})
        _LOGGER.warning("%s refused the check: %s", url, err)
        return ServerCheck("server_refused", {"status": str(err.status), "message": err.message or err.code})
    return None


async def validate_server(hass: HomeAssistant, url: str, api_key: str) -> str | None:
    """`check_server`'s error key alone (the repair flow's errors take no placeholders)."""
    check = await check_server(hass, url, api_key)
    return None if check is None else check.error


def _url_error(url: str) -> tuple[str, ServerCheck | None]:
    """The URL as stored (`normalize_url`), or the ``invalid_url`` error."""
    try:
        return normalize_url(url), None
    except ValueError:
        return url, ServerCheck("invalid_url", {})


#: The key field in every form: a password field, never shown in the clear.
_KEY_SELECTOR = selector.TextSelector(selector.TextSelectorConfig(type=selector.TextSelectorType.PASSWORD))
_URL_SELECTOR = selector.TextSelector(selector.TextSelectorConfig(type=selector.TextSelectorType.URL))
#: The add-on's Supervisor discovery config (addon/rootfs/usr/local/bin/hsi-addon, step_discovery).
#: Home Assistant adds the add-on's name to it: under ``addon``, and under ``app`` once the
#: Supervisor's add-on -> app rename reaches it. Either, both or neither is accepted; no other
#: field depends on them (docs/decisions.md, "Supervisor discovery across the app rename").
_HASSIO_CONFIG = vol.Schema(
    {
        vol.Required("host"): vol.All(str, vol.Length(min=1)),
        vol.Required("port"): vol.All(vol.Coerce(int), vol.Range(min=1, max=65535)),
        vol.Required(CONF_API_KEY): vol.All(str, vol.Length(min=1)),
        vol.Optional("app"): str,
        vol.Optional("addon"): str,
    },
    extra=vol.ALLOW_EXTRA,
)


def _same_url(a: str, b: str) -> bool:
    return a.rstrip("/").lower() == b.rstrip("/").lower()


@callback
def _flag_discovered_url(hass: HomeAssistant, entry: ConfigEntry, url: str | None) -> None:
    """Raise (or update) the repair asking the user to confirm ``url``; clear it once the
    announcement matches the configured URL again."""
    issue_id = ISSUE_DISCOVERED_URL.format(entry.entry_id)
    if not url:  # a server without a public URL announces none: nothing to confirm or clear
        return
    if _same_url(url, entry.data[CONF_URL]):
        ir.async_delete_issue(hass, DOMAIN, issue_id)
        return
    _LOGGER.warning(
        "MQTT discovery announced %s for the configured HSI server %s (%s); not applied until confirmed in Repairs",
        url,
        entry.title,
        entry.data[CONF_URL],
    )
    ir.async_create_issue(
        hass,
        DOMAIN,
        issue_id,
        data={"entry_id": entry.entry_id, CONF_URL: url},
        is_fixable=True,
        is_persistent=False,
        severity=ir.IssueSeverity.WARNING,
        translation_key="discovered_url",
        translation_placeholders={"title": entry.title, "old_url": entry.data[CONF_URL], "new_url": url},
        learn_more_url="https://github.com/home-security-intelligence/hsi/blob/main/docs/integration.md",
    )


class HsiConfigFlow(ConfigFlow, domain=DOMAIN):
    """Home Security Intelligence config flow."""

    VERSION = 1

    def __init__(self) -> None:
        self._discovered: dict[str, Any] = {}

    @staticmethod
    @callback
    def async_get_options_flow(config_entry: ConfigEntry) -> OptionsFlow:
        return HsiOptionsFlow()

    async def async_step_user(self, user_input: dict[str, Any] | None = None) -> ConfigFlowResult:
        errors: dict[str, str] = {}
        placeholders: dict[str, str] = {}
        if user_input is not None:
            prefix = user_input.get(CONF_PREFIX, DEFAULT_PREFIX)
            # A discovered card of the same server may be pending: the user's own flow takes over
            # (HA aborts the discovered one when this one creates the entry) instead of ending in
            # ``already_in_progress`` after the key was typed.
            await self.async_set_unique_id(prefix, raise_on_progress=False)
            self._abort_if_unique_id_configured()
            url, check = _url_error(user_input[CONF_URL])
            if check is None:
                check = await check_server(self.hass, url, user_input[CONF_API_KEY])
            if check is None:
                return self.async_create_entry(
                    title="Home Security Intelligence", data={**user_input, CONF_URL: url, CONF_PREFIX: prefix}
                )
            errors["base"], placeholders = check
        schema = vol.Schema(
            {
                vol.Required(CONF_URL, default=(user_input or {}).get(CONF_URL, "http://")): _URL_SELECTOR,
                vol.Required(CONF_API_KEY): _KEY_SELECTOR,
                vol.Optional(CONF_PREFIX, default=DEFAULT_PREFIX): str,
            }
        )
        return self.async_show_form(
            step_id="user", data_schema=schema, errors=errors, description_placeholders=placeholders
        )

    async def async_step_mqtt(self, discovery_info: MqttServiceInfo) -> ConfigFlowResult:
        """The server's retained ``hsi/discovery``: ``{"id","name","version","url"}``."""
        try:
            payload = json.loads(discovery_info.payload)
            server_id, url = str(payload["id"]), payload.get("url")
        except (ValueError, KeyError, TypeError):
            return self.async_abort(reason="invalid_discovery_info")
        await self.async_set_unique_id(server_id)
        if (entry := self.hass.config_entries.async_entry_for_domain_unique_id(DOMAIN, server_id)) is not None:
            # Anyone who may publish on the broker can write hsi/discovery: a URL from it is a claim, not
            # a fact. It never replaces the configured one (HA would send its key there); the user decides
            # through a repair (repairs.py). docs/decisions.md: "MQTT discovery never re-points a configured server".
            if CONF_URL in entry.data:  # an ignored discovery's entry has no data
                _flag_discovered_url(self.hass, entry, url if isinstance(url, str) else None)
            return self.async_abort(reason="already_configured")
        self._discovered = {CONF_PREFIX: server_id, CONF_URL: url or "http://", "name": payload.get("name", server_id)}
        self.context["title_placeholders"] = {"name": self._discovered["name"]}
        return await self.async_step_discovery_confirm()

    async def async_step_hassio(self, discovery_info: HassioServiceInfo) -> ConfigFlowResult:
        """The add-on's discovery, with its host, port and an API key it created for us."""
        try:
            config = _HASSIO_CONFIG(discovery_info.config)
        except vol.Invalid as err:
            # The key is a secret: the log names the fields, never their values.
            _LOGGER.warning(
                "Supervisor discovery from %s could not be read (%s); fields: %s",
                discovery_info.slug,
                err,
                sorted(discovery_info.config),
            )
            return self.async_abort(reason="invalid_discovery_info")
        host = str(config["host"])
        url = f"http://[{host}]:{config['port']}" if ":" in host else f"http://{host}:{config['port']}"
        name = discovery_info.name or config.get("app") or config.get("addon") or "Home Security Intelligence"
        await self.async_set_unique_id(DEFAULT_PREFIX)
        self._abort_if_unique_id_configured(updates={CONF_URL: url, CONF_API_KEY: config[CONF_API_KEY]})
        self._discovered = {
            CONF_PREFIX: DEFAULT_PREFIX,
            CONF_URL: url,
            CONF_API_KEY: config[CONF_API_KEY],
            "name": name,
        }
        self.context["title_placeholders"] = {"name": name}
        return await self.async_step_hassio_confirm()

    async def async_step_hassio_confirm(self, user_input: dict[str, Any] | None = None) -> ConfigFlowResult:
        errors: dict[str, str] = {}
        placeholders: dict[str, str] = {}
        if user_input is not None:
            d = self._discovered
            if (check := await check_server(self.hass, d[CONF_URL], d[CONF_API_KEY])) is None:
                return self.async_create_entry(
                    title=d["name"],
                    data={CONF_URL: d[CONF_URL], CONF_API_KEY: d[CONF_API_KEY], CONF_PREFIX: d[CONF_PREFIX]},
                )
            errors["base"], placeholders = check
        return self.async_show_form(
            step_id="hassio_confirm",
            description_placeholders={**placeholders, "name": self._discovered["name"]},
            errors=errors,
        )

    async def async_step_discovery_confirm(self, user_input: dict[str, Any] | None = None) -> ConfigFlowResult:
        errors: dict[str, str] = {}
        placeholders: dict[str, str] = {}
        if user_input is not None:
            url, check = _url_error(user_input[CONF_URL])
            if check is None:
                check = await check_server(self.hass, url, user_input[CONF_API_KEY])
            if check is None:
                return self.async_create_entry(
                    title=self._discovered["name"],
                    data={**user_input, CONF_URL: url, CONF_PREFIX: self._discovered[CONF_PREFIX]},
                )
            errors["base"], placeholders = check
        schema = vol.Schema(
            {
                vol.Required(CONF_URL, default=self._discovered[CONF_URL]): _URL_SELECTOR,
                vol.Required(CONF_API_KEY): _KEY_SELECTOR,
            }
        )
        return self.async_show_form(
            step_id="discovery_confirm",
            data_schema=schema,
            errors=errors,
            description_placeholders={
                **placeholders,
                "name": self._discovered["name"],
                "url": self._discovered[CONF_URL],
            },
        )

    async def async_step_reauth(self, entry_data: Mapping[str, Any]) -> ConfigFlowResult:
        return await self.async_step_reauth_confirm()

    async def async_step_reauth_confirm(self, user_input: dict[str, Any] | None = None) -> ConfigFlowResult:
        entry = self._get_reauth_entry()
        errors: dict[str, str] = {}
        placeholders: dict[str, str] = {}
        if user_input is not None:
            if (check := await check_server(self.hass, entry.data[CONF_URL], user_input[CONF_API_KEY])) is None:
                return self.async_update_reload_and_abort(entry, data_updates={CONF_API_KEY: user_input[CONF_API_KEY]})
            errors["base"], placeholders = check
        return self.async_show_form(
            step_id="reauth_confirm",
            data_schema=vol.Schema({vol.Required(CONF_API_KEY): _KEY_SELECTOR}),
            errors=errors,
            description_placeholders=placeholders,
        )

    async def async_step_reconfigure(self, user_input: dict[str, Any] | None = None) -> ConfigFlowResult:
        """URL and key; the key field starts empty and an empty one keeps the stored key (the form
        never sends the whole key back to the browser)."""
        entry = self._get_reconfigure_entry()
        errors: dict[str, str] = {}
        placeholders: dict[str, str] = {}
        if user_input is not None:
            api_key = user_input.get(CONF_API_KEY) or entry.data[CONF_API_KEY]
            url, check = _url_error(user_input[CONF_URL])
            if check is None:
                check = await check_server(self.hass, url, api_key)
            if check is None:
                return self.async_update_reload_and_abort(entry, data_updates={CONF_URL: url, CONF_API_KEY: api_key})
            errors["base"], placeholders = check
        schema = vol.Schema(
            {
                vol.Required(CONF_URL, default=(user_input or {}).get(CONF_URL, entry.data[CONF_URL])): _URL_SELECTOR,
                vol.Optional(CONF_API_KEY): _KEY_SELECTOR,
            }
        )
        return self.async_show_form(
            step_id="reconfigure", data_schema=schema, errors=errors, description_placeholders=placeholders
        )


class HsiOptionsFlow(OptionsFlow):
    """Which Home Assistant entities are forwarded to the server as household context."""

    async def async_step_init(self, user_input: dict[str, Any] | None = None) -> ConfigFlowResult:
        if user_input is not None:
            return self.async_create_entry(data=user_input)
        options = self.config_entry.options
        schema = vol.Schema(
            {
                vol.Optional(CONF_ALARM_ENTITY, description={"suggested_value": options.get(CONF_ALARM_ENTITY)}): (
                    selector.EntitySelector(selector.EntitySelectorConfig(domain="alarm_control_panel"))
                ),
                vol.Optional(CONF_PRESENCE_ENTITIES, default=options.get(CONF_PRESENCE_ENTITIES, [])): (
                    selector.EntitySelector(
                        selector.EntitySelectorConfig(domain=["person", "device_tracker"], multiple=True)
                    )
                ),
                vol.Optional(CONF_ENTRY_ENTITIES, default=options.get(CONF_ENTRY_ENTITIES, [])): (
                    selector.EntitySelector(
                        selector.EntitySelectorConfig(
                            domain="binary_sensor",
                            device_class=["door", "window", "garage_door", "opening"],
                            multiple=True,
                        )
                    )
                ),
                vol.Optional(CONF_SUN_ENTITY, default=options.get(CONF_SUN_ENTITY, "sun.sun")): (
                    selector.EntitySelector(selector.EntitySelectorConfig(domain="sun"))
                ),
            }
        )
        return self.async_show_form(step_id="init", data_schema=schema)
