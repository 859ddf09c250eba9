from __future__ import annotations

from inference_server.store.db import create_pool
from inference_server.store.migrate import available_migrations, migrate


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
