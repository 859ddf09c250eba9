"""MQTT ingest: edge nodes publish an image as the payload of ``<prefix>/ingest/<camera_id>``.

A separate paho client (client id ``<server id>-ingest``) subscribes with QoS 1, so the
publisher's PUBACK bookkeeping and lock (comms/mqtt.py) are untouched by inbound traffic.

paho's network thread only checks the topic's last level against the camera id grammar and the
payload's length, and hands the message to a bounded queue on the event loop; it never decodes.
When that queue is full it *waits* for room: paho stops reading the socket, TCP holds the broker
back, and the broker keeps the rest (in flight, then queued for the session). Nothing is refused
for lack of room, so no message the broker holds is lost (docs/decisions.md, "MQTT ingest:
back-pressure"). A wait lasts as long as the event loop takes to store one image; only while the
database is down can it outlast the keepalive, and then the broker drops the connection and
delivers the unacknowledged messages again after paho reconnects (recognised by their hash).

Anything refused (a topic level that is not a camera id, too large, unknown or disabled camera,
not a valid image) becomes a quarantine row (``stored_path`` empty: the bytes are not kept) and a
warning — MQTT has no reply channel, so the quarantine list is where a refusal is visible. A
refused topic never names a folder: the camera id is checked before anything touches the disk.
At least once: the client keeps a persistent session (``clean_session=False``, a client id
stable across restarts) and acknowledges by hand (paho's ``manual_ack``). The PUBACK goes only
after the image is committed (or its refusal recorded): a message the server was holding when
it died, or that arrived while it was down, is delivered again by the broker when it comes back,
and a redelivered image is recognised by its hash. During a database outage the message waits
here, retried, unacknowledged. See docs/guarantees.md.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import re
import threading
import time
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from inference_server.comms.mqtt import BrokerAddress
from inference_server.comms.topics import Topics
from inference_server.ingest.ingestor import CameraDisabled, Ingestor, UnknownCamera, printable
from inference_server.ingest.validate import InvalidImage
from inference_server.schemas import CAMERA_ID_PATTERN
from inference_server.store import quarantine
from inference_server.store.db import is_unavailable
from inference_server.telemetry import metrics

log = logging.getLogger(__name__)

_CAMERA_ID = re.compile(CAMERA_ID_PATTERN)
_SHOWN = 200  # characters of a topic kept in a quarantine row or a log line (topics reach 64 KiB)
_KEEPALIVE_S = 30
_PAUSE_LOGGED_S = 1.0  # a read pause at least this long is logged (it shows a slow database)


@dataclass(frozen=True, slots=True)
class _Inbound:
    topic: str
    camera_id: str | None  # None: the topic's last level is not a camera id
    data: bytes
    size: int
    mid: int
    qos: int
    refusal: tuple[str, str] | None = None  # (reason, detail) decided on paho's thread


def _shown(text: str) -> str:
    """Printable, and at most ``_SHOWN`` characters (with the full length when cut)."""
    text = printable(text)
    return text if len(text) <= _SHOWN else f"{text[:_SHOWN]}… ({len(text)} characters)"


def _inbound(message: mqtt.MQTTMessage, max_bytes: int) -> _Inbound:
    """What paho's thread decides about a message: a refusal (bytes dropped) or an image to check."""
    try:
        topic = message.topic
    except UnicodeDecodeError:  # MQTT topics are UTF-8; a broker that lets another through
        topic = message._topic.decode("utf-8", "backslashreplace")
    level = topic.rsplit("/", 1)[-1]
    size = len(message.payload)
    if _CAMERA_ID.fullmatch(level) is None:
        # Refused before anything else: the camera id becomes a folder name further on.
        detail = f"topic level {_shown(level)!r} is not a camera id ([a-z0-9][a-z0-9_-]{{0,63}})"
        return _Inbound(topic, None, b"", size, message.mid, message.qos, ("invalid_camera_id", detail))
    if size > max_bytes:
        # Dropped here, on the network thread: the bytes never reach the loop or a decoder.
        detail = f"{size} bytes > limit {max_bytes}"
        return _Inbound(topic, level, b"", size, message.mid, message.qos, ("too_large", detail))
    return _Inbound(topic, level, bytes(message.payload), size, message.mid, message.qos)


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
        self._closing = threading.Event()
        self.subscribed = asyncio.Event()
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
        self._client.connect_async(self.address.host, self.address.port, keepalive=_KEEPALIVE_S)
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
            # Release paho's thread if it waits for room; what it held is not acknowledged, so the
            # broker delivers it again to the next session.
            self._closing.set()
            stopper.cancel()
            self._client.disconnect()
            await asyncio.to_thread(self._client.loop_stop)

    async def _handle_until_stored(self, item: _Inbound, stop: asyncio.Event) -> bool:
        """Store (or refuse) one image; through a database outage, retry. False: stopping first."""
        delay = 0.5
        while True:
            try:
                await self._handle_or_record_failure(item)
                return True
            except Exception as err:
                if not is_unavailable(err):
                    # Even recording the failure failed: a bug, not an outage; do not loop on it.
                    log.exception("mqtt ingest failed topic=%s; message dropped", _shown(item.topic))
                    return True
                log.warning("mqtt ingest waiting for the database topic=%s retry_in_s=%.1f", _shown(item.topic), delay)
            try:
                await asyncio.wait_for(stop.wait(), delay)
            except TimeoutError:
                delay = min(delay * 2, 10.0)
                continue
            # Stopping: not acknowledged, so the broker delivers it again to the next session.
            return False

    async def _handle_or_record_failure(self, item: _Inbound) -> None:
        try:
            await self._handle(item)
        except Exception as err:
            if is_unavailable(err):
                raise
            # A bug with this one message must not end the subscription or come back forever,
            # and must not vanish either: it is acknowledged with a quarantine row.
            log.exception("mqtt ingest failed camera_id=%s topic=%s", item.camera_id or "-", _shown(item.topic))
            metrics.INGESTED.labels(item.camera_id or "-", "mqtt", "failed").inc()
            await self._refuse(
                item.topic, item.camera_id, "ingest_failed", f"{type(err).__name__}: {err}"[:500], item.size
            )

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
        if not self._closing.is_set():
            log.warning("mqtt ingest disconnected reason=%s", reason)
        self._call(self.subscribed.clear)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        self._hand_over(_inbound(message, self.max_bytes))

    def _hand_over(self, item: _Inbound) -> None:
        """Put ``item`` on the loop's queue, waiting (this thread, so paho reads nothing more) while
        it is full. Returns without it when the server is stopping: it is then never acknowledged."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        started = time.monotonic()
        putting = self._queue.put(item)
        try:
            put = asyncio.run_coroutine_threadsafe(putting, loop)
        except RuntimeError:  # the loop closed since the check: stopping, so not acknowledged
            putting.close()
            return
        while True:
            try:
                put.result(timeout=0.2)
                break
            except TimeoutError:
                if self._closing.is_set():
                    put.cancel()
                    return
            except concurrent.futures.CancelledError:
                return
        waited = time.monotonic() - started
        if waited >= _PAUSE_LOGGED_S:
            log.info(
                "mqtt ingest read paused camera_id=%s waited_s=%.1f queue=%d",
                item.camera_id or "-",
                waited,
                self._queue.maxsize,
            )

    def _call(self, fn: Any, *args: Any) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(fn, *args)

    # --- event loop ------------------------------------------------------------------------
    async def _handle(self, item: _Inbound) -> None:
        if item.refusal is not None:
            reason, detail = item.refusal
            await self._refuse(item.topic, item.camera_id, reason, detail, item.size)
            return
        assert item.camera_id is not None  # set whenever there is no refusal
        try:
            await self.ingestor.ingest_bytes(
                item.camera_id, item.data, captured_at=None, original_name=_shown(item.topic), source="mqtt"
            )
        except InvalidImage as bad:
            await self._refuse(item.topic, item.camera_id, bad.reason, bad.detail, item.size)
        except UnknownCamera:
            await self._refuse(item.topic, None, "unknown_camera", f"no camera {item.camera_id!r}", item.size)
        except CameraDisabled:
            await self._refuse(
                item.topic, item.camera_id, "camera_disabled", "detection is off for this camera", item.size
            )

    async def _refuse(self, topic: str, camera_id: str | None, reason: str, detail: str, size: int) -> None:
        await quarantine.record(
            self.ingestor.pool,
            source="mqtt",
            camera_id=camera_id,
            original_path=_shown(topic),
            stored_path=None,
            reason=reason,
            detail=detail,
            size_bytes=size,
        )
