"""MQTT ingest: edge nodes publish an image as the payload of ``<prefix>/ingest/<camera_id>``.

A separate paho client (client id ``<server id>-ingest``) subscribes with QoS 1, so the
publisher's PUBACK bookkeeping and lock (publish/mqtt.py) are untouched by inbound traffic.

paho's network thread only looks at the payload's length and hands the bytes to the event
loop; it never blocks and never decodes. The loop holds at most ``queue_size`` images waiting
for validation. Anything refused (too large, queue full, unknown or disabled camera, not a
valid image) becomes a quarantine row (``stored_path`` empty: the bytes are not kept) and a
warning — MQTT has no reply channel, so the quarantine list is where a refusal is visible.
At least once: the client keeps a persistent session (``clean_session=False``, a client id
stable across restarts) and acknowledges by hand (paho's ``manual_ack``). The PUBACK goes only
after the image is committed (or its refusal recorded): a message the server was holding when
it died, or that arrived while it was down, is delivered again by the broker when it comes back,
and a redelivered image is recognised by its hash. During a database outage the message waits
here, retried, unacknowledged. See docs/guarantees.md.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from inference_server.ingest.ingestor import CameraDisabled, Ingestor, UnknownCamera, printable
from inference_server.ingest.validate import InvalidImage
from inference_server.publish.mqtt import BrokerAddress
from inference_server.publish.topics import Topics
from inference_server.store import quarantine
from inference_server.store.db import is_unavailable
from inference_server.telemetry import metrics

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Inbound:
    topic: str
    camera_id: str
    data: bytes
    mid: int
    qos: int


class MqttIngest:
    """Subscribes to ``<prefix>/ingest/+`` and feeds payloads to ``Ingestor.ingest_bytes``."""

    def __init__(
        self, address: BrokerAddress, topics: Topics, client_id: str, ingestor: Ingestor, queue_size: int = 16
    ) -> None:
        self.address = address
        self.topics = topics
        self.ingestor = ingestor
        self.max_bytes = ingestor.limits.max_bytes
        self._queue: asyncio.Queue[_Inbound] = asyncio.Queue(queue_size)
        self._loop: asyncio.AbstractEventLoop | None = None
        self.subscribed = asyncio.Event()
        self._refusals: set[asyncio.Task[None]] = set()
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv311,
            clean_session=False,
            manual_ack=True,
        )
        if address.username:
            client.username_pw_set(address.username, address.password)
        if address.tls:
            client.tls_set()
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        self._client = client

    async def run(self, stop: asyncio.Event) -> None:
        """Connect, subscribe (again after every reconnect) and ingest until ``stop`` is set."""
        self._loop = asyncio.get_running_loop()
        self._client.connect_async(self.address.host, self.address.port, keepalive=30)
        self._client.loop_start()
        stopper = asyncio.create_task(stop.wait())
        try:
            while not stop.is_set():
                getter = asyncio.create_task(self._queue.get())
                await asyncio.wait({getter, stopper}, return_when=asyncio.FIRST_COMPLETED)
                if not getter.done():
                    getter.cancel()
                    break
                item = getter.result()
                if await self._handle_until_stored(item, stop):
                    self._ack(item)
        finally:
            stopper.cancel()
            self._client.disconnect()
            await asyncio.to_thread(self._client.loop_stop)

    async def _handle_until_stored(self, item: _Inbound, stop: asyncio.Event) -> bool:
        """Store (or refuse) one image; through a database outage, retry. False: stopping first."""
        delay = 0.5
        while True:
            try:
                await self._handle(item)
                return True
            except Exception as err:
                if not is_unavailable(err):
                    # A bug with this one message must not end the subscription or come back forever.
                    log.exception("mqtt ingest failed topic=%s; message dropped", printable(item.topic))
                    metrics.INGESTED.labels(item.camera_id, "mqtt", "failed").inc()
                    return True
                log.warning(
                    "mqtt ingest waiting for the database topic=%s retry_in_s=%.1f", printable(item.topic), delay
                )
            try:
                await asyncio.wait_for(stop.wait(), delay)
            except TimeoutError:
                delay = min(delay * 2, 10.0)
                continue
            # Stopping: not acknowledged, so the broker delivers it again to the next session.
            return False

    def _ack(self, item: _Inbound) -> None:
        if item.qos > 0:
            self._client.ack(item.mid, item.qos)

    # --- paho's thread ---------------------------------------------------------------------
    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            log.error("mqtt ingest connect refused reason=%s", reason)
            return
        client.subscribe(self.topics.ingest(), qos=1)

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any, props: Any) -> None:
        if any(r.is_failure for r in reasons):
            log.error("mqtt ingest subscription refused topic=%s reasons=%s", self.topics.ingest(), reasons)
            return
        log.info("mqtt ingest subscribed topic=%s", self.topics.ingest())
        self._call(self.subscribed.set)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self._call(self.subscribed.clear)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        topic = message.topic
        camera_id = topic.rsplit("/", 1)[-1]
        size = len(message.payload)
        if size > self.max_bytes:
            # Dropped here, on the network thread: the bytes never reach the loop or a decoder.
            self._call(
                self._refuse_soon,
                _Inbound(topic, camera_id, b"", message.mid, message.qos),
                "too_large",
                f"{size} bytes > limit {self.max_bytes}",
                size,
            )
            return
        self._call(self._offer, _Inbound(topic, camera_id, bytes(message.payload), message.mid, message.qos))

    def _call(self, fn: Any, *args: Any) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(fn, *args)

    # --- event loop ------------------------------------------------------------------------
    def _offer(self, item: _Inbound) -> None:
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            self._refuse_soon(item, "ingest_queue_full", f"{self._queue.maxsize} images waiting", len(item.data))

    def _refuse_soon(self, item: _Inbound, reason: str, detail: str, size: int) -> None:
        """Record a refusal off the ingest path, then acknowledge (a refused message is final)."""
        task = asyncio.get_running_loop().create_task(self._refuse(item.topic, item.camera_id, reason, detail, size))
        self._refusals.add(task)  # the loop keeps only weak references to tasks
        task.add_done_callback(self._refusals.discard)
        task.add_done_callback(_log_failure)
        task.add_done_callback(lambda _: self._ack(item))

    async def _handle(self, item: _Inbound) -> None:
        try:
            await self.ingestor.ingest_bytes(
                item.camera_id, item.data, captured_at=None, original_name=item.topic, source="mqtt"
            )
        except InvalidImage as bad:
            await self._refuse(item.topic, item.camera_id, bad.reason, bad.detail, len(item.data))
        except UnknownCamera:
            await self._refuse(item.topic, None, "unknown_camera", f"no camera {item.camera_id!r}", len(item.data))
        except CameraDisabled:
            await self._refuse(
                item.topic, item.camera_id, "camera_disabled", "detection is off for this camera", len(item.data)
            )

    async def _refuse(self, topic: str, camera_id: str | None, reason: str, detail: str, size: int) -> None:
        await quarantine.add(
            self.ingestor.pool,
            camera_id=camera_id,
            original_path=printable(topic),
            stored_path=None,
            reason=reason,
            detail=detail,
            size_bytes=size,
        )
        metrics.QUARANTINED.labels(reason).inc()
        log.warning(
            "mqtt image refused camera_id=%s reason=%s detail=%s topic=%s",
            printable(camera_id or "-"),
            reason,
            detail,
            printable(topic),
        )


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("recording an mqtt refusal failed: %s", task.exception())
