"""Services: analyze a snapshot of any HA camera, review events, list events, requeue dead
letters, set the household context, enrol and forget known people, summarize a period (the
digest). Registered once for the domain (HA's convention); each call names the server's config entry."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

import voluptuous as vol
from homeassistant.components.camera import async_get_image
from homeassistant.config_entries import ConfigEntryState
from homeassistant.core import HomeAssistant, ServiceCall, ServiceResponse, SupportsResponse
from homeassistant.exceptions import HomeAssistantError, ServiceValidationError
from homeassistant.helpers import config_validation as cv
from homeassistant.util import dt as dt_util

from .api import HsiClient, HsiConnectionError, HsiError
from .const import DOMAIN, RISK_LEVELS
from .coordinator import digest_event_data

ATTR_CONFIG_ENTRY = "config_entry_id"
WAIT_FOR_EVENT_S = 60.0
#: The event's LLM phase is still to come: its description may follow.
LLM_RUNNING = ("pending", "running")

_ENTRY: dict[vol.Marker, Any] = {vol.Required(ATTR_CONFIG_ENTRY): cv.string}

ANALYZE_SCHEMA = vol.Schema(
    {
        **_ENTRY,
        vol.Required("entity_id"): cv.entity_id,
        vol.Required("camera_id"): cv.string,
        vol.Optional("wait", default=False): cv.boolean,
    }
)
REVIEW_SCHEMA = vol.Schema(
    {
        **_ENTRY,
        vol.Required("event_id"): cv.string,
        vol.Optional("notes"): cv.string,
        vol.Optional("feedback"): vol.In(["false_alarm", "correct", "missed_threat"]),
    }
)
EVENTS_SCHEMA = vol.Schema(
    {
        **_ENTRY,
        vol.Optional("camera"): cv.string,
        vol.Optional("level"): vol.In(RISK_LEVELS),
        vol.Optional("min_risk"): vol.All(vol.Coerce(int), vol.Range(min=0, max=100)),
        vol.Optional("reviewed"): cv.boolean,
        vol.Optional("since"): cv.datetime,
        vol.Optional("limit", default=20): vol.All(vol.Coerce(int), vol.Range(min=1, max=200)),
    }
)
REQUEUE_SCHEMA = vol.Schema(_ENTRY)
SUMMARIZE_SCHEMA = vol.Schema(
    {
        **_ENTRY,
        vol.Optional("since"): cv.datetime,
        vol.Optional("until"): cv.datetime,
        vol.Optional("camera"): cv.string,
        vol.Optional("publish", default=False): cv.boolean,
    }
)
CONTEXT_SCHEMA = vol.Schema(
    {
        **_ENTRY,
        vol.Optional("alarm_state"): cv.string,
        vol.Optional("people_home"): vol.All(cv.ensure_list, [cv.string]),
        vol.Optional("open_entries"): vol.All(cv.ensure_list, [cv.string]),
        vol.Optional("sun"): vol.In(["above_horizon", "below_horizon"]),
        vol.Optional("notes"): cv.string,
    }
)

ENROLL_PERSON_SCHEMA = vol.Schema(
    {
        **_ENTRY,
        vol.Required("event_id"): cv.string,
        vol.Optional("detection", default=0): vol.All(vol.Coerce(int), vol.Range(min=0, max=999)),
        vol.Required("name"): vol.All(cv.string, vol.Length(min=1, max=100)),
        vol.Optional("person_entity_id"): cv.entity_domain("person"),
    }
)
FORGET_PERSON_SCHEMA = vol.Schema({**_ENTRY, vol.Required("name"): cv.string})


def _client(hass: HomeAssistant, call: ServiceCall) -> HsiClient:
    entry = hass.config_entries.async_get_entry(call.data[ATTR_CONFIG_ENTRY])
    if entry is None or entry.domain != DOMAIN:
        raise ServiceValidationError(translation_domain=DOMAIN, translation_key="unknown_entry")
    if entry.state is not ConfigEntryState.LOADED:
        raise ServiceValidationError(translation_domain=DOMAIN, translation_key="entry_not_loaded")
    client: HsiClient = entry.runtime_data.client
    return client


def _failed(err: HsiError) -> HomeAssistantError:
    # Unreachable is not a refusal: the server never answered (issue 15, item 14).
    key = "cannot_connect" if isinstance(err, HsiConnectionError) else "server_error"
    return HomeAssistantError(
        translation_domain=DOMAIN, translation_key=key, translation_placeholders={"error": str(err)}
    )


async def _analyze(hass: HomeAssistant, call: ServiceCall) -> ServiceResponse:
    client = _client(hass, call)
    image = await async_get_image(hass, call.data["entity_id"])
    if image.content_type != "image/jpeg":
        raise ServiceValidationError(translation_domain=DOMAIN, translation_key="not_jpeg")
    try:
        accepted = await client.upload_image(call.data["camera_id"], image.content)
        result: dict[str, Any] = {"job_id": accepted["job_id"], "duplicate": accepted["duplicate"]}
        if call.data["wait"] and accepted["job_id"] is not None:
            result |= await _wait_for_result(client, accepted["job_id"])
    except HsiError as err:
        raise _failed(err) from err
    return result


async def _wait_for_result(client: HsiClient, job_id: int) -> dict[str, Any]:
    """The job's end state and, once its camera's activity has one, the event it belongs to, with
    the language model's description when its phase ends within the wait (it follows the rules'
    judgement; ``event.llm_state`` says whether it is still to come)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_FOR_EVENT_S
    job: dict[str, Any] = {}
    event: dict[str, Any] | None = None
    while loop.time() < deadline:
        if event is None:
            job = await client.get_job(job_id)
            if job["state"] == "dead":
                return {"state": "dead", "error": job.get("last_error")}
        if event is not None or (job["state"] == "done" and job.get("event_id")):
            event = await client.get_event(job["event_id"])
            if event.get("llm_state") not in LLM_RUNNING:
                break
        await asyncio.sleep(0.5)
    if event is not None:
        return {"state": "done", "event": event, "description": event.get("description")}
    # Done without an event yet (the camera's activity is still open), or still queued.
    return {"state": job.get("state", "queued")}


