"""An LLM API for Home Assistant's conversation agents (Assist): tools that search the server's
events, read one event, report the cameras' status and summarise a period.

Any conversation agent that supports LLM APIs (local or cloud) can then answer "what happened at
the back door last night?". Periods are said the way people say them (``last_night``, ``today``,
``yesterday``, ...) or given as ISO times; both are resolved in Home Assistant's time zone, and
every event the tools return carries its local time and risk level for the answer to cite.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import voluptuous as vol
from homeassistant.core import HomeAssistant
from homeassistant.exceptions import HomeAssistantError, ServiceValidationError
from homeassistant.helpers import config_validation as cv
from homeassistant.helpers import llm
from homeassistant.util import dt as dt_util
from homeassistant.util.json import JsonObjectType

from .api import HsiClient, HsiConnectionError, HsiError
from .const import DOMAIN, RISK_LEVELS

if TYPE_CHECKING:
    from . import HsiConfigEntry
    from .coordinator import HsiCoordinator

#: The periods a tool understands by name, as people say them.
PERIODS = ["last_hour", "last_24_hours", "last_night", "today", "yesterday", "this_week", "last_7_days"]
#: "Last night" runs from this hour of the evening before to NIGHT_END the next morning.
NIGHT_START_HOUR = 22
NIGHT_END_HOUR = 7
MAX_RESULTS = 25

_PERIOD_FIELDS: dict[vol.Marker, Any] = {
    vol.Optional("period", description="A period in words; or since/until."): vol.In(PERIODS),
    vol.Optional("since", description="Start, ISO 8601 (a time without zone is local)."): cv.string,
    vol.Optional("until", description="End, ISO 8601 (default: now)."): cv.string,
    vol.Optional("camera", description="Camera name or id (default: all cameras)."): cv.string,
}

API_PROMPT = (
    "Use the Home Security Intelligence tools to answer questions about the security cameras and"
    " what they saw. Give a period by name (last_night, today, yesterday, last_hour, last_24_hours,"
    " this_week, last_7_days) or as ISO times; times are in the home's time zone ({tz}), now is {now}."
    " In your answer cite each event's local time, camera and risk level (low, medium, high, critical)."
    " If a tool finds nothing, say so; never guess events."
)


def _local(value: str | None) -> str | None:
    moment = dt_util.parse_datetime(value) if value else None
    return dt_util.as_local(moment).strftime("%a %d %b %Y %H:%M") if moment is not None else None


def _parse_time(text: str, field: str) -> datetime:
    moment = dt_util.parse_datetime(text)
    if moment is None:
        day = dt_util.parse_date(text)
        if day is None:
            raise ServiceValidationError(
                translation_domain=DOMAIN,
                translation_key="bad_time",
                translation_placeholders={"field": field, "value": text},
            )
        moment = datetime.combine(day, datetime.min.time())
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt_util.get_default_time_zone())
    return moment


def resolve_period(args: dict[str, Any], now: datetime) -> tuple[datetime | None, datetime | None]:
    """(since, until) of a tool's ``period`` or ``since``/``until``, in Home Assistant's time zone;
    (None, None) when none is given. A date alone for ``since`` is that day's start."""
    local_now = dt_util.as_local(now)
    today = local_now.replace(hour=0, minute=0, second=0, microsecond=0)
    period = args.get("period")
    since: datetime | None
    until: datetime | None = local_now
    if period == "last_hour":
        since = local_now - timedelta(hours=1)
    elif period == "last_24_hours":
        since = local_now - timedelta(hours=24)
    elif period == "today":
        since = today
    elif period == "yesterday":
        since, until = today - timedelta(days=1), today
    elif period == "last_night":
        # Before the night's end it is the night still going on; after it, the one that ended.
        night_end = today.replace(hour=NIGHT_END_HOUR)
        start_day = today - timedelta(days=1)
        since = start_day.replace(hour=NIGHT_START_HOUR)
        until = min(night_end, local_now)
    elif period == "this_week":
        since = today - timedelta(days=today.weekday())
    elif period == "last_7_days":
        since = local_now - timedelta(days=7)
    else:
        since, until = None, None
    if "since" in args:
        since = _parse_time(args["since"], "since")
        until = local_now if until is None else until
    if "until" in args:
        until = _parse_time(args["until"], "until")
    if since is not None and until is not None and since >= until:
        raise ServiceValidationError(translation_domain=DOMAIN, translation_key="bad_period")
    return since, until


