"""Issue 15 as its user meets it: a real Home Assistant 2025.4.4, a real mosquitto, the real HSI
server and real photos dropped into camera folders, checked over HA's REST and websocket APIs.

The tests share one stack and one round of threats (``conftest.py``) and run in file order.
"""

from __future__ import annotations

import asyncio
import json
import re
import statistics
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tests.real_ha.conftest import Threats
from tests.real_ha.stack import BUS_EVENT, CAMERAS, DEVICE_TRIGGER_FIRED, Hass, Stack, StackError, camera_name, wait_for

#: The issue's goal: from a file landing in a camera folder to HA's bus event "new", for a threat.
P95_GOAL_S = 2.0
#: Camera entities must be back this soon after the broker or the server restarted.
AVAILABLE_WITHIN_S = 15.0
FIGURES = Path("/tmp/hsi-real-ha-figures.json")


def _record(**figures: Any) -> None:
    known = json.loads(FIGURES.read_text()) if FIGURES.exists() else {}
    FIGURES.write_text(json.dumps({**known, **figures}, indent=1))


def test_threat_reaches_the_bus_fast(threats: Threats) -> None:
    """Check 7: p95 from file landed to the bus event ``new``, over one threat per camera."""
    latencies = []
    for camera, event_id in threats.event_ids.items():
        new = next(e for e in threats.events if e["event_type"] == BUS_EVENT and e["data"]["event_id"] == event_id)
        latencies.append(new["received_wall"] - threats.landed[camera])
    latencies.sort()
    p50 = statistics.median(latencies)
    p95 = statistics.quantiles(latencies, n=20, method="inclusive")[-1]
    print(
        f"\nfile landed -> bus 'new' over {len(latencies)} threats:"
        f" p50 {p50:.2f} s, p95 {p95:.2f} s, max {latencies[-1]:.2f} s"
    )
    print("  each:", " ".join(f"{x:.2f}" for x in latencies))
    _record(
        latency_n=len(latencies),
        latency_p50_s=round(p50, 2),
        latency_p95_s=round(p95, 2),
        latency_max_s=round(latencies[-1], 2),
    )
    assert len(latencies) >= 10
    assert p95 <= P95_GOAL_S, f"p95 {p95:.2f} s > {P95_GOAL_S} s (each: {[round(x, 2) for x in latencies]})"


def test_one_alert_per_level_rise(threats: Threats) -> None:
    """Check 1: each event alerts (bus ``alert: true``) once per level it rose to, and the
    blueprint's automation notifies and a device-trigger automation runs exactly that often."""
    problems = []
    for camera, event_id in threats.event_ids.items():
        bus = threats.bus(event_id)
        levels = [d["risk_level"] for d in bus if d["type"] in ("new", "update")]
        order = ["low", "medium", "high", "critical"]
        rises = sum(
            1
            for i, level in enumerate(levels)
            if i == 0 or order.index(level) > max(order.index(x) for x in levels[:i])
        )
        alerts = [d for d in bus if d["alert"]]
        notes = threats.notifications(event_id)
        fired = threats.device_triggers(event_id)
        print(
            f"\n{camera}: {[(d['type'], d['risk_level'], d['risk_score'], d['alert']) for d in bus]},"
            f" {len(notes)} notification(s), {len(fired)} device trigger(s)"
        )
        if bus[0]["risk_level"] not in ("high", "critical"):
            problems.append(f"{camera}: not a threat: {bus[0]['risk_level']} ({bus[0]['risk_score']})")
        if not len(alerts) == len(notes) == len(fired) == rises:
            problems.append(
                f"{camera}: {rises} level rise(s), {len(alerts)} alert bus event(s), {len(notes)} notification(s),"
                f" {len(fired)} device trigger(s);"
                f" bus: {[(d['type'], d['risk_level'], d['alert']) for d in bus]}"
            )
    assert not problems, "\n".join(problems)


async def test_review_does_not_notify(stack: Stack, ha: Hass, threats: Threats) -> None:
    """Check 2: marking an event reviewed sends no notification, no alert bus event and fires no
    device trigger."""
    event_id = threats.event_ids["back_door"]
    await ha.call(
        "home_security_intelligence", "mark_reviewed", {"config_entry_id": stack.entry_id, "event_id": event_id}
    )
    # The server publishes the reviewed event as an "update"; once HA put it on the bus, the
    # blueprint's automation would run at once: give it two seconds more.
    try:
        await wait_for(lambda: ha.bus(BUS_EVENT, lambda d: d["event_id"] == event_id), 10, "the review's update")
    except StackError:
        print("\nthe review reached HA's bus as no event within 10 s (nothing to notify either)")
    await asyncio.sleep(2)
    alerts = ha.bus(BUS_EVENT, lambda d: d["event_id"] == event_id and d["alert"])
    notes = [
        e
        for e in ha.bus("call_service")
        if e["data"]["domain"] in ("notify", "persistent_notification") and event_id in repr(e["data"])
    ]
    fired = ha.bus(DEVICE_TRIGGER_FIRED, lambda d: d["event_id"] == event_id)
    assert not alerts, f"review fired an alert: {alerts}"
    assert not fired, f"review fired a device trigger: {fired}"
    assert not notes, f"review notified: {notes}"


async def _wait_entity(ha: Hass, entity_id: str, what: str, timeout: float = AVAILABLE_WITHIN_S) -> dict[str, Any]:
    async def ready() -> dict[str, Any] | None:
        state = await ha.state(entity_id)
        return state if state is not None and state["state"] not in ("unavailable", "unknown") else None

    result: dict[str, Any] = await wait_for(ready, timeout, f"{entity_id} {what}")
    return result


