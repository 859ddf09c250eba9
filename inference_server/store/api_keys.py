"""api_keys table: API keys are shown once; only a salted hash is stored.

A key is ``hsi_<key_id>_<secret>``: ``key_id`` (12 hex) finds the row, the secret (256
random bits) is checked against ``sha256(salt || secret)`` in constant time. A fast hash
is right here: the secret is random, not a password, so it cannot be guessed faster than
by brute force over 2^256 (why no slow KDF: docs/decisions.md).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import asyncpg

_KEY = re.compile(r"^hsi_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")


@dataclass(frozen=True, slots=True)
class StillActive:
    """A key this process verified earlier, checked again by the statement it authorises instead
    of looked up before it (``still_active_ctes``): the statement does nothing while the key is
    revoked or deleted. ``mark``: the statement also marks the key used (at most once a minute)."""

    key_id: str
    mark: bool


class KeyRevoked(Exception):
    """The key of a ``StillActive`` check was revoked or deleted since this process verified it."""


#: A key's last-used mark is written at most once a minute (a busy client's requests are not writes).
_MARK_DUE = "(last_used_at IS NULL OR last_used_at < now() - interval '60 seconds')"


def still_active_ctes(key_id: str, mark: str) -> str:
    """Two CTEs for a statement authorised by a ``StillActive`` key whose id is the SQL parameter
    ``key_id`` (a NULL id: no key to check) and whose ``mark`` (a boolean parameter) asks for the
    mark: ``key``, one row whose ``active`` is whether the statement may write (true without a
    key), and the mark's UPDATE (data-modifying, so it runs whatever reads it)."""
    return (
        f"key AS (SELECT {key_id}::text IS NULL OR EXISTS"
        f" (SELECT 1 FROM api_keys WHERE key_id = {key_id} AND revoked_at IS NULL) AS active),"
        f" key_mark AS (UPDATE api_keys SET last_used_at = now() WHERE key_id = {key_id} AND {mark}::boolean"
        f" AND revoked_at IS NULL AND {_MARK_DUE} RETURNING 1)"
    )


@dataclass(frozen=True, slots=True)
class ApiKeyInfo:
    name: str
    key_id: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


def _digest(salt: bytes, secret: str) -> bytes:
    return hashlib.sha256(salt + secret.encode()).digest()


async def create(conn: asyncpg.Connection | asyncpg.Pool, name: str) -> str:
    """Create a key named ``name`` and return it; it cannot be shown again."""
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    salt = secrets.token_bytes(16)
    try:
        await conn.execute(
            "INSERT INTO api_keys (key_id, name, salt, hash) VALUES ($1, $2, $3, $4)",
            key_id,
            name,
            salt,
            _digest(salt, secret),
        )
    except asyncpg.UniqueViolationError as err:
        raise ValueError(f"an active key named {name!r} exists; revoke it first") from err
    return f"hsi_{key_id}_{secret}"


def key_id_of(key: str) -> str | None:
    """The key id of a well-formed key (no database, no hashing), or None."""
    match = _KEY.match(key)
    return match.group(1) if match is not None else None


async def active_key_ids(conn: asyncpg.Connection | asyncpg.Pool) -> list[str]:
    """The ids of the keys not revoked."""
    rows = await conn.fetch("SELECT key_id FROM api_keys WHERE revoked_at IS NULL")
    return [row["key_id"] for row in rows]


async def verify(
    conn: asyncpg.Connection | asyncpg.Pool, key: str, mark_used: Callable[[str], bool] = lambda _: True
) -> str | None:
    """The name of the active key ``key``, or None. A verified key is marked as used (at most once
    a minute) when ``mark_used(key_id)`` says so: the caller may know it marked it a moment ago."""
    match = _KEY.match(key)
    if match is None:
        return None
    key_id, secret = match.groups()
    row = await conn.fetchrow(
        "SELECT name, salt, hash FROM api_keys WHERE key_id = $1 AND revoked_at IS NULL",
        key_id,
    )
    if row is None:
        return None
    if not hmac.compare_digest(_digest(bytes(row["salt"]), secret), bytes(row["hash"])):
        return None
    # Only a verified key counts as used, and at most once a minute: a busy client must not turn
    # every read request into a write.
    if mark_used(key_id):
        await conn.execute(f"UPDATE api_keys SET last_used_at = now() WHERE key_id = $1 AND {_MARK_DUE}", key_id)
    name: str = row["name"]
    return name


async def revoke(conn: asyncpg.Connection | asyncpg.Pool, name: str) -> bool:
    status: str = await conn.execute(
        "UPDATE api_keys SET revoked_at = now() WHERE name = $1 AND revoked_at IS NULL", name
    )
    return status != "UPDATE 0"


async def list_all(conn: asyncpg.Connection | asyncpg.Pool) -> list[ApiKeyInfo]:
    rows = await conn.fetch(
        "SELECT name, key_id, created_at, last_used_at, revoked_at FROM api_keys ORDER BY created_at, id"
    )
    return [ApiKeyInfo(r["name"], r["key_id"], r["created_at"], r["last_used_at"], r["revoked_at"]) for r in rows]
