"""Repairs: a server URL announced over MQTT is applied only when the user confirms it.

``hsi/discovery`` can be written by anyone the broker lets publish, so a discovery that names
another URL for a configured server raises the ``discovered_url`` issue (config_flow.py) instead
of re-pointing the entry. The stored API key goes to the new URL only after the user confirms."""

from __future__ import annotations

import voluptuous as vol
from homeassistant import data_entry_flow
from homeassistant.components.repairs import RepairsFlow
from homeassistant.core import HomeAssistant

from .config_flow import validate_server
from .const import CONF_API_KEY, CONF_URL


class DiscoveredUrlRepairFlow(RepairsFlow):
    """Shows the configured and the announced URL; on confirmation checks the new one and applies it."""

    def __init__(self, entry_id: str, url: str) -> None:
        self._entry_id = entry_id
        self._url = url

    async def async_step_init(self, user_input: dict[str, str] | None = None) -> data_entry_flow.FlowResult:
        return await self.async_step_confirm()

    async def async_step_confirm(self, user_input: dict[str, str] | None = None) -> data_entry_flow.FlowResult:
        entry = self.hass.config_entries.async_get_entry(self._entry_id)
        if entry is None:
            return self.async_abort(reason="entry_removed")
        errors: dict[str, str] = {}
        if user_input is not None:
            # Only now, with the user's consent, does the stored key travel to the announced URL.
            if (error := await validate_server(self.hass, self._url, entry.data[CONF_API_KEY])) is None:
                self.hass.config_entries.async_update_entry(entry, data={**entry.data, CONF_URL: self._url})
                self.hass.config_entries.async_schedule_reload(entry.entry_id)
                return self.async_create_entry(data={})
            errors["base"] = error
        return self.async_show_form(
            step_id="confirm",
            data_schema=vol.Schema({}),
            errors=errors,
            description_placeholders={"title": entry.title, "old_url": entry.data[CONF_URL], "new_url": self._url},
        )


async def async_create_fix_flow(
    hass: HomeAssistant, issue_id: str, data: dict[str, str | int | float | None] | None
) -> RepairsFlow:
    """The only fixable issue is ``discovered_url_<entry id>``, whose data name the entry and URL."""
    assert data is not None
    return DiscoveredUrlRepairFlow(str(data["entry_id"]), str(data[CONF_URL]))
