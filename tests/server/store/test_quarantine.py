"""store/quarantine.py: a refused input leaves a row, one count by reason and a warning; nothing when the row fails."""

from __future__ import annotations

import logging

import asyncpg
import pytest

from inference_server.store import quarantine
from inference_server.telemetry.metrics import REGISTRY


def _count(reason: str) -> float:
    return REGISTRY.get_sample_value("hsi_quarantined_total", {"reason": reason}) or 0.0


async def test_recording_writes_the_row_counts_the_reason_and_warns(
    pool: asyncpg.Pool, caplog: pytest.LogCaptureFixture
) -> None:
    before = _count("not_an_image")

    with caplog.at_level(logging.WARNING, logger="inference_server.store.quarantine"):
        qid = await quarantine.record(
            pool,
            source="file",
            camera_id="front",
            original_path="front/x.txt",
            stored_path="quarantine/x.txt",
            reason="not_an_image",
            detail="no JPEG header",
            size_bytes=12,
        )

    row = await pool.fetchrow("SELECT * FROM quarantine WHERE id = $1", qid)
    assert (row["camera_id"], row["original_path"], row["stored_path"], row["reason"], row["detail"]) == (
        "front",
        "front/x.txt",
        "quarantine/x.txt",
        "not_an_image",
        "no JPEG header",
    )
    assert row["size_bytes"] == 12
    assert _count("not_an_image") == before + 1
    [message] = [r.getMessage() for r in caplog.records if r.name == "inference_server.store.quarantine"]
    assert "source=file" in message and "camera_id=front" in message and "reason=not_an_image" in message


async def test_an_input_without_a_camera_is_recorded_with_none(pool: asyncpg.Pool) -> None:
    qid = await quarantine.record(
        pool,
        source="mqtt",
        camera_id=None,
        original_path="hsi/in/?",
        stored_path=None,
        reason="unknown_camera",
        detail="no such folder",
        size_bytes=None,
    )

    [entry] = await quarantine.recent(pool)
    assert entry["id"] == qid and entry["camera_id"] is None and entry["stored_path"] is None


async def test_a_row_that_cannot_be_written_is_neither_counted_nor_logged(
    pool: asyncpg.Pool, caplog: pytest.LogCaptureFixture
) -> None:
    before = _count("broken")

    with (
        caplog.at_level(logging.WARNING, logger="inference_server.store.quarantine"),
        pytest.raises(asyncpg.NotNullViolationError),
    ):
        await quarantine.record(
            pool,
            source="file",
            camera_id="front",
            original_path=None,  # type: ignore[arg-type]
            stored_path=None,
            reason="broken",
            detail="d",
            size_bytes=None,
        )

    assert _count("broken") == before
    assert not [r for r in caplog.records if r.name == "inference_server.store.quarantine"]
    assert await pool.fetchval("SELECT count(*) FROM quarantine") == 0


async def test_recent_lists_newest_first_up_to_the_limit(pool: asyncpg.Pool) -> None:
    for n in range(4):
        await quarantine.record(
            pool,
            source="decode",
            camera_id="front",
            original_path=f"front/{n}.jpg",
            stored_path=None,
            reason="decode_failed",
            detail="truncated",
            size_bytes=n,
        )

    recent = await quarantine.recent(pool, limit=3)

    assert [e["original_path"] for e in recent] == ["front/3.jpg", "front/2.jpg", "front/1.jpg"]
    assert set(recent[0]) == {"id", "camera_id", "original_path", "stored_path", "reason", "detail", "created_at"}
