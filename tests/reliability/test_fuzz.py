"""Property-based fuzzing (hypothesis) of what strangers control: file names, upload bodies,
MQTT ingest payloads, the household context body.

Bounded: a few dozen examples each, deadlines off (the server shares 2 CPUs with the suite),
all against one real server (role ``api``, real PostgreSQL, real mosquitto) running in a
thread of its own so that hypothesis's synchronous test functions can call it. The whole REST
API is additionally fuzzed from its OpenAPI document by schemathesis in
``tests/server/api/test_schemathesis.py``.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import asyncpg
import paho.mqtt.client as mqtt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion

from inference_server import demo_assets, schemas
from inference_server.config import Settings
from inference_server.ingest.filenames import timestamp_from_name
from inference_server.server import Server
from inference_server.store import api_keys, cameras
from tests.server.conftest import make_settings  # noqa: F401
from tests.server.ingest.conftest import with_comment

ZIDANE = demo_assets.image("zidane.jpg").read_bytes()
BOUNDED = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
TZ = ZoneInfo("Europe/Berlin")


# --- file names ------------------------------------------------------------------------------
@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_any_file_name_gives_a_time_in_the_camera_zone_or_none(name: str) -> None:
    found = timestamp_from_name(name, TZ)
    assert found is None or (found.tzinfo is TZ and 1900 <= found.year <= 2099)


@settings(max_examples=200, deadline=None)
@given(
    when=st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2099, 12, 31, 23, 59, 59)),
    layout=st.sampled_from(["%Y%m%d%H%M%S", "%Y%m%d-%H%M%S", "%Y-%m-%dT%H-%M-%S", "%Y%m%d_%H%M%S"]),
    before=st.text(st.characters(categories=["L"]), max_size=30),
    after=st.text(st.characters(categories=["L"]), max_size=30),
)
def test_a_camera_time_stamp_anywhere_in_a_name_is_read_back(
    when: datetime, layout: str, before: str, after: str
) -> None:
    name = f"{before}{when.strftime(layout)}{after}.jpg"
    assert timestamp_from_name(name, TZ) == when.replace(microsecond=0, tzinfo=TZ)


# --- a live server in its own thread --------------------------------------------------------------
@dataclass
class Live:
    server: Server
    loop: asyncio.AbstractEventLoop
    key: str

    def call(self, coro: Any, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def request(self, method: str, path: str, body: bytes, content_type: str) -> tuple[int, Any]:
        url = urlsplit(self.server.api_url)
        conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=30)
        try:
            conn.request(method, path, body, {"Authorization": f"Bearer {self.key}", "Content-Type": content_type})
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, json.loads(data) if data else None
        finally:
            conn.close()


@pytest.fixture
def live(make_settings: Callable[..., Settings], mosquitto_url: str) -> Iterator[Live]:  # noqa: F811
    settings_ = make_settings(mqtt_url=mosquitto_url, mqtt_prefix=f"fz{uuid.uuid4().hex[:6]}", role="api")
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="fuzz-server", daemon=True)
    thread.start()
    server = Server(settings_)

    async def start() -> str:
        await server.start()
        assert server.mqtt_ingest is not None
        await asyncio.wait_for(server.mqtt_ingest.subscribed.wait(), 10)
        await cameras.create(server.pool, schemas.CameraCreate(id="porch", name="Porch"))
        return await api_keys.create(server.pool, "fuzz")

    key = asyncio.run_coroutine_threadsafe(start(), loop).result(60)
    try:
        yield Live(server, loop, key)
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def _mutated_jpeg(draw: st.DrawFn) -> bytes:
    data = bytearray(with_comment(ZIDANE, uuid.uuid4().hex))  # unique bytes: never a duplicate
    for _ in range(draw(st.integers(0, 8))):
        pos = draw(st.integers(0, len(data) - 1))
        data[pos] = draw(st.integers(0, 255))
    cut = draw(st.none() | st.integers(2, len(data) - 1))  # an upload that stopped part way
    return bytes(data if cut is None else data[:cut])


@st.composite
def payloads(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["random", "jpeg-prefixed", "mutated-jpeg"]))
    if kind == "random":
        return draw(st.binary(max_size=2048))
    if kind == "jpeg-prefixed":
        return b"\xff\xd8\xff" + draw(st.binary(max_size=2048))
    return _mutated_jpeg(draw)


REFUSALS = {
    400: {"corrupt_image", "empty_file", "truncated", "too_small", "bad_aspect_ratio"},
    413: {"too_large", "too_many_pixels"},
    415: {"not_an_image", "unsupported_format"},
}


def test_upload_handler_answers_every_body_with_202_or_a_clear_4xx(live: Live) -> None:
    seen: set[int] = set()

    @BOUNDED
    @given(body=payloads(), content_type=st.sampled_from(["image/jpeg", "image/png"]))
    def check(body: bytes, content_type: str) -> None:
        status, answer = live.request("POST", "/api/v1/cameras/porch/images", body, content_type)
        seen.add(status)
        if status == 202:
            assert answer["image_id"] > 0
        else:
            assert answer["error"]["code"] in REFUSALS.get(status, set()), (status, answer)

    check()
    assert {202, 400, 415} <= seen  # both accepted and refused bodies were exercised
    assert live.call(live.server.pool.fetchval("SELECT count(*) FROM quarantine")) == 0  # REST stores nothing


def test_mqtt_ingest_handles_every_payload_and_keeps_running(live: Live, mosquitto_url: str) -> None:
    address = urlsplit(mosquitto_url)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"fuzz-{uuid.uuid4().hex[:8]}")
    client.connect(address.hostname or "127.0.0.1", address.port or 1883)
    client.loop_start()
    topic = live.server.topics.ingest("porch")
    pool: asyncpg.Pool = live.server.pool

    def outcomes() -> int:
        # Every payload ends as exactly one image row (all are unique) or one quarantine row.
        return int(live.call(pool.fetchval("SELECT (SELECT count(*) FROM images) + (SELECT count(*) FROM quarantine)")))

    sent = [0]

    @settings(max_examples=15, deadline=None)
    @given(batch=st.lists(payloads(), min_size=1, max_size=5))
    def check(batch: list[bytes]) -> None:
        for payload in batch:
            client.publish(topic, payload, qos=1).wait_for_publish(10)
        sent[0] += len(batch)
        live.call(_until(lambda: outcomes_async(pool), sent[0]), timeout=60)

    try:
        check()
    finally:
        client.disconnect()
        client.loop_stop()
    assert sent[0] >= 15 and outcomes() == sent[0]
    reasons = live.call(pool.fetch("SELECT DISTINCT reason FROM quarantine"))
    assert {r["reason"] for r in reasons} <= set().union(*REFUSALS.values())


async def outcomes_async(pool: asyncpg.Pool) -> int:
    return int(await pool.fetchval("SELECT (SELECT count(*) FROM images) + (SELECT count(*) FROM quarantine)"))


async def _until(count: Callable[[], Any], expected: int, timeout: float = 50) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while (got := await count()) < expected:
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"{got} of {expected} MQTT payloads have an outcome")
        await asyncio.sleep(0.05)
    assert got == expected


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=50),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=20), inner, max_size=5),
    max_leaves=20,
)


@st.composite
def context_bodies(draw: st.DrawFn) -> Any:
    """Mostly near-valid context objects (each field right or wrong), sometimes any JSON at all."""
    if draw(st.booleans()):
        return draw(_json)
    fields = {
        "alarm_state": st.sampled_from(["armed_away", "disarmed", "unknown", "on fire"]) | _json,
        "people_home": st.none() | st.lists(st.text(max_size=30), max_size=60),
        "open_entries": st.lists(st.text(max_size=30), max_size=110),
        "sun": st.sampled_from(["above_horizon", "below_horizon", None, "eclipse"]),
        "notes": st.none() | st.text(max_size=1100),
        "extra": _json,
    }
    keys = draw(st.sets(st.sampled_from(sorted(fields))))
    return {k: draw(fields[k]) for k in keys}


def test_context_body_is_stored_when_valid_and_refused_with_400_or_422_otherwise(live: Live) -> None:
    @BOUNDED
    @given(body=context_bodies())
    def check(body: Any) -> None:
        status, answer = live.request("PUT", "/api/v1/context", json.dumps(body).encode(), "application/json")
        try:
            expected = schemas.HouseholdContext.model_validate(body)
            if "\\u0000" in json.dumps(body):
                raise ValueError("PostgreSQL text cannot hold NUL: the API refuses it (422)")
        except ValueError:
            assert status in (400, 422), (status, answer)
            return
        assert status == 200, (status, answer)
        _, stored = live.request("GET", "/api/v1/context", b"", "application/json")
        assert schemas.HouseholdContext.model_validate(stored["context"]) == expected

    check()
