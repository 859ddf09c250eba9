"""The MQTT publisher on the event loop: paho driven by its socket's readiness, no thread of its
own (it had one, waking 1-3 times a second and handing each publish and PUBACK across), through
a broker restart and a quiet connection longer than its keep-alive."""

from __future__ import annotations

import asyncio
import getpass
import logging
import subprocess
import threading
import uuid
from pathlib import Path

import pytest

from inference_server.comms import mqtt as mqtt_module
from inference_server.comms.mqtt import BrokerAddress, MqttPublisher
from inference_server.comms.topics import Topics
from tests.support.certs import self_signed
from tests.support.mosquitto import RestartableMosquitto, start_mosquitto
from tests.support.mqtt import Subscriber
from tests.support.net import free_port
from tests.support.waiting import wait_until


def _threads_of(client_id: str) -> list[str]:
    """paho names its network thread after the client (``paho-mqtt-client-<id>``)."""
    return [t.name for t in threading.enumerate() if client_id in t.name]


async def test_the_publisher_has_no_thread_and_gets_every_message_acknowledged_through_a_broker_restart(
    forgetful_broker: RestartableMosquitto,
) -> None:
    broker = forgetful_broker
    subscriber = await Subscriber(broker.url, "hsi/#").ready(timeout=20)
    client_id = f"pub-test-{uuid.uuid4().hex[:8]}"
    publisher = MqttPublisher(BrokerAddress.parse(broker.url), Topics("hsi"), client_id, [("hsi/hello", b"1")])
    await publisher.start()
    try:
        assert publisher.connected.is_set()
        assert _threads_of(client_id) == [], "the publisher started a thread of its own"
        # Fifty at once: each future resolves on its own PUBACK, read on the event loop.
        await asyncio.wait_for(
            asyncio.gather(*(publisher.send(f"hsi/test/{i}", str(i).encode()) for i in range(50))), 10
        )
        got = await subscriber.wait_for(lambda m: m.topic == "hsi/test/49", timeout=10)
        assert got.payload == b"49"
        numbers = [int(m.topic.rsplit("/", 1)[1]) for m in subscriber.seen if m.topic.startswith("hsi/test/")]
        assert numbers == list(range(50))
        assert {m.topic for m in subscriber.seen} >= {"hsi/availability", "hsi/hello"}

        subscriber.close()
        broker.stop()
        await wait_until(lambda: not publisher.connected.is_set(), timeout=10)
        with pytest.raises(mqtt_module.PublishError):
            await publisher.publish("hsi/test/while-down", b"x", timeout=0.5)
        broker.start()
        await asyncio.wait_for(publisher.connected.wait(), 15)
        # The broker forgot everything: the online messages are sent again on reconnection.
        again = await Subscriber(broker.url, "hsi/#").ready(timeout=20)
        try:
            await publisher.publish("hsi/test/after", b"back", retain=True)
            await again.wait_for(lambda m: m.topic == "hsi/test/after", timeout=10)
            await again.wait_for(lambda m: m.topic == "hsi/hello" and m.retain, timeout=10)
            assert _threads_of(client_id) == []
        finally:
            again.close()
    finally:
        await publisher.stop()
    assert publisher._client.socket() is None
    watcher = await Subscriber(broker.url, "hsi/availability").ready(timeout=20)
    try:
        offline = await watcher.wait_for(lambda m: m.topic == "hsi/availability", timeout=10)
        assert offline.payload == b"offline"
    finally:
        watcher.close()