def _event(event: dict[str, Any], client: HsiClient) -> dict[str, Any]:
    """What an agent needs of one event to answer and cite it."""
    return {
        "id": event["id"],
        "local_time": _local(event.get("started_at")),
        "camera": event.get("camera_name") or event.get("camera_id"),
        "risk_level": event.get("risk_level"),
        "risk_score": event.get("risk_score"),
        "summary": event.get("summary"),
        "description": event.get("description"),
        "objects": event.get("objects"),
        "reviewed": event.get("reviewed"),
        "snapshot_url": f"{client.url}/api/v1/events/{event['id']}/snapshot.jpg",
    }


def _failed(err: HsiError) -> HomeAssistantError:
    key = "cannot_connect" if isinstance(err, HsiConnectionError) else "server_error"
    return HomeAssistantError(
        translation_domain=DOMAIN, translation_key=key, translation_placeholders={"error": str(err)}
    )


@dataclass
class _Server:
    """What the tools use of one config entry."""

    client: HsiClient
    coordinator: HsiCoordinator

    async def camera_id(self, name_or_id: str | None) -> str | None:
        """The server's id of a camera the user named (its name or id, any case), from the
        server's camera list (MQTT may not have spoken of a quiet camera yet)."""
        if name_or_id is None:
            return None
        wanted = name_or_id.strip().casefold()
        cameras = {str(c["id"]): str(c["name"]) for c in await self.client.list_cameras()}
        for camera_id, name in cameras.items():
            if wanted in (camera_id.casefold(), name.casefold()):
                return camera_id
        raise ServiceValidationError(
            translation_domain=DOMAIN,
            translation_key="unknown_camera",
            translation_placeholders={"camera": name_or_id, "cameras": ", ".join(sorted(cameras.values())) or "none"},
        )


class _HsiTool(llm.Tool):
    def __init__(self, server: _Server) -> None:
        self.server = server

    async def async_call(
        self, hass: HomeAssistant, tool_input: llm.ToolInput, llm_context: llm.LLMContext
    ) -> JsonObjectType:
        # Home Assistant leaves validating the arguments to the tool.
        args: dict[str, Any] = self.parameters(tool_input.tool_args)
        try:
            return await self._call(args)
        except HsiError as err:
            raise _failed(err) from err

    async def _call(self, args: dict[str, Any]) -> JsonObjectType:
        raise NotImplementedError


class SearchEventsTool(_HsiTool):
    name = "search_security_events"
    description = (
        "Find security camera events: by words (what happened, who or what was seen, where), a period,"
        " a camera and a minimum risk level. Returns the best matches (or the newest without words)."
    )
    parameters = vol.Schema(
        {
            vol.Optional("query", description="Words to search for, e.g. 'person at the gate'."): cv.string,
            **_PERIOD_FIELDS,
            vol.Optional("min_level", description="Only events at this risk level or higher."): vol.In(RISK_LEVELS),
            vol.Optional("limit", default=10): vol.All(vol.Coerce(int), vol.Range(min=1, max=MAX_RESULTS)),
        }
    )

    async def _call(self, args: dict[str, Any]) -> JsonObjectType:
        since, until = resolve_period(args, dt_util.utcnow())
        page = await self.server.client.get_events(
            q=args.get("query"),
            since=since.isoformat() if since else None,
            until=until.isoformat() if until else None,
            camera=await self.server.camera_id(args.get("camera")),
            min_level=args.get("min_level"),
            limit=args["limit"],
        )
        events = [_event(e, self.server.client) for e in page["events"]]
        return {
            "period": {"from": since.isoformat() if since else None, "to": until.isoformat() if until else None},
            "count": len(events),
            "more": page.get("next_cursor") is not None,
            "events": events,  # type: ignore[dict-item]
        }


