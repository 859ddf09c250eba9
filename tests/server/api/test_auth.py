"""Every route but liveness needs a valid, unrevoked API key; failures are rate limited."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
from collections.abc import Callable

import aiohttp

from bench.roundtrips import RoundTrips
from inference_server.api.app import build_app  # noqa: F401  (registers every route)
from inference_server.api.auth import USE_MARKS
from inference_server.api.registry import API
from inference_server.config import Settings
from inference_server.detection.ultralytics_backend import UltralyticsDetector

from ..conftest import running

SAMPLE = {
    "camera_id": "front_door",
    "event_id": "00000000-0000-0000-0000-000000000000",
    "job_id": "1",
    "person_id": "1",
    "n": "0",
}


def _url(base: str, path: str) -> str:
    return base + API.prefix + re.sub(r"{(\w+)}", lambda m: SAMPLE[m.group(1)], path)


async def test_every_route_except_liveness_refuses_missing_and_wrong_keys(
    make_settings: Callable[..., Settings], pose_detector: UltralyticsDetector
) -> None:
    open_routes = {(r.method, r.path) for r in API.routes if not r.auth}
    assert open_routes == {("GET", "/health/live"), ("GET", "/openapi.json")}
    settings = make_settings(auth_failures_per_minute=1000)
    async with running(settings, pose_detector) as server, aiohttp.ClientSession() as http:
        checked = 0
        for route in API.routes:
            if not route.auth:
                continue
            for headers in ({}, {"Authorization": "Bearer hsi_000000000000_" + "A" * 43}, {"Authorization": "Basic x"}):
                async with http.request(route.method, _url(server.api_url, route.path), headers=headers) as resp:
                    assert resp.status == 401, (route.method, route.path, headers)
                    assert (await resp.json())["error"]["code"] == "unauthorized"
            checked += 1
        assert checked == len(API.routes) - 2
        async with http.get(server.api_url + "/api/v1/health/live") as resp:
            assert resp.status == 200


async def test_revoked_key_is_refused_and_only_a_salted_hash_is_stored(
    make_settings: Callable[..., Settings], pose_detector: UltralyticsDetector
) -> None:
    from inference_server.store import api_keys

    async with running(make_settings(), pose_detector) as server, aiohttp.ClientSession() as http:
        key = await api_keys.create(server.pool, "ha")
        other = await api_keys.create(server.pool, "grafana")
        url = server.api_url + "/api/v1/events"
        async with http.get(url, headers={"Authorization": f"Bearer {key}"}) as resp:
            assert resp.status == 200
        row = await server.pool.fetchrow("SELECT salt, hash FROM api_keys WHERE name = 'ha'")
        stored = bytes(row["salt"]) + bytes(row["hash"])
        secret = key.split("_", 2)[2]  # hsi_<id>_<secret>: the secret may hold "_" itself, even first
        assert key.encode() not in stored and secret.encode() not in stored
        assert len(row["hash"]) == 32 and len(row["salt"]) == 16
        # Same secret shape, different salt: two keys never share a hash.
        assert row["hash"] != await server.pool.fetchval("SELECT hash FROM api_keys WHERE name = 'grafana'")

        assert await api_keys.revoke(server.pool, "ha")
        async with http.get(url, headers={"Authorization": f"Bearer {key}"}) as resp:
            assert resp.status == 401
        async with http.get(url, headers={"Authorization": f"Bearer {other}"}) as resp:
            assert resp.status == 200
        # A tampered secret for a real key id fails too.
        tampered = other[:-1] + ("A" if other[-1] != "A" else "B")
        async with http.get(url, headers={"Authorization": f"Bearer {tampered}"}) as resp:
            assert resp.status == 401


async def test_only_a_verified_key_is_marked_used_and_at_most_once_a_minute(
    make_settings: Callable[..., Settings], pose_detector: UltralyticsDetector
) -> None:
    """A verified key is marked used, at most once a minute; a key this process marked less than a
    minute ago costs its requests no statement for that (a client sending a picture a second paid
    a round trip a request for a mark written once a minute)."""
    from inference_server.store import api_keys

    async with running(make_settings(), pose_detector) as server, aiohttp.ClientSession() as http:
        key = await api_keys.create(server.pool, "ha")
        url = server.api_url + "/api/v1/events"
        used = "SELECT last_used_at FROM api_keys WHERE name = 'ha'"
        tampered = key[:-1] + ("A" if key[-1] != "A" else "B")
        async with http.get(url, headers={"Authorization": f"Bearer {tampered}"}) as resp:
            assert resp.status == 401
        assert await server.pool.fetchval(used) is None
        async with http.get(url, headers={"Authorization": f"Bearer {key}"}) as resp:
            assert resp.status == 200
        first = await server.pool.fetchval(used)
        assert first is not None
        with RoundTrips() as trips:
            for _ in range(3):
                async with http.get(url, headers={"Authorization": f"Bearer {key}"}) as resp:
                    assert resp.status == 200
        assert not [text for text in trips.by_statement if text.startswith("UPDATE api_keys")], trips.by_statement
        assert await server.pool.fetchval(used) == first
        # Two minutes later, for the database and for this process.
        await server.pool.execute("UPDATE api_keys SET last_used_at = now() - interval '2 minutes'")
        assert server._runner is not None
        server._runner.app[USE_MARKS].clock = lambda: time.monotonic() + 120
        async with http.get(url, headers={"Authorization": f"Bearer {key}"}) as resp:
            assert resp.status == 200
        assert await server.pool.fetchval(used) > first


async def test_repeated_failures_are_rate_limited(
    make_settings: Callable[..., Settings], pose_detector: UltralyticsDetector
) -> None:
    async with (
        running(make_settings(auth_failures_per_minute=3), pose_detector) as server,
        aiohttp.ClientSession() as http,
    ):
        url = server.api_url + "/api/v1/events"
        statuses = []
        for _ in range(5):
            async with http.get(url, headers={"Authorization": "Bearer wrong"}) as resp:
                statuses.append(resp.status)
        assert statuses == [401, 401, 401, 429, 429]
        async with http.get(url) as resp:
            body = await resp.json()
            assert resp.status == 429 and body["error"]["code"] == "too_many_failures"
            # Issue 15, item 10: the wait is said in a standard header (the HA config flow shows it)
            # and in the message, the same whole number of seconds.
            wait = int(resp.headers["Retry-After"])
            assert 1 <= wait <= 60
            assert body["error"]["message"] == f"too many failed authentications; retry in {wait} s"


async def test_concurrent_wrong_keys_get_exactly_the_limit_of_401_and_a_right_key_is_still_served(
    make_settings: Callable[..., Settings], pose_detector: UltralyticsDetector
) -> None:
    """60 wrong keys at once from one address: 10 are judged (401), 50 refused (429); the count
    cannot be overrun by requests checked side by side. Then Home Assistant, behind the same
    address (NAT, proxy), is still served with its right key."""
    from inference_server.store import api_keys

    async with (
        running(make_settings(auth_failures_per_minute=10), pose_detector) as server,
        aiohttp.ClientSession() as http,
    ):
        key = await api_keys.create(server.pool, "ha")
        url = server.api_url + "/api/v1/events"

        async def status(authorization: str | None) -> int:
            headers = {"Authorization": authorization} if authorization is not None else {}
            async with http.get(url, headers=headers) as resp:
                return resp.status

        # Well-formed keys with made-up key ids: each is looked up in the database (an await
        # between the limiter's check and its count was what let 19 through).
        wrong = [f"Bearer hsi_{i:012x}_" + "A" * 43 for i in range(60)]
        statuses = await asyncio.gather(*(status(w) for w in wrong))
        assert (statuses.count(401), statuses.count(429)) == (10, 50)

        assert await status(f"Bearer {key}") == 200
        tampered = key[:-1] + ("A" if key[-1] != "A" else "B")
        assert await status(f"Bearer {tampered}") == 429  # the right key id is no way round the limit
        assert await status(None) == 429
        assert await status(wrong[0]) == 429
        assert await status(f"Bearer {key}") == 200
        assert await api_keys.revoke(server.pool, "ha")
        assert await status(f"Bearer {key}") == 429  # revoked: checked, refused


async def test_a_right_key_gives_back_its_slot_so_it_never_counts_as_a_failure(
    make_settings: Callable[..., Settings], pose_detector: UltralyticsDetector
) -> None:
    from inference_server.store import api_keys

    async with (
        running(make_settings(auth_failures_per_minute=3), pose_detector) as server,
        aiohttp.ClientSession() as http,
    ):
        key = await api_keys.create(server.pool, "ha")
        url = server.api_url + "/api/v1/events"
        statuses = []
        for authorization in [f"Bearer {key}"] * 20 + ["Bearer wrong"] * 4:
            async with http.get(url, headers={"Authorization": authorization}) as resp:
                statuses.append(resp.status)
        assert statuses == [200] * 20 + [401, 401, 401, 429]


async def test_trusted_ingress_address_needs_no_key_and_is_audited_as_ingress(
    make_settings: Callable[..., Settings], pose_detector: UltralyticsDetector
) -> None:
    settings = make_settings(trusted_proxies=["127.0.0.1"])
    async with running(settings, pose_detector) as server, aiohttp.ClientSession() as http:
        async with http.post(server.api_url + "/api/v1/cameras", json={"id": "gate", "name": "Gate"}) as resp:
            assert resp.status == 201
        row = await server.pool.fetchrow("SELECT who, action, target_id, status FROM audit_log")
        assert dict(row) == {"who": "ingress", "action": "POST /cameras", "target_id": None, "status": 201}


def test_apikey_cli_prints_the_key_once_and_revokes_it(database_url: str) -> None:
    env = {"DATABASE_URL": database_url, "HSI_OPTIONS_FILE": "/nonexistent.json", "PATH": "/usr/bin:/bin"}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "inference_server", "apikey", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    created = cli("create", "home-assistant")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert re.fullmatch(r"hsi_[0-9a-f]{12}_[A-Za-z0-9_-]{43}", key)
    assert "shown only this once" in created.stderr
    assert cli("create", "home-assistant").returncode == 1  # one active key per name
    listed = cli("list")
    assert "home-assistant" in listed.stdout and "active" in listed.stdout
    assert key not in listed.stdout  # the secret is never shown again
    assert cli("revoke", "home-assistant").returncode == 0
    assert "revoked" in cli("list").stdout
    assert cli("revoke", "home-assistant").returncode == 1
