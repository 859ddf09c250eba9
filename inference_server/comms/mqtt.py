"""MQTT publisher on paho-mqtt 2.x: LWT availability, retained discovery, awaited PUBACKs."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlparse

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from inference_server.comms.topics import Topics

log = logging.getLogger(__name__)


class PublishError(RuntimeError):
    """A message was not acknowledged by the broker."""


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    host: str
    port: int
    username: str | None
    password: str | None = field(repr=False)
    tls: bool

    @classmethod
    def parse(cls, url: str) -> BrokerAddress:
        parsed = urlparse(url)
        if parsed.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
            raise ValueError(f"MQTT URL must start with mqtt:// or mqtts://, got {url!r}")
        tls = parsed.scheme in ("mqtts", "ssl")
        return cls(
            host=parsed.hostname or "localhost",
            port=parsed.port or (8883 if tls else 1883),
            username=unquote(parsed.username) if parsed.username else None,
            password=unquote(parsed.password) if parsed.password else None,
            tls=tls,
        )


class MqttPublisher:
    """Keeps one connection; ``publish`` returns once the broker acknowledged (QoS 1)."""

    def __init__(
        self,
        address: BrokerAddress,
        topics: Topics,
        client_id: str,
        online_messages: list[tuple[str, bytes]],
        on_connected: Callable[[], None] | None = None,
    ) -> None:
        self.address = address
        self.topics = topics
        self._online_messages = online_messages
        #: Called on the event loop after every (re)connection, e.g. to republish what the
        #: broker may have lost (a broker restarted without persistence keeps no retained message).
        self._on_connected = on_connected
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: dict[int, asyncio.Future[None]] = {}
        self._lock = threading.Lock()
        self._acked_early: set[int] = set()
        self._untracked: set[int] = set()
        self.connected = asyncio.Event()
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311, clean_session=True
        )
        if address.username:
            client.username_pw_set(address.username, address.password)
        if address.tls:
            client.tls_set()
        client.will_set(topics.availability, b"offline", qos=1, retain=True)
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        self._client = client

    async def start(self, timeout: float = 10.0) -> None:
        self._loop = asyncio.get_running_loop()
        self._client.connect_async(self.address.host, self.address.port, keepalive=30)
        self._client.loop_start()
        try:
            await asyncio.wait_for(self.connected.wait(), timeout)
        except TimeoutError:
            log.error(
                "mqtt broker not reachable yet host=%s port=%s; retrying in background",
                self.address.host,
                self.address.port,
            )

    async def stop(self) -> None:
        if self.connected.is_set():
            try:
                await self.publish(self.topics.availability, b"offline", retain=True, timeout=2.0)
            except PublishError as err:
                log.warning("offline message not acknowledged: %s", err)
        self._client.disconnect()
        await asyncio.to_thread(self._client.loop_stop)

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            log.error("mqtt connect refused reason=%s", reason)
            return
        log.info("mqtt connected host=%s port=%s", self.address.host, self.address.port)
        # Fire-and-forget (not awaited by anyone): remember their ids so their PUBACKs are ignored.
        # This runs on paho's thread, which also handles PUBACKs, so none can arrive before we record it.
        for topic, payload in [(self.topics.availability, b"online"), *self._online_messages]:
            info = client.publish(topic, payload, qos=1, retain=True)
            with self._lock:
                self._untracked.add(info.mid)
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self.connected.set)
            if self._on_connected is not None:
                self._loop.call_soon_threadsafe(self._on_connected)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        log.warning("mqtt disconnected reason=%s", reason)
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self.connected.clear)

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        # Runs on paho's thread while paho holds its own locks: take only our lock, briefly,
        # and never call into paho while holding ours (that order inversion deadlocks).
        with self._lock:
            if mid in self._untracked:
                self._untracked.discard(mid)
                return
            future = self._pending.pop(mid, None)
            if future is None:
                # The PUBACK beat ``send`` registering its future: ``send`` finds it here.
                self._acked_early.add(mid)
                return
        self._resolve_threadsafe(future)

    def _resolve_threadsafe(self, future: asyncio.Future[None]) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(_resolve, future)

    def send(self, topic: str, payload: bytes, *, retain: bool = False, qos: int = 1) -> asyncio.Future[None]:
        """Hand a message to the client; the future resolves on the broker's acknowledgement."""
        assert self._loop is not None, "start() first"
        future: asyncio.Future[None] = self._loop.create_future()
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            future.set_exception(PublishError(f"publish to {topic} failed: {mqtt.error_string(info.rc)}"))
        elif qos == 0:
            future.set_result(None)
        else:
            with self._lock:
                if info.mid in self._acked_early:
                    self._acked_early.discard(info.mid)
                    future.set_result(None)
                else:
                    self._pending[info.mid] = future
        return future

    async def publish(
        self, topic: str, payload: bytes, *, retain: bool = False, qos: int = 1, timeout: float = 10.0
    ) -> None:
        future = self.send(topic, payload, retain=retain, qos=qos)
        try:
            await asyncio.wait_for(future, timeout)
        except TimeoutError as err:
            raise PublishError(f"no acknowledgement for {topic} within {timeout}s") from err


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
