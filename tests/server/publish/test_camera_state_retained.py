"""The cameras' retained ``hsi/cameras/<id>/state`` always says what the database says: after a
camera is changed over REST, after a broker restart that lost every retained message, and after
a server restart (its embedded broker starts empty), without any new image."""

from __future__ import annotations

import json
from collections.abc import Callable

import aiohttp

from inference_server import demo_assets
from inference_server.config import Settings
from inference_server.detection.ultralytics_backend import UltralyticsDetector
from inference_server.server import Server
from inference_server.store import outbox
from tests.support.mosquitto import RestartableMosquitto
from tests.support.mqtt import Subscriber
from tests.support.waiting import wait_until

from ..conftest import auth_headers, drop, running


async def _retained_states(url: str) -> dict[str, dict[str, object]]:
    """What a subscriber arriving now finds retained on ``hsi/cameras/+/state`` (the non-empty ones)."""
    subscriber = Subscriber(url, "hsi/cameras/+/state")
    try:
        await subscriber.ready()
        await subscriber.caught_up()
        return {m.topic.split("/")[2]: json.loads(m.payload) for m in subscriber.drain() if m.retain and m.payload}
    finally:
        subscriber.close()


async def _database_states(server: Server) -> dict[str, dict[str, object]]:
    """Each camera as stored, quiet (every batch closed): what its retained state must say."""
    assert not await server.pool.fetchval("SELECT count(*) FROM batches WHERE closed_at IS NULL")
    rows = await server.pool.fetch(
        "SELECT c.id, c.enabled, (SELECT e.id::text FROM events e WHERE e.camera_id = c.id"
        " ORDER BY e.started_at DESC LIMIT 1) AS last_event_id FROM cameras c"
    )
    return {r["id"]: {"enabled": r["enabled"], "last_event_id": r["last_event_id"]} for r in rows}


async def _states_match(server: Server, url: str) -> bool:
    """Every message queued has gone out and the broker retains each camera's state as stored."""
    if await outbox.pending_count(server.pool):
        return False
    retained = {
        cid: {"enabled": state["enabled"], "last_event_id": state["last_event_id"]}
        for cid, state in (await _retained_states(url)).items()
        if (state["risk_score"], state["risk_level"], state["objects"]) == (0, "low", {})
    }
    return retained == await _database_states(server)


async def _porch_seen(server: Server, settings: Settings, *, add_garden: bool = False) -> dict[str, str]:
    """``porch`` has had an event and its batch closed (its state retained by the batch stage),
    ``garden`` was added over REST (``add_garden``), and every message queued has been sent."""
    drop(demo_assets.image("bus.jpg"), settings.cameras_path / "porch" / "MDAlarm_20261124-021000.jpg")
    headers = await auth_headers(server)
    async with aiohttp.ClientSession(base_url=server.api_url, headers=headers) as http:
        if add_garden:
            resp = await http.post("/api/v1/cameras", json={"id": "garden", "name": "Garden"})
            assert resp.status == 201, await resp.text()
    await wait_until(
        lambda: server.pool.fetchval(
            "SELECT count(*) = 1 FROM events WHERE camera_id = 'porch' AND ended_at IS NOT NULL"
        ),
        60,
    )
    await wait_until(lambda: _sent_and_quiet(server, settings), 30)
    return headers


async def _sent_and_quiet(server: Server, settings: Settings) -> bool:
    if await outbox.pending_count(server.pool):
        return False
    url = settings.mqtt_url or server.mqtt_url
    return (await _retained_states(url)).get("porch", {}).get("risk_score") == 0


async def test_disabling_a_camera_updates_its_retained_state(
    make_settings: Callable[..., Settings], pose_detector: UltralyticsDetector
) -> None:
    settings = make_settings()
    async with running(settings, pose_detector) as server:
        headers = await _porch_seen(server, settings)
        # The batch is closed and its messages sent: only the PATCH can change the state now.
        assert (await _retained_states(server.mqtt_url))["porch"]["enabled"] is True
        async with aiohttp.ClientSession(base_url=server.api_url, headers=headers) as http:
            resp = await http.patch("/api/v1/cameras/porch", json={"enabled": False})
            assert resp.status == 200, await resp.text()
        # A Home Assistant reloaded now (a fresh subscriber) finds the switch off.
        await wait_until(lambda: _porch_disabled(server.mqtt_url), 30)
        # (Marked sent within outbox.MARK_WAIT_S of going out, when no store carries the mark.)
        await wait_until(lambda: _states_match(server, server.mqtt_url), 30)


async def _porch_disabled(url: str) -> bool:
    return (await _retained_states(url)).get("porch", {}).get("enabled") is False


async def test_a_broker_restarted_without_persistence_gets_every_camera_state_again(
    forgetful_broker: RestartableMosquitto, make_settings: Callable[..., Settings], pose_detector: UltralyticsDetector
) -> None:
    broker = forgetful_broker
    settings = make_settings(mqtt_url=broker.url)
    async with running(settings, pose_detector) as server:
        await _porch_seen(server, settings, add_garden=True)
        broker.stop()
        broker.start()
        # The server reconnects and republishes, with no new image.
        await wait_until(lambda: _states_match(server, broker.url), 30)
        assert set(await _retained_states(broker.url)) == {"porch", "garden"}


async def test_a_restarted_server_republishes_every_camera_state(
    make_settings: Callable[..., Settings], pose_detector: UltralyticsDetector
) -> None:
    settings = make_settings()  # the embedded broker: it starts empty with each server
    async with running(settings, pose_detector) as server:
        await _porch_seen(server, settings, add_garden=True)
    async with running(settings, pose_detector) as server:
        await wait_until(lambda: _states_match(server, server.mqtt_url), 30)
        states = await _retained_states(server.mqtt_url)
        assert set(states) == {"porch", "garden"}
        assert states["porch"]["last_event_id"] is not None and states["garden"]["enabled"] is True
