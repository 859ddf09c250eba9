"""Bearer API keys, trusted ingress, rate-limited failures, and the audit of every write."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from collections import defaultdict, deque
from collections.abc import Callable

import asyncpg
from aiohttp import web

from inference_server.api.deps import CTX, PRINCIPAL, STILL_ACTIVE
from inference_server.api.errors import ApiError, Handler, error_response
from inference_server.api.registry import route_of
from inference_server.store import api_keys, audit
from inference_server.telemetry import metrics

log = logging.getLogger(__name__)

_WINDOW_S = 60.0
#: How long the set of active key ids is trusted before it is read again (see ``KeyIds``).
_KEY_IDS_TTL_S = 5.0


class FailureLimiter:
    """At most ``limit`` failed authentications per client address in a sliding minute.

    A slot is taken *before* a key is checked and given back when the key was right: there is no
    await between looking at the count and raising it, so concurrent wrong keys cannot overrun
    the limit (they did: 60 at once got 19 answers of 401 with a limit of 10).
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._failures: dict[str, deque[float]] = defaultdict(deque)

    def _recent(self, client: str, now: float) -> deque[float]:
        times = self._failures[client]
        while times and now - times[0] > _WINDOW_S:
            times.popleft()
        return times

    def reserve(self, client: str) -> float | None:
        """Count a failure for ``client`` now, or None when it is over the limit; hand the returned
        token to ``release`` if the key turns out right."""
        now = time.monotonic()
        times = self._recent(client, now)
        if len(times) >= self.limit:
            return None
        times.append(now)
        return now

    def release(self, client: str, token: float) -> None:
        """Take back the failure counted by ``reserve``: the key was right (or was not judged)."""
        times = self._failures.get(client)
        if times is None:
            return
        try:
            times.remove(token)
        except ValueError:  # already aged out of the window
            return
        if not times:
            del self._failures[client]

    def blocked_for(self, client: str) -> float:
        """Seconds until ``client`` may fail again (0: it may)."""
        now = time.monotonic()
        times = self._recent(client, now)
        if len(times) < self.limit:
            if not times:
                self._failures.pop(client, None)
            return 0.0
        return _WINDOW_S - (now - times[0])


class KeyIds:
    """The ids of the active keys, read at most every ``_KEY_IDS_TTL_S`` seconds.

    An address over its failure budget still gets its key checked, so Home Assistant behind the
    same NAT as an attacker is not locked out; this set makes a flood of made-up keys from such
    an address cost no database query. A key created by the CLI a moment ago is known to it within
    the TTL; an address under its budget never waits for that (its key is looked up directly).
    """

    def __init__(self, ttl_s: float = _KEY_IDS_TTL_S) -> None:
        self.ttl_s = ttl_s
        self._ids: frozenset[str] = frozenset()
        self._read_at = -math.inf
        self._lock = asyncio.Lock()

    async def known(self, pool: asyncpg.Pool, key_id: str) -> bool:
        if time.monotonic() - self._read_at > self.ttl_s:
            async with self._lock:  # one reader; the others use what it read
                if time.monotonic() - self._read_at > self.ttl_s:
                    self._ids = frozenset(await api_keys.active_key_ids(pool))
                    self._read_at = time.monotonic()
        return key_id in self._ids


class UseMarks:
    """When this process last marked each verified key as used (``api_keys.verify``'s
    ``mark_used``): the mark is written at most once a minute anyway, so a client sending a
    picture a second costs one statement a request (the key's look-up), not two."""

    def __init__(self, every_s: float = _WINDOW_S) -> None:
        self.every_s = every_s
        self.clock: Callable[[], float] = time.monotonic
        self._at: dict[str, float] = {}

    def due(self, key_id: str) -> bool:
        now = self.clock()
        if now - self._at.get(key_id, -math.inf) < self.every_s:
            return False
        if len(self._at) >= 1024:  # verified keys only: as many as the keys created
            self._at.clear()
        self._at[key_id] = now
        return True


class VerifiedKeys:
    """Keys this process has verified (their secret's hash checked), by the key's BLAKE2s digest
    (the secret itself is not kept): a request to a route whose statement checks the key again
    (``Route.key_in_statement``, a camera's picture a second) is served without looking the key
    up first. Every other request looks its key up, so a revoked key is refused at once
    everywhere: by the look-up, or by the statement that finds it revoked."""

    def __init__(self, limit: int = 256) -> None:
        self.limit = limit
        self._keys: dict[bytes, tuple[str, str]] = {}

    @staticmethod
    def _digest(key: str) -> bytes:
        # BLAKE2s, CPython's own: a 256-bit cryptographic hash like SHA-256, but it costs a third
        # of OpenSSL's SHA-256 as the first thing a request does after a second's idle (0.3 ms
        # of CPU against 1.0 on the test machine, `bench.warmth`: OpenSSL 3's digest set-up is
        # much more code). The digest never leaves this process.
        return hashlib.blake2s(key.encode()).digest()

    def get(self, key: str) -> tuple[str, str] | None:
        """(name, key id) of ``key`` when this process verified it, else None."""
        return self._keys.get(self._digest(key))

    def add(self, key: str, name: str, key_id: str) -> None:
        if len(self._keys) >= self.limit:  # verified keys only: as many as the keys created
            self._keys.clear()
        self._keys[self._digest(key)] = (name, key_id)

    def forget(self, key: str) -> None:
        self._keys.pop(self._digest(key), None)


