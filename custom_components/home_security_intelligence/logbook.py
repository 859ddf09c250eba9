"""The logbook's line per security event: "Back door: high (82) — 1 person at 02:10 …; armed away,
nobody home", once when the event opens and once per level rise (the coordinator fires
``EVENT_ALERT`` on exactly those judgements, never on an unchanged update, a review or an end)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from homeassistant.components.logbook.const import LOGBOOK_ENTRY_ENTITY_ID, LOGBOOK_ENTRY_MESSAGE, LOGBOOK_ENTRY_NAME
from homeassistant.const import ATTR_ENTITY_ID
from homeassistant.core import Event, HomeAssistant, callback

from .const import DOMAIN
from .coordinator import EVENT_ALERT, EVENT_DESCRIBED


@callback
def async_describe_events(
    hass: HomeAssistant,
    async_describe_event: Callable[[str, str, Callable[[Event], dict[str, str]]], None],
) -> None:
    """Describe the integration's alert event for the logbook."""

    @callback
    def describe(event: Event) -> dict[str, str]:
        data = event.data
        described = {
            LOGBOOK_ENTRY_NAME: str(data.get("camera_name") or data.get("camera_id")),
            LOGBOOK_ENTRY_MESSAGE: describe_alert(data),
        }
        # The coordinator puts the camera's event entity in the data (the logbook's own filters
        # match on it too), so the line shows in that entity's and device's logbook.
        entity_id = data.get(ATTR_ENTITY_ID)
        if entity_id is not None:
            described[LOGBOOK_ENTRY_ENTITY_ID] = entity_id
        return described

    async_describe_event(DOMAIN, EVENT_ALERT, describe)
    async_describe_event(DOMAIN, EVENT_DESCRIBED, describe)


def describe_alert(data: Mapping[str, Any]) -> str:
    """``high (82) — <summary>; <context>``, or ``rose to critical (88) — …`` for a rise; with the
    language model's description (``… Described by <model>: <description>``), or only that when
    the description arrives without a new level (``high (82), described by <model>: …``)."""
    level = f"{data.get('risk_level')} ({data.get('risk_score')})"
    description = data.get("description") if data.get("described") else None
    model = data.get("model") or "the model"
    if description and not data.get("alert"):
        return f"{level}, described by {model}: {description}"
    head = level if data.get("type") == "new" else f"rose to {level}"
    summary = data.get("summary")
    line = f"{head} — {summary}" if summary else head
    # Only what the summary does not already say ("alarm armed away" is in most summaries).
    said = str(summary or "").lower()
    context = data.get("context")
    parts = [str(part) for part in context] if isinstance(context, list) else []
    extra = [part for part in parts if part.lower() not in said]
    line = f"{line}; {', '.join(extra)}" if extra else line
    return f"{line}. Described by {model}: {description}" if description else line