async def _review(hass: HomeAssistant, call: ServiceCall) -> ServiceResponse:
    client = _client(hass, call)
    changes: dict[str, Any] = {"reviewed": True}
    changes |= {k: call.data[k] for k in ("notes", "feedback") if k in call.data}
    try:
        event: dict[str, Any] = await client.patch_event(call.data["event_id"], **changes)
    except HsiError as err:
        raise _failed(err) from err
    return event


async def _events(hass: HomeAssistant, call: ServiceCall) -> ServiceResponse:
    client = _client(hass, call)
    filters = {k: call.data.get(k) for k in ("camera", "level", "min_risk", "reviewed", "limit")}
    if "since" in call.data:
        since: datetime = call.data["since"]
        if since.tzinfo is None:
            # The UI's datetime selector sends a naive time, meant in Home Assistant's time zone.
            since = since.replace(tzinfo=dt_util.get_default_time_zone())
        filters["since"] = since.isoformat()
    try:
        page: dict[str, Any] = await client.get_events(**filters)
    except HsiError as err:
        raise _failed(err) from err
    return {"events": page["events"], "next_cursor": page.get("next_cursor")}


def _aware(moment: datetime) -> datetime:
    # The UI's datetime selector sends a naive time, meant in Home Assistant's time zone.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=dt_util.get_default_time_zone())