async def _reload(stack: Stack, ha: Hass) -> None:
    await ha.post(f"/api/config/config_entries/entry/{stack.entry_id}/reload")


async def test_switch_state_survives_reload(stack: Stack, ha: Hass, threats: Threats) -> None:
    """Check 3: a detection switch turned off still shows off after the entry is reloaded."""
    switch = await ha.entity_id("driveway", "detection")
    await ha.call("switch", "turn_off", {"entity_id": switch})
    await wait_for(lambda: _is(ha, switch, "off"), 10, f"{switch} off")
    try:
        await _reload(stack, ha)
        state = await _wait_entity(ha, switch, "after the reload")
        assert state["state"] == "off", f"{switch} shows {state['state']} after a reload though detection is off"
    finally:
        await ha.call("switch", "turn_on", {"entity_id": switch})


async def _is(ha: Hass, entity_id: str, value: str) -> bool:
    state = await ha.state(entity_id)
    return state is not None and state["state"] == value


async def test_last_event_image_after_reload(stack: Stack, ha: Hass, threats: Threats) -> None:
    """Check 5: ``image.<cam>_last_event`` has a state after a reload and its proxy serves it."""
    image = await ha.entity_id("back_door", "event_snapshot")
    await _reload(stack, ha)
    state = await _wait_entity(ha, image, "after the reload")
    picture = state["attributes"]["entity_picture"]
    assert ha.http is not None
    async with ha.http.get(f"{ha.url}{picture}") as resp:
        body = await resp.read()
        assert resp.status == 200, f"{picture}: {resp.status} {body[:200]!r}"
        assert body[:2] == b"\xff\xd8" or body[:4] == b"\x89PNG", f"{picture}: not an image"


async def _camera_entities(ha: Hass) -> list[str]:
    out = []
    for entry in await ha.entities():
        if entry["disabled_by"] is None and any(f"_{c}_" in entry["unique_id"] for c in CAMERAS):
            out.append(entry["entity_id"])
    return out


async def _available_after(ha: Hass, restart: Any, label: str) -> None:
    entities = await _camera_entities(ha)
    assert entities
    names_before = {e: (await ha.state(e) or {}).get("attributes", {}).get("friendly_name") for e in entities}
    began = time.monotonic()
    await asyncio.to_thread(restart)
    back_up = time.monotonic()

    async def all_back() -> list[str] | None:
        down = [e for e in entities if ((await ha.state(e)) or {"state": "unavailable"})["state"] == "unavailable"]
        return None if down else entities

    try:
        await wait_for(all_back, AVAILABLE_WITHIN_S, f"every camera entity available after the {label}", interval=0.25)
    except Exception as err:
        down = [e for e in entities if ((await ha.state(e)) or {"state": "unavailable"})["state"] == "unavailable"]
        raise AssertionError(
            f"{len(down)}/{len(entities)} camera entities still unavailable"
            f" {AVAILABLE_WITHIN_S} s after the {label}: {down[:10]}"
        ) from err
    took = time.monotonic() - back_up
    print(
        f"\n{label}: {len(entities)} camera entities available {took:.1f} s after it was back"
        f" ({back_up - began:.1f} s to restart)"
    )
    _record(**{f"available_after_{label.replace(' ', '_')}_s": round(took, 1)})
    names_after = {e: (await ha.state(e) or {}).get("attributes", {}).get("friendly_name") for e in entities}
    assert names_after == names_before


async def _reload_now(stack: Stack) -> None:
    async with stack.client() as client:
        await _reload(stack, client)


async def test_cameras_available_after_broker_restart(stack: Stack, ha: Hass, threats: Threats) -> None:
    """Check 4a: mosquitto without persistence restarted: camera entities back within 15 s."""
    await _available_after(ha, stack.restart_broker, "broker restart")
    # What HA knows now came from the server's republished retained messages (the restarted broker
    # had none): a reload, as after an HA restart, must find every camera's state there again.
    await _available_after(ha, lambda: asyncio.run(_reload_now(stack)), "reload after the broker restart")


async def test_cameras_available_after_server_restart(stack: Stack, ha: Hass, threats: Threats) -> None:
    """Check 4b: the server restarted: camera entities back within 15 s of it answering again."""
    await _available_after(ha, stack.restart_server, "server restart")


async def test_logbook_one_readable_entry_per_event(stack: Stack, ha: Hass, threats: Threats) -> None:
    """Check 6: one logbook entry per event naming the camera, its level and its score."""
    start = datetime.fromtimestamp(threats.started, UTC) - timedelta(seconds=5)
    entries = await ha.get(f"/api/logbook/{start.isoformat()}")
    problems = []
    for camera, event_id in threats.event_ids.items():
        new = threats.bus(event_id)[0]
        name = re.compile(rf"\b{re.escape(camera_name(camera))}\b", re.IGNORECASE)
        level = re.compile(rf"\b{new['risk_level']}\b", re.IGNORECASE)
        score = re.compile(rf"\b{new['risk_score']}\b")
        texts = [f"{e.get('name', '')} {e.get('message', '')}" for e in entries]
        about = [t for t in texts if name.search(t) and level.search(t)]
        readable = [t for t in about if score.search(t)]
        print(f"\n{camera}: {readable}")
        if len(readable) != 1:
            problems.append(
                f"{camera}: {len(readable)} entries with name, level and score;"
                f" entries naming it: {[t for t in texts if name.search(t)][:6]}"
            )
    assert not problems, "\n".join(problems)
