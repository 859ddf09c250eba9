"""MQTT ingest: edge nodes publish an image as the payload of ``<prefix>/ingest/<camera_id>``.

A separate paho client (client id ``<server id>-ingest``) subscribes with QoS 1, so the
publisher's PUBACK bookkeeping (comms/mqtt.py) is untouched by inbound traffic.

paho runs on the event loop (``comms.mqtt.PahoOnLoop``, no network thread). A message read only
has the topic's last level checked against the camera id grammar and the payload's length, and
goes to the ingest's queue; nothing is decoded there. When ``queue_size`` messages wait, the
client *stops reading the socket*: TCP holds the broker back, and the broker keeps the rest (in
flight, then queued for the session). Nothing is refused for lack of room, so no message the
broker holds is lost (docs/decisions.md, "MQTT ingest: back-pressure"). A pause lasts as long
as the event loop takes to store one image; only while the database is down can it outlast the
keepalive, and then the connection ends (a ping unanswered), the client reconnects once it reads
again, and the broker delivers the unacknowledged messages again (recognised by their hash).

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
import logging
import re
import time
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from inference_server.comms.mqtt import BrokerAddress, PahoOnLoop
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
_PAUSE_LOGGED_S = 1.0  # a read pause at least this long is logged (it shows a slow database)


@dataclass(frozen=True, slots=True)
class _Inbound:
    topic: str
    camera_id: str | None  # None: the topic's last level is not a camera id
    data: bytes
    size: int
    mid: int
    qos: int
    refusal: tuple[str, str] | None = None  # (reason, detail) decided as the message is read


def _shown(text: str) -> str:
    """Printable, and at most ``_SHOWN`` characters (with the full length when cut)."""
    text = printable(text)
    return text if len(text) <= _SHOWN else f"{text[:_SHOWN]}… ({len(text)} characters)"


def _inbound(message: mqtt.MQTTMessage, max_bytes: int) -> _Inbound:
    """What is decided about a message as it is read: a refusal (bytes dropped) or an image to check."""
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
        # Dropped here, as it is read: the bytes never reach the queue or a decoder.
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
        #: Messages read and not yet handled; reading pauses while ``queue_size`` wait (a read
        #: may add the few more packets it had already taken off the socket).
        self._queue: asyncio.Queue[_Inbound] = asyncio.Queue()
        self.queue_size = max(1, queue_size)
        self._paused_at: float | None = None
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
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        self._client = client
        self._driver = PahoOnLoop(client, address, "mqtt ingest", self._on_connect, self._on_disconnect)

    async def run(self, stop: asyncio.Event) -> None:
        """Connect, subscribe (again after every reconnect) and ingest until ``stop`` is set."""
        self._driver.start()
        stopper = asyncio.create_task(stop.wait())
        try:
            while not stop.is_set():
                getter = asyncio.create_task(self._queue.get())
                await asyncio.wait({getter, stopper}, return_when=asyncio.FIRST_COMPLETED)
                if not getter.done():
                    getter.cancel()
                    break
                item = getter.result()
                self._read_again_if_room()
                if await self._handle_until_stored(item, stop):
                    self._ack(item)
        finally:
            # What was read and not handled is not acknowledged: the broker delivers it again to
            # the next session.
            stopper.cancel()
            await self._driver.close()

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

    # --- paho's callbacks (on the event loop) --------------------------------------------
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
        self.subscribed.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if not self._driver.closing:
            log.warning("mqtt ingest disconnected reason=%s", reason)
        self.subscribed.clear()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        self._queue.put_nowait(_inbound(message, self.max_bytes))
        if self._queue.qsize() >= self.queue_size and self._paused_at is None:
            # Full: paho reads nothing more, TCP holds the broker back, the broker keeps the rest.
            self._driver.pause_reading()
            self._paused_at = time.monotonic()

    def _read_again_if_room(self) -> None:
        if self._paused_at is None or self._queue.qsize() >= self.queue_size:
            return
        waited = time.monotonic() - self._paused_at
        self._paused_at = None
        self._driver.resume_reading()
        if waited >= _PAUSE_LOGGED_S:
            log.info("mqtt ingest read paused waited_s=%.1f queue=%d", waited, self.queue_size)

    # --- storing ---------------------------------------------------------------------------
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