class GetEventTool(_HsiTool):
    name = "get_security_event"
    description = "Read one security event (by the id a search returned): what was seen, why its risk, its snapshot."
    parameters = vol.Schema({vol.Required("event_id"): cv.string})

    async def _call(self, args: dict[str, Any]) -> JsonObjectType:
        event = await self.server.client.get_event(args["event_id"])
        return {
            **_event(event, self.server.client),
            "ended_local_time": _local(event.get("ended_at")),
            "reasoning": event.get("reasoning"),
            "risk_factors": [f"{f['name']} ({f['points']:+d}): {f['detail']}" for f in event.get("risk_factors", [])],
            "judged_by": event.get("analysis_source"),
            "feedback": event.get("feedback"),
            "notes": event.get("notes"),
        }


class CameraStatusTool(_HsiTool):
    name = "get_security_camera_status"
    description = (
        "The security cameras now: whether the server is online, each camera's current risk level,"
        " what it sees and its latest event's time."
    )
    parameters = vol.Schema({vol.Optional("camera", description="Camera name or id (default: all)."): cv.string})

    async def _call(self, args: dict[str, Any]) -> JsonObjectType:
        coordinator = self.server.coordinator
        wanted = await self.server.camera_id(args.get("camera"))
        now = dt_util.utcnow()
        cameras = [
            {
                "camera": camera.name,
                "id": camera.camera_id,
                "enabled": camera.state.get("enabled"),
                "current_risk_level": camera.current_level(now),
                "objects_now": camera.state.get("objects", {}),
                "last_event_id": camera.last_event_id,
                "last_event_local_time": _local(camera.state.get("last_event_at")),
            }
            for camera in coordinator.cameras.values()
            if wanted is None or camera.camera_id == wanted
        ]
        return {"server_online": coordinator.online, "home_risk_level": coordinator.home_level(), "cameras": cameras}  # type: ignore[dict-item]


class SummarizeTool(_HsiTool):
    name = "summarize_security_events"
    description = (
        "Summarise a period: how many events by risk level, by camera and by hour, and the most important"
        " ones with their times. Use it for 'what happened last night?' or 'anything today?'."
    )
    parameters = vol.Schema(_PERIOD_FIELDS)

    async def _call(self, args: dict[str, Any]) -> JsonObjectType:
        if "period" not in args and "since" not in args:
            args = {**args, "period": "last_24_hours"}
        since, until = resolve_period(args, dt_util.utcnow())
        assert since is not None and until is not None
        summary = await self.server.client.events_summary(
            since=since.isoformat(), until=until.isoformat(), camera=await self.server.camera_id(args.get("camera"))
        )
        return {
            "period": {"from": since.isoformat(), "to": until.isoformat()},
            "total": summary["total"],
            "by_level": summary["by_level"],
            "by_camera": [
                {"camera": c["camera_name"], "events": c["n"], "high_or_critical": c["high_or_critical"]}
                for c in summary["by_camera"]
            ],
            "by_hour": [
                {"hour": _local(h["hour"]), "events": h["n"], "max_risk": h["max_risk"]} for h in summary["by_hour"]
            ],
            "most_important": [_event(e, self.server.client) for e in summary["top"]],
        }


class HsiLlmApi(llm.API):
    """The tools of one HSI server, registered under the id ``home_security_intelligence-<entry id>``."""

    def __init__(self, hass: HomeAssistant, entry: HsiConfigEntry) -> None:
        super().__init__(hass=hass, id=f"{DOMAIN}-{entry.entry_id}", name=entry.title)
        self.entry = entry

    async def async_get_api_instance(self, llm_context: llm.LLMContext) -> llm.APIInstance:
        data = self.entry.runtime_data
        server = _Server(data.client, data.coordinator)
        now = dt_util.now()
        prompt = API_PROMPT.format(tz=now.tzname(), now=now.strftime("%a %d %b %Y %H:%M"))
        tools: list[llm.Tool] = [SearchEventsTool(server), GetEventTool(server), CameraStatusTool(server)]
        tools.append(SummarizeTool(server))
        return llm.APIInstance(api=self, api_prompt=prompt, llm_context=llm_context, tools=tools)


def async_register_llm_api(hass: HomeAssistant, entry: HsiConfigEntry) -> None:
    """Offer the entry's tools to conversation agents until the entry unloads."""
    entry.async_on_unload(llm.async_register_api(hass, HsiLlmApi(hass, entry)))
