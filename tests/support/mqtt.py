"""MQTT clients as Home Assistant would be: they subscribe and record what the broker delivers."""

from __future__ import annotations

import asyncio
import queue
import threading
import time
import uuid
from collections.abc import Callable
from typing import Generic, TypeVar
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

T = TypeVar("T")


def _host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "localhost", parts.port or 1883


class _Recording(Generic[T]):
    """What a recording client shares: its paho client and every message it received, in order."""

    client: mqtt.Client
    received: queue.Queue[T]
    seen: list[T]

    def _all(self) -> list[T]:
        while True:
            try:
                self.seen.append(self.received.get_nowait())
            except queue.Empty:
                return list(self.seen)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Subscriber(_Recording[mqtt.MQTTMessage]):
    """A real MQTT client, as Home Assistant would be, recording what it receives."""

    def __init__(self, url: str, topic: str = "hsi/#") -> None:
        self.received: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.seen: list[mqtt.MQTTMessage] = []
        subscribed = threading.Event()
        self._acknowledged: set[int] = set()

        def on_subscribe(client: mqtt.Client, userdata: object, mid: int, *_: object) -> None:
            self._acknowledged.add(mid)
            subscribed.set()

        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"test-{uuid.uuid4().hex[:8]}")
        self.client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        self.client.on_subscribe = on_subscribe
        self.client.on_message = lambda c, u, m: self.received.put(m)
        self._subscribed = subscribed
        self._where = f"{topic} on {url}"
        self.client.connect_async(*_host_port(url))
        self.client.loop_start()

    async def ready(self, timeout: float = 10) -> Subscriber:
        """Wait (without blocking the loop, which may run the broker) until subscribed."""
        deadline = time.monotonic() + timeout
        while not self._subscribed.is_set():
            if time.monotonic() > deadline:
                raise TimeoutError(f"could not subscribe to {self._where}")
            await asyncio.sleep(0.02)
        return self

    async def caught_up(self, timeout: float = 10) -> None:
        """Wait until the broker acknowledged one more subscription (to a topic nobody uses).

        A broker answers one client's packets in order, and sends the retained messages of a
        subscription before it handles the client's next packet: once this acknowledgement is
        here, every retained message owed to the earlier subscriptions has arrived too."""
        _, mid = self.client.subscribe(f"tests/caught-up/{uuid.uuid4().hex}", qos=1)
        deadline = time.monotonic() + timeout
        while mid not in self._acknowledged:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the broker did not acknowledge a subscription ({self._where})")
            await asyncio.sleep(0.02)

    async def wait_for(self, predicate: Callable[[mqtt.MQTTMessage], bool], timeout: float = 30) -> mqtt.MQTTMessage:
        deadline = time.monotonic() + timeout
        for message in self.seen:
            if predicate(message):
                return message
        while time.monotonic() < deadline:
            try:
                message = self.received.get_nowait()
            except queue.Empty:
                await asyncio.sleep(0.05)
                continue
            self.seen.append(message)
            if predicate(message):
                return message
        raise TimeoutError("expected MQTT message did not arrive")

    def drain(self) -> list[mqtt.MQTTMessage]:
        return self._all()


class PersistentSubscriber(_Recording[tuple[str, bytes, bool]]):
    """Home Assistant's view: QoS 1, persistent session (clean_session=False), reconnecting.

    Messages queued by the broker while this client is away are delivered when it returns;
    every message ever received is kept, duplicates included (at-least-once is what is tested).
    """

    def __init__(self, url: str, topic: str = "hsi/#") -> None:
        self.received: queue.Queue[tuple[str, bytes, bool]] = queue.Queue()
        self.seen: list[tuple[str, bytes, bool]] = []
        self.subscribed = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"ha-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv311,
            clean_session=False,
        )
        self.client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.on_message = lambda c, u, m: self.received.put((m.topic, bytes(m.payload), bool(m.retain)))
        self.client.reconnect_delay_set(min_delay=1, max_delay=1)
        self.client.connect_async(*_host_port(url))
        self.client.loop_start()

    def wait_subscribed(self, timeout: float = 10) -> PersistentSubscriber:
        if not self.subscribed.wait(timeout):
            raise TimeoutError("subscriber did not subscribe")
        return self

    def messages(self) -> list[tuple[str, bytes, bool]]:
        return self._all()

    def stay_away(self) -> None:
        """Disconnect and stop reconnecting (Home Assistant down or slow to come back): the broker
        keeps the session and queues what is published meanwhile."""
        self.client.disconnect()
        self.client.loop_stop()

    def come_back(self) -> None:
        self.client.reconnect()
        self.client.loop_start()
