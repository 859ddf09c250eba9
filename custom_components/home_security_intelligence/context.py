"""Household context forwarding: the entities chosen in the options (alarm panel, people,
doors and windows, sun) → a debounced ``PUT /api/v1/context`` whenever one of them changes,
changing only the fields those entities feed."""

from __future__ import annotations

import logging
from typing import Any

from homeassistant.config_entries import ConfigEntry
from homeassistant.const import STATE_ON
from homeassistant.core import CALLBACK_TYPE, Event, EventStateChangedData, HomeAssistant, callback
from homeassistant.helpers.debounce import Debouncer
from homeassistant.helpers.event import async_track_state_change_event

from .api import HsiClient, HsiError
from .const import CONF_ALARM_ENTITY, CONF_ENTRY_ENTITIES, CONF_PRESENCE_ENTITIES, CONF_SUN_ENTITY

_LOGGER = logging.getLogger(__name__)

#: The server's alarm states (HouseholdContext.alarm_state); anything else is "unknown".
ALARM_STATES = frozenset(
    {
        "disarmed",
        "armed_home",
        "armed_away",
        "armed_night",
        "armed_vacation",
        "armed_custom_bypass",
        "arming",
        "pending",
        "triggered",
    }
)
DEBOUNCE_S = 2.0


class ContextForwarder:
    def __init__(self, hass: HomeAssistant, entry: ConfigEntry, client: HsiClient) -> None:
        self.hass = hass
        self.client = client
        options = entry.options
        self.alarm: str | None = options.get(CONF_ALARM_ENTITY)
        self.presence: list[str] = list(options.get(CONF_PRESENCE_ENTITIES, []))
        self.entries: list[str] = list(options.get(CONF_ENTRY_ENTITIES, []))
        self.sun: str | None = options.get(CONF_SUN_ENTITY)
        self.last_sent: dict[str, Any] | None = None
        self._debouncer = Debouncer(hass, _LOGGER, cooldown=DEBOUNCE_S, immediate=False, function=self._send)
        self._unsub: CALLBACK_TYPE | None = None

    @property
    def entity_ids(self) -> list[str]:
        return [e for e in (self.alarm, *self.presence, *self.entries, self.sun) if e]

    async def async_start(self) -> None:
        if not self.entity_ids:
            return
        self._unsub = async_track_state_change_event(self.hass, self.entity_ids, self._changed)
        await self._send()

    @callback
    def async_stop(self) -> None:
        if self._unsub is not None:
            self._unsub()
        self._debouncer.async_cancel()

    @callback
    def _changed(self, event: Event[EventStateChangedData]) -> None:
        self.hass.async_create_task(self._debouncer.async_call())

    def build(self) -> dict[str, Any]:
        """The fields of the server's ``HouseholdContext`` this forwarder owns (those with an entity
        chosen), from the chosen entities' current states; the others (``notes``, and what
        ``set_context`` set) are left as the server holds them."""
        body: dict[str, Any] = {}
        if self.alarm:
            state = self.hass.states.get(self.alarm)
            body["alarm_state"] = state.state if state is not None and state.state in ALARM_STATES else "unknown"
        if self.presence:
            home = []
            for entity_id in self.presence:
                state = self.hass.states.get(entity_id)
                if state is not None and state.state == "home":
                    home.append(state.name)
            body["people_home"] = home
        if self.entries:
            body["open_entries"] = [
                state.name
                for entity_id in self.entries
                if (state := self.hass.states.get(entity_id)) is not None and state.state == STATE_ON
            ]
        if self.sun:
            sun = self.hass.states.get(self.sun)
            body["sun"] = sun.state if sun is not None and sun.state in ("above_horizon", "below_horizon") else None
        return body

    async def _send(self) -> None:
        body = self.build()
        try:
            await self.client.update_context(body)
        except HsiError as err:
            _LOGGER.warning("household context not sent to the server: %s", err)
            return
        self.last_sent = body
