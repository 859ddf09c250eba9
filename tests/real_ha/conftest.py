"""Fixtures of the real-Home-Assistant acceptance test: one stack (hass, mosquitto, the HSI
server; ``stack.py``) for the whole session, and one round of real threat images through it.

Run with ``scripts/test-real-ha``; the server suite's ``testpaths`` do not include this folder.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.real_ha.stack import BUS_EVENT, CAMERAS, DEVICE_TRIGGER_FIRED, Hass, Stack, running_stack, wait_for


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Stack]:
    started = time.monotonic()
    with running_stack(tmp_path_factory.mktemp("real-ha")) as running:
        print(f"\nstack up in {time.monotonic() - started:.1f} s: HA {running.hass.url}, server {running.server_url}")
        yield running
        if request.session.testsfailed:
            print(f"\n{running.logs()}")


@pytest.fixture
async def ha(stack: Stack) -> AsyncIterator[Hass]:
    """A websocket session recording the integration's bus events and every service call."""
    async with stack.client() as client:
        await client.subscribe(BUS_EVENT)
        await client.subscribe("call_service")
        await client.subscribe(DEVICE_TRIGGER_FIRED)
        yield client


@dataclass
class Threats:
    """One person image per camera at night, alarm armed away, nobody home, and what HA saw."""

    landed: dict[str, float]  # camera id -> time.time() the file landed
    events: list[dict[str, Any]]  # every bus event and service call HA reported meanwhile
    event_ids: dict[str, str]  # camera id -> the HSI event id of its "new"
    started: float

    def bus(self, event_id: str) -> list[dict[str, Any]]:
        return [e["data"] for e in self.events if e["event_type"] == BUS_EVENT and e["data"]["event_id"] == event_id]

    def device_triggers(self, event_id: str) -> list[dict[str, Any]]:
        """Runs of the test's device-trigger automation for ``event_id``."""
        return [
            e["data"]
            for e in self.events
            if e["event_type"] == DEVICE_TRIGGER_FIRED and e["data"]["event_id"] == event_id
        ]

    def notifications(self, event_id: str) -> list[dict[str, Any]]:
        """The blueprint's notification calls for ``event_id`` (its tag or text carries the id)."""
        return [
            e["data"]
            for e in self.events
            if e["event_type"] == "call_service"
            and e["data"]["domain"] in ("notify", "persistent_notification")
            and event_id in repr(e["data"].get("service_data"))
        ]


async def _threat_round(stack: Stack) -> Threats:
    started = time.time()
    async with stack.client() as client:
        await client.subscribe(BUS_EVENT)
        await client.subscribe("call_service")
        await client.subscribe(DEVICE_TRIGGER_FIRED)
        landed: dict[str, float] = {}
        for n, camera in enumerate(CAMERAS):
            # A separate event per camera; a second apart, so detections do not queue behind each other.
            landed[camera] = stack.drop_person(camera, asset=("bus.jpg", "zidane.jpg")[n % 2])
            await asyncio.sleep(1.0)

        def news() -> dict[str, str] | None:
            found = {
                e["data"]["camera_id"]: e["data"]["event_id"]
                for e in client.bus(BUS_EVENT, lambda d: d["type"] == "new")
            }
            return found if set(CAMERAS) <= set(found) else None

        event_ids: dict[str, str] = await wait_for(news, 120, "a 'new' bus event for every camera", interval=0.05)
        # The server's batch idle time (default 30 s) closes each event: wait for every "end",
        # then a moment for the blueprint's automation to have run.
        await wait_for(lambda: set(event_ids.values()) <= _ended(client), 120, "an 'end' bus event for every event")
        await asyncio.sleep(3)
        return Threats(landed, list(client.events), event_ids, started)


def _ended(client: Hass) -> set[str]:
    return {e["data"]["event_id"] for e in client.bus(BUS_EVENT, lambda d: d["type"] == "end")}


@pytest.fixture(scope="session")
def threats(stack: Stack) -> Threats:
    return asyncio.run(_threat_round(stack))