LIMITER: web.AppKey[FailureLimiter] = web.AppKey("auth_limiter", FailureLimiter)
VERIFIED_KEYS: web.AppKey[VerifiedKeys] = web.AppKey("auth_verified_keys", VerifiedKeys)
KEY_IDS: web.AppKey[KeyIds] = web.AppKey("auth_key_ids", KeyIds)
USE_MARKS: web.AppKey[UseMarks] = web.AppKey("auth_use_marks", UseMarks)


def _presented_key(request: web.Request) -> str | None:
    scheme, _, key = request.headers.get("Authorization", "").partition(" ")
    key = key.strip()
    return key if scheme.lower() == "bearer" and key else None


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    route = route_of(request)
    if route is None or not route.auth:
        return await handler(request)
    context = request.app[CTX]
    client = request.remote or "?"
    if client in context.settings.trusted_proxies:
        request[PRINCIPAL] = "ingress"
        return await handler(request)
    limiter = request.app[LIMITER]
    key = _presented_key(request)
    if route.key_in_statement and key is not None and (known := request.app[VERIFIED_KEYS].get(key)) is not None:
        return await _serve_verified(request, handler, key, *known)
    token = limiter.reserve(client)
    if token is None:
        # Over the budget: a key of an active key id is still checked (a right key is always
        # served); anything else is refused without touching the database or hashing.
        key_id = api_keys.key_id_of(key) if key is not None else None
        if key is not None and key_id is not None and await request.app[KEY_IDS].known(context.pool, key_id):
            name = await api_keys.verify(context.pool, key, request.app[USE_MARKS].due)
            if name is not None:
                request[PRINCIPAL] = name
                return await handler(request)
        metrics.AUTH_FAILURES.inc()
        wait = max(1, math.ceil(limiter.blocked_for(client)))
        response = error_response(429, "too_many_failures", f"too many failed authentications; retry in {wait} s")
        response.headers["Retry-After"] = str(wait)  # RFC 9110: clients (the HA config flow) show the wait
        return response
    try:
        name = await api_keys.verify(context.pool, key, request.app[USE_MARKS].due) if key is not None else None
    except BaseException:
        limiter.release(client, token)  # the database failed, not the key: no failure to count
        raise
    if name is None:
        metrics.AUTH_FAILURES.inc()
        log.warning("auth failed client=%s path=%s", client, request.path)
        raise ApiError(401, "unauthorized", "missing or wrong API key (Authorization: Bearer <key>)")
    limiter.release(client, token)
    request[PRINCIPAL] = name
    if route.key_in_statement and key is not None and (key_id := api_keys.key_id_of(key)) is not None:
        request.app[VERIFIED_KEYS].add(key, name, key_id)
    return await handler(request)


async def _serve_verified(
    request: web.Request, handler: Handler, key: str, name: str, key_id: str
) -> web.StreamResponse:
    """A key this process verified before, on a route whose statement checks it again: served
    without the look-up. Revoked (or deleted) since, the statement refuses it and so does this,
    401; a request refused before its statement ran (a bad picture, an unknown camera) looks the
    key up then, so a revoked key is told 401, never what its request would have been told."""
    request[PRINCIPAL] = name
    request[STILL_ACTIVE] = api_keys.StillActive(key_id, request.app[USE_MARKS].due(key_id))
    try:
        return await handler(request)
    except api_keys.KeyRevoked:
        pass
    except ApiError:
        if await api_keys.verify(request.app[CTX].pool, key, lambda _: False) is not None:
            raise
    request.app[VERIFIED_KEYS].forget(key)
    metrics.AUTH_FAILURES.inc()
    log.warning("auth failed, key revoked since verified client=%s path=%s", request.remote or "?", request.path)
    raise ApiError(401, "unauthorized", "missing or wrong API key (Authorization: Bearer <key>)")


@web.middleware
async def audit_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    response = await handler(request)
    route = route_of(request)
    if route is not None and route.audited and response.status < 400:
        target = next((request.match_info[p] for p in route.path_params), None)
        await audit.record(
            request.app[CTX].pool,
            who=request.get(PRINCIPAL, "anonymous"),
            action=f"{route.method} {route.path}",
            target_id=target,
            status=response.status,
        )
    return response