async def _summarize(hass: HomeAssistant, call: ServiceCall) -> ServiceResponse:
    """A digest of a period (default: the server's latest scheduled one); with ``publish`` it is
    also sent on MQTT, so the digest event (and its notification blueprint) fires."""
    client = _client(hass, call)
    times = {k: _aware(call.data[k]).isoformat() for k in ("since", "until") if k in call.data}
    try:
        digest = await client.make_digest(
            **times, camera=call.data.get("camera"), publish=call.data["publish"], timezone=hass.config.time_zone
        )
    except HsiError as err:
        raise _failed(err) from err
    entry = hass.config_entries.async_get_entry(call.data[ATTR_CONFIG_ENTRY])
    assert entry is not None
    return digest_event_data(hass, digest, client.url, entry.unique_id or entry.entry_id, entry.entry_id)


async def _requeue(hass: HomeAssistant, call: ServiceCall) -> ServiceResponse:
    client = _client(hass, call)
    try:
        jobs = await client.list_dlq()
        for job in jobs:
            await client.requeue_dlq(job["id"])
    except HsiError as err:
        raise _failed(err) from err
    return {"requeued": len(jobs)}


async def _context(hass: HomeAssistant, call: ServiceCall) -> ServiceResponse:
    client = _client(hass, call)
    body = {k: v for k, v in call.data.items() if k != ATTR_CONFIG_ENTRY}
    try:
        stored: dict[str, Any] = await client.update_context(body)
    except HsiError as err:
        raise _failed(err) from err
    return stored


async def _find_person(client: HsiClient, name: str) -> dict[str, Any] | None:
    wanted = name.casefold()
    return next((p for p in await client.list_people() if str(p["name"]).casefold() == wanted), None)


async def _enroll_person(hass: HomeAssistant, call: ServiceCall) -> ServiceResponse:
    """Enrol a person seen in an event (its ``detection``-th detection) as ``name``: the person is
    created on first enrolment (linked to ``person_entity_id``), later calls add views of them."""
    client = _client(hass, call)
    try:
        person = await _find_person(client, call.data["name"])
        if person is None:
            person = await client.create_person(call.data["name"], call.data.get("person_entity_id"))
        enrolled: dict[str, Any] = await client.enroll_detection(
            call.data["event_id"], call.data["detection"], int(person["id"])
        )
    except HsiError as err:
        raise _failed(err) from err
    return enrolled


async def _forget_person(hass: HomeAssistant, call: ServiceCall) -> ServiceResponse:
    """Delete a person and every embedding of theirs on the server."""
    client = _client(hass, call)
    try:
        person = await _find_person(client, call.data["name"])
        if person is None:
            raise ServiceValidationError(
                translation_domain=DOMAIN,
                translation_key="unknown_person",
                translation_placeholders={"name": call.data["name"]},
            )
        await client.delete_person(int(person["id"]))
    except HsiError as err:
        raise _failed(err) from err
    return {"forgotten": person["name"], "embeddings_deleted": sum(person.get("embeddings", {}).values())}


def async_setup_services(hass: HomeAssistant) -> None:
    """Register the domain's services (once, from async_setup)."""
    for name, handler, schema, response in (
        ("analyze_snapshot", _analyze, ANALYZE_SCHEMA, SupportsResponse.OPTIONAL),
        ("mark_reviewed", _review, REVIEW_SCHEMA, SupportsResponse.OPTIONAL),
        ("get_events", _events, EVENTS_SCHEMA, SupportsResponse.ONLY),
        ("requeue_dead_letters", _requeue, REQUEUE_SCHEMA, SupportsResponse.OPTIONAL),
        ("set_context", _context, CONTEXT_SCHEMA, SupportsResponse.OPTIONAL),
        ("summarize", _summarize, SUMMARIZE_SCHEMA, SupportsResponse.OPTIONAL),
        ("enroll_person", _enroll_person, ENROLL_PERSON_SCHEMA, SupportsResponse.OPTIONAL),
        ("forget_person", _forget_person, FORGET_PERSON_SCHEMA, SupportsResponse.OPTIONAL),
    ):

        async def call(service: ServiceCall, handler: Any = handler) -> ServiceResponse:
            return await handler(hass, service)  # type: ignore[no-any-return]

        hass.services.async_register(DOMAIN, name, call, schema=schema, supports_response=response)
