"""MQTT publisher on paho-mqtt 2.x: LWT availability, retained discovery, awaited PUBACKs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlparse

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from inference_server.comms.topics import Topics
from inference_server.event_loop import until_next, wait_any

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


#: The keep-alive of the server's clients, and how often their connection is looked after
#: (a PINGREQ due, a ping unanswered): on the server's 10 s beat, a third of the keep-alive.
KEEPALIVE_S = 30
_LOOK_AFTER_S = 10.0

#: paho's callbacks (version 2) as the driver passes them on.
OnConnect = Callable[[mqtt.Client, Any, Any, Any, Any], None]
OnDisconnect = Callable[[mqtt.Client, Any, Any, Any, Any], None]


class PahoOnLoop:
    """Drives a paho client from the running event loop instead of a network thread of its own
    (docs/decisions.md, "The MQTT clients on the event loop"): its socket's readiness calls
    ``loop_read`` and ``loop_write``, a look on the server's 10 s beat calls ``loop_misc``
    (keep-alive), and a task connects and reconnects a second after a lost connection, the
    delay doubling to 30 s while connecting fails or the broker refuses. Only the blocking connect
    (name lookup, TCP, TLS handshake) runs on a thread, and a reconnect starts only after the loop
    saw the old socket close. Every paho callback but the socket's opening runs on the event
    loop; ``on_connect`` and ``on_disconnect`` are the owner's, called after the driver's own
    bookkeeping."""

    def __init__(
        self,
        client: mqtt.Client,
        address: BrokerAddress,
        name: str,
        on_connect: OnConnect,
        on_disconnect: OnDisconnect,
    ) -> None:
        self.client = client
        self.address = address
        self.name = name
        self._on_connect_then = on_connect
        self._on_disconnect_then = on_disconnect
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        #: Set when the connection is lost or closed (the keeper reconnects).
        self._lost = asyncio.Event()
        #: Set while no socket is open (``close`` waits for it after DISCONNECT).
        self._closed = asyncio.Event()
        self._closed.set()
        self.closing = False
        #: Set while reading, clear while paused (a paused client reconnects only once it reads again).
        self._reading = asyncio.Event()
        self._reading.set()
        self._keeper: asyncio.Task[None] | None = None
        #: The connect running on a thread, if any; whether the broker accepted the last one.
        self._connecting: asyncio.Future[Any] | None = None
        self._accepted = False
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_socket_register_write
        client.on_socket_unregister_write = self._on_socket_unregister_write
        client.connect_async(address.host, address.port, keepalive=KEEPALIVE_S)

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._keeper = asyncio.create_task(self._keep_connected(), name=self.name)

    async def close(self) -> None:
        """Stop reconnecting; send DISCONNECT on an open connection and close the socket."""
        self.closing = True
        if self._keeper is not None:
            self._keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keeper
        if self._connecting is not None:
            # A connect in flight on its thread ends within paho's connect timeout (5 s).
            try:
                await self._connecting
            except Exception as err:
                log.info("%s connect in flight at stop failed: %r", self.name, err)
        if self.client.socket() is None:
            return
        # DISCONNECT goes out through the socket's writer; paho closes the socket after it.
        self.client.disconnect()
        try:
            await asyncio.wait_for(self._closed.wait(), 2.0)
        except TimeoutError:
            sock = self.client.socket()
            if sock is not None:
                log.warning("%s disconnect not written within 2 s; closing the socket", self.name)
                self._unwatch(sock)
                sock.close()

    def pause_reading(self) -> None:
        """Read nothing more from the broker (TCP holds it back) until ``resume_reading``."""
        sock = self.client.socket()
        if self._reading.is_set() and sock is not None and self._loop is not None:
            self._loop.remove_reader(sock)
        self._reading.clear()

    def resume_reading(self) -> None:
        if self._reading.is_set():
            return
        self._reading.set()
        sock = self.client.socket()
        if sock is not None and self._loop is not None:
            self._loop.add_reader(sock, self._read)
            self._loop.call_soon(self._read)  # what a TLS socket holds decrypted already

    async def _keep_connected(self) -> None:
        delay, failures = 1.0, 0
        while not self.closing:
            await self._reading.wait()
            self._lost.clear()
            self._accepted = False
            self._connecting = asyncio.ensure_future(asyncio.to_thread(self.client.reconnect))
            try:
                await asyncio.shield(self._connecting)
            except Exception as err:
                # Refused, unreachable, a name not found, TLS failed (OSError), or anything else
                # paho raises: never the end of this task (the client would stay offline).
                failures += 1
                if failures == 1 or failures % 10 == 0:
                    log.warning(
                        "%s connect failed host=%s port=%s failures=%d retry_in_s=%.0f error=%r",
                        self.name,
                        self.address.host,
                        self.address.port,
                        failures,
                        delay,
                        err,
                        exc_info=not isinstance(err, OSError),
                    )
            else:
                await self._look_after()
                if self._accepted:
                    delay, failures = 1.0, 0
            finally:
                self._connecting = None
            await asyncio.sleep(delay)
            delay = min(30.0, delay * 2)

    async def _look_after(self) -> None:
        """Until the connection is lost: paho's keep-alive (a PINGREQ after 30 s without traffic,
        the connection closed when it goes unanswered) on the server's 10 s beat."""
        while not self._lost.is_set():
            await wait_any(self._lost, timeout=until_next(_LOOK_AFTER_S))
            if not self._lost.is_set():
                self.client.loop_misc()

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if not reason.is_failure:
            self._accepted = True
        self._on_connect_then(client, userdata, flags, reason, props)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self._lost.set()
        self._on_disconnect_then(client, userdata, flags, reason, props)

    # --- the socket (on the event loop, but its opening by a connect) -----------------------------
    def _on_loop(self, call: Callable[[], None]) -> None:
        if threading.get_ident() == self._loop_thread:
            call()
        elif self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(call)

    def _watch(self, sock: Any) -> None:
        assert self._loop is not None
        self._closed.clear()
        if self._reading.is_set():
            self._loop.add_reader(sock, self._read)

    def _read(self) -> None:
        """The socket is readable. paho reads at most as many packets as it has messages in
        flight (at least one): what a TLS socket already decrypted into its buffer makes the
        socket no more readable, so it is read here until the buffer is empty (paho's own
        loop checks ``pending()`` so; a PINGRESP behind a PUBACK would otherwise wait there)."""
        if not self._reading.is_set():
            return
        try:
            self.client.loop_read()
            sock = self.client.socket()
            while self._reading.is_set() and isinstance(sock, ssl.SSLSocket) and sock.pending() > 0:
                if self.client.loop_read() != mqtt.MQTT_ERR_SUCCESS:
                    return
                sock = self.client.socket()
        except Exception:
            # A packet paho could not take (or a callback's bug): this connection ends, the
            # keeper connects again; the loop and the other clients go on.
            log.exception("%s read failed; reconnecting", self.name)
            self.client.disconnect()

    def _unwatch(self, sock: Any) -> None:
        assert self._loop is not None
        self._loop.remove_reader(sock)
        self._loop.remove_writer(sock)
        self._closed.set()

    def _write_when_ready(self, sock: Any) -> None:
        assert self._loop is not None
        self._loop.add_writer(sock, self.client.loop_write)

    def _written(self, sock: Any) -> None:
        assert self._loop is not None
        self._loop.remove_writer(sock)

    def _on_socket_open(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self._on_loop(lambda: self._watch(sock))

    def _on_socket_close(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        # paho closes the socket after this returns: on the event loop, before it is closed.
        self._on_loop(lambda: self._unwatch(sock))

    def _on_socket_register_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self._on_loop(lambda: self._write_when_ready(sock))

    def _on_socket_unregister_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self._on_loop(lambda: self._written(sock))


class MqttPublisher:
    """Keeps one connection; ``publish`` returns once the broker acknowledged (QoS 1). paho runs
    on the event loop (``PahoOnLoop``): a PUBACK is read there, after ``send`` returned."""

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
        client.on_publish = self._on_publish
        self._client = client
        self._driver = PahoOnLoop(client, address, "mqtt publisher", self._on_connect, self._on_disconnect)

    async def start(self, timeout: float = 10.0) -> None:
        self._loop = asyncio.get_running_loop()
        self._driver.start()
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
        await self._driver.close()

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            log.error("mqtt connect refused reason=%s", reason)
            return
        log.info("mqtt connected host=%s port=%s", self.address.host, self.address.port)
        # Fire-and-forget (not awaited by anyone): remember their ids so their PUBACKs are ignored.
        for topic, payload in [(self.topics.availability, b"online"), *self._online_messages]:
            info = client.publish(topic, payload, qos=1, retain=True)
            self._untracked.add(info.mid)
        self.connected.set()
        if self._on_connected is not None:
            self._on_connected()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        log.warning("mqtt disconnected reason=%s", reason)
        self.connected.clear()

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        if mid in self._untracked:
            self._untracked.discard(mid)
            return
        future = self._pending.pop(mid, None)
        if future is not None and not future.done():
            future.set_result(None)

    def send(self, topic: str, payload: bytes, *, retain: bool = False, qos: int = 1) -> asyncio.Future[None]:
        """Hand a message to the client; the future resolves on the broker's acknowledgement
        (the PUBACK is read on this loop, after this returns)."""
        assert self._loop is not None, "start() first"
        future: asyncio.Future[None] = self._loop.create_future()
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            future.set_exception(PublishError(f"publish to {topic} failed: {mqtt.error_string(info.rc)}"))
        elif qos == 0:
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