async def test_a_connection_quiet_for_longer_than_its_keep_alive_stays_up(
    forgetful_broker: RestartableMosquitto, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Nothing published for four keep-alives: the looks on the beat send PINGREQs, so the
    broker (which drops a client silent for 1.5 keep-alives) keeps the connection."""
    monkeypatch.setattr(mqtt_module, "KEEPALIVE_S", 1)
    monkeypatch.setattr(mqtt_module, "_LOOK_AFTER_S", 0.25)
    publisher = MqttPublisher(
        BrokerAddress.parse(forgetful_broker.url), Topics("hsi"), f"pub-quiet-{uuid.uuid4().hex[:8]}", []
    )
    await publisher.start()
    try:
        with caplog.at_level(logging.WARNING, logger="inference_server.comms.mqtt"):
            await asyncio.sleep(4.0)
        assert not [r for r in caplog.records if "disconnected" in r.getMessage()]
        await publisher.publish("hsi/test/still", b"up", timeout=2.0)
    finally:
        await publisher.stop()


def _tls_broker(folder: Path) -> tuple[subprocess.Popen[bytes], int, Path]:
    """Mosquitto with a TLS listener on a certificate of its own for 127.0.0.1 (returned: the
    client trusts it as its CA through ``SSL_CERT_FILE``)."""
    cert, key = self_signed("hsi-test-broker", ip="127.0.0.1")
    cert_path, key_path = folder / "broker.crt", folder / "broker.key"
    cert_path.write_bytes(cert)
    key_path.write_bytes(key)
    port = free_port()
    conf = folder / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nuser {getpass.getuser()}\n"
        f"certfile {cert_path}\nkeyfile {key_path}\n"
    )
    return start_mosquitto(conf, port), port, cert_path


async def test_over_tls_a_burst_is_acknowledged_and_a_quiet_connection_stays_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """mqtts://: the handshake on the connect's thread, then the TLS socket read and written on
    the event loop: bursts acknowledged, a quiet connection kept up by its pings. (A broker that
    puts several packets in one TLS record leaves the later ones in the socket's buffer, which
    ``_read`` drains; Mosquitto writes a record a packet, so this test cannot show that case.)"""
    broker, port, ca = _tls_broker(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(ca))
    monkeypatch.setattr(mqtt_module, "KEEPALIVE_S", 1)
    monkeypatch.setattr(mqtt_module, "_LOOK_AFTER_S", 0.25)
    publisher = MqttPublisher(
        BrokerAddress.parse(f"mqtts://127.0.0.1:{port}"), Topics("hsi"), f"pub-tls-{uuid.uuid4().hex[:8]}", []
    )
    try:
        await publisher.start()
        assert publisher.connected.is_set()
        with caplog.at_level(logging.WARNING, logger="inference_server.comms.mqtt"):
            for _ in range(3):
                sent = [publisher.send(f"hsi/test/{i}", bytes(100)) for i in range(200)]
                await asyncio.wait_for(asyncio.gather(*sent), 10)
                await asyncio.sleep(1.5)
        assert not [r for r in caplog.records if "disconnected" in r.getMessage()]
        await publisher.publish("hsi/test/still", b"up", timeout=2.0)
    finally:
        await publisher.stop()
        broker.terminate()
        broker.wait(5)


async def test_a_read_that_raises_ends_only_that_connection(
    forgetful_broker: RestartableMosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    """A packet paho cannot take, or a callback's bug, raises out of ``loop_read`` on the event
    loop: the connection is closed and made again, and the next message goes through (on paho's
    own thread such an exception ended the thread, and with it the publisher, for good)."""
    publisher = MqttPublisher(
        BrokerAddress.parse(forgetful_broker.url), Topics("hsi"), f"pub-raise-{uuid.uuid4().hex[:8]}", []
    )
    await publisher.start()
    try:
        # The "online" messages sent on connect acknowledged first: the raise is to hit the test's
        # own message's PUBACK. (Under load it hit theirs: the test's message, still in flight,
        # was sent again on the reconnect and acknowledged, and its publish did not fail.)
        await wait_until(lambda: not publisher._untracked, timeout=10)
        on_publish = publisher._client.on_publish
        raised: list[int] = []

        def once(*args: object) -> None:
            if not raised:
                raised.append(1)
                raise RuntimeError("a callback's bug")
            on_publish(*args)  # type: ignore[misc]

        publisher._client.on_publish = once
        with pytest.raises(mqtt_module.PublishError):
            await publisher.publish("hsi/test/lost", b"x", timeout=1.0)
        assert any("read failed; reconnecting" in r.getMessage() for r in caplog.records)
        await wait_until(lambda: publisher.connected.is_set(), timeout=10)
        await publisher.publish("hsi/test/after", b"y", timeout=5.0)
    finally:
        await publisher.stop()


async def test_a_connect_that_raises_something_unexpected_is_tried_again(
    forgetful_broker: RestartableMosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    """Whatever the connect raises (not only a refused or unreachable broker's OSError), the
    task that connects goes on: the client is not left offline for good."""
    publisher = MqttPublisher(
        BrokerAddress.parse(forgetful_broker.url), Topics("hsi"), f"pub-odd-{uuid.uuid4().hex[:8]}", []
    )
    reconnect = publisher._client.reconnect
    calls: list[int] = []

    def odd_first() -> object:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("something paho did not expect")
        return reconnect()

    publisher._client.reconnect = odd_first  # type: ignore[method-assign]
    try:
        await publisher.start(timeout=10.0)
        assert publisher.connected.is_set()
        assert len(calls) == 2
        assert any("connect failed" in r.getMessage() and r.exc_info for r in caplog.records)
        await publisher.publish("hsi/test/after", b"y", timeout=5.0)
    finally:
        await publisher.stop()
