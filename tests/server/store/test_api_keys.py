"""store/api_keys.py: a key is shown once, only its salted hash is kept, revoked keys stop working."""

from __future__ import annotations

import asyncpg
import pytest

from inference_server.store import api_keys


async def test_a_created_key_verifies_to_its_name_and_only_its_hash_is_stored(pool: asyncpg.Pool) -> None:
    key = await api_keys.create(pool, "homeassistant")

    assert await api_keys.verify(pool, key) == "homeassistant"
    key_id = api_keys.key_id_of(key)
    assert key_id is not None and key.startswith(f"hsi_{key_id}_")
    row = await pool.fetchrow("SELECT salt, hash FROM api_keys WHERE key_id = $1", key_id)
    assert row is not None
    secret = key.split("_", 2)[2]
    assert secret.encode() not in bytes(row["hash"]) + bytes(row["salt"])
    assert len(bytes(row["hash"])) == 32  # sha256


async def test_a_wrong_secret_or_a_malformed_key_does_not_verify(pool: asyncpg.Pool) -> None:
    key = await api_keys.create(pool, "homeassistant")
    forged = key[:-1] + ("A" if key[-1] != "A" else "B")

    assert await api_keys.verify(pool, forged) is None
    assert await api_keys.verify(pool, "hsi_not-a-key") is None
    assert api_keys.key_id_of("hsi_not-a-key") is None


async def test_a_verified_key_is_marked_used_and_a_revoked_one_stops_working(pool: asyncpg.Pool) -> None:
    key = await api_keys.create(pool, "homeassistant")
    [before] = await api_keys.list_all(pool)
    assert before.last_used_at is None and before.revoked_at is None

    assert await api_keys.verify(pool, key) == "homeassistant"
    [used] = await api_keys.list_all(pool)
    assert used.last_used_at is not None

    assert await api_keys.revoke(pool, "homeassistant") is True
    assert await api_keys.revoke(pool, "homeassistant") is False  # nothing active left to revoke
    assert await api_keys.verify(pool, key) is None
    assert await api_keys.active_key_ids(pool) == []
    [revoked] = await api_keys.list_all(pool)
    assert revoked.revoked_at is not None


async def test_one_active_key_per_name_and_the_name_is_free_again_once_revoked(pool: asyncpg.Pool) -> None:
    first = await api_keys.create(pool, "homeassistant")
    with pytest.raises(ValueError, match="revoke it first"):
        await api_keys.create(pool, "homeassistant")

    await api_keys.revoke(pool, "homeassistant")
    second = await api_keys.create(pool, "homeassistant")

    assert await api_keys.active_key_ids(pool) == [api_keys.key_id_of(second)]
    assert [k.key_id for k in await api_keys.list_all(pool)] == [api_keys.key_id_of(first), api_keys.key_id_of(second)]
