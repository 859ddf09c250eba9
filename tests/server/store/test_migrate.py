from __future__ import annotations

from datetime import UTC, datetime

import asyncpg
import numpy as np
import pytest

from inference_server.domain import Detection
from inference_server.store import detections, images, people
from inference_server.store.db import create_pool
from inference_server.store.migrate import available_migrations, migrate

T0 = datetime(2026, 11, 24, 23, 0, tzinfo=UTC)


async def test_migrations_apply_once_and_are_recorded(database_url: str) -> None:
    pool = await create_pool(database_url, 2)
    try:
        first = await migrate(pool)
        assert first == [m.version for m in available_migrations()]
        assert await migrate(pool) == []
        recorded = await pool.fetch("SELECT version, name FROM schema_migrations ORDER BY version")
        assert [(r["version"], r["name"]) for r in recorded] == [(m.version, m.name) for m in available_migrations()]
        tables = {r["tablename"] for r in await pool.fetch("SELECT tablename FROM pg_tables WHERE schemaname='public'")}
        assert {"cameras", "images", "jobs", "detections", "events", "outbox", "quarantine"} <= tables
    finally:
        await pool.close()


async def test_vectors_stored_as_arrays_are_converted_to_float32_bytes(database_url: str) -> None:
    """Migration 0013: the people's vectors stored as ``real[]`` before it read back the same
    float32 values after it (NaN and signed zeros included; a NULL value, which hand-written SQL
    could store, as NaN: the length is kept), and a vector of 15 floats is still refused."""
    face = [0.1, -0.0, 1e-38, 3.4e38, -2.5, float("nan"), None] + [n / 7 for n in range(1017)]
    body = [-(n / 3) for n in range(1280)]
    pool = await create_pool(database_url, 2)
    try:
        await migrate(pool, until=12)
        assert await pool.fetchval("SELECT max(version) FROM schema_migrations") == 12
        await pool.execute("INSERT INTO cameras (id, name) VALUES ('front', 'Front')")
        image_id = await images.insert(
            pool, images.NewImage("front", b"x", "x.jpg", "folder", None, "image/jpeg", 8, 8, 1, T0, "mtime")
        )
        await detections.insert_many(pool, image_id, "front", T0, [Detection("person", 0.9, (0.1, 0.1, 0.5, 0.9))])
        detection_id = await pool.fetchval("SELECT id FROM detections")
        anna = await pool.fetchval("INSERT INTO people (name) VALUES ('Anna') RETURNING id")
        await pool.execute(
            "INSERT INTO person_embeddings (person_id, source, model, vector, origin)"
            " VALUES ($1, 'face', 'f', $2::real[], 'upload')",
            anna,
            face,
        )
        await pool.execute(
            "INSERT INTO detection_embeddings (detection_id, source, model, vector) VALUES ($1, 'body', 'b', $2)",
            detection_id,
            body,
        )

        assert await migrate(pool) == [m.version for m in available_migrations() if m.version > 12]

        [(person, source, vector)] = await people.gallery(pool, {"face": "f"})
        assert (person, source, vector.dtype) == (anna, "face", np.float32)
        np.testing.assert_array_equal(vector, np.asarray([float("nan") if v is None else v for v in face], np.float32))
        assert np.signbit(vector[1])
        [(source, model, stored_body)] = await people.detection_vectors(pool, detection_id)
        assert (source, model) == ("body", "b")
        np.testing.assert_array_equal(stored_body, np.asarray(body, dtype=np.float32))
        with pytest.raises(asyncpg.CheckViolationError):
            await people.add_embeddings(pool, anna, [("face", "f", [0.5] * 15)], origin="upload")
        with pytest.raises(asyncpg.CheckViolationError):
            await pool.execute(
                "INSERT INTO detection_embeddings (detection_id, source, model, vector) VALUES ($1, 'face', 'f', $2)",
                detection_id,
                b"\x00" * 66,  # not whole floats
            )
    finally:
        await pool.close()
