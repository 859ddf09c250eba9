"""store/audit.py: who changed what, read back newest first, a page at a time."""

from __future__ import annotations

import asyncpg

from inference_server.store import audit


async def test_entries_come_back_newest_first_in_pages_with_a_cursor(pool: asyncpg.Pool) -> None:
    for n in range(5):
        await audit.record(pool, who="homeassistant", action="camera.update", target_id=f"cam{n}", status=200)
    await audit.record(pool, who="tests", action="apikey.revoke", target_id=None, status=404, detail={"name": "x"})

    first, cursor = await audit.page(pool, 4, None)
    assert [(e.who, e.action, e.target_id, e.status) for e in first] == [
        ("tests", "apikey.revoke", None, 404),
        ("homeassistant", "camera.update", "cam4", 200),
        ("homeassistant", "camera.update", "cam3", 200),
        ("homeassistant", "camera.update", "cam2", 200),
    ]
    assert cursor == first[-1].id

    rest, end = await audit.page(pool, 4, cursor)
    assert [e.target_id for e in rest] == ["cam1", "cam0"]
    assert end is None
    assert await pool.fetchval("SELECT detail FROM audit_log WHERE action = 'apikey.revoke'") == {"name": "x"}
