"""A camera file whose capture time is out of range (a clock reset to 1970, a year 2200 mtime, a
1999 stamp in its name) is quarantined with reason ``captured_at_out_of_range``; the files
beside it are ingested as usual (issue 13, item 1). See inference_server/timerange.py."""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from inference_server import demo_assets
from inference_server.config import Settings
from inference_server.ingest.validate import InvalidImage
from tests.support.waiting import wait_until

from ..conftest import running
from .conftest import with_comment

BUS = demo_assets.image("bus.jpg").read_bytes()


def _read(path: str) -> bytes:
    return Path(path).read_bytes()


def _put(cameras: Path, name: str, data: bytes, mtime: datetime | None = None) -> None:
    """Into ``cameras/porch/`` by a rename, as an FTP upload lands; its mtime set before it arrives."""
    staging = cameras.parent / "staging" / name
    staging.parent.mkdir(parents=True, exist_ok=True)
    staging.write_bytes(data)
    if mtime is not None:
        os.utime(staging, (mtime.timestamp(), mtime.timestamp()))
    (cameras / "porch").mkdir(parents=True, exist_ok=True)
    staging.rename(cameras / "porch" / name)


async def test_out_of_range_capture_times_are_quarantined(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(role="api")
    cameras = settings.cameras_path
    async with running(settings) as server:
        _put(cameras, "clock-reset.jpg", with_comment(BUS, "1970"), datetime(1970, 1, 1, 0, 0, 5, tzinfo=UTC))
        _put(cameras, "far-future.jpg", with_comment(BUS, "2200"), datetime(2200, 1, 1, tzinfo=UTC))
        # The file name's stamp wins over the mtime: 1999 is before the range.
        _put(cameras, "MDAlarm_19991231-235959.jpg", with_comment(BUS, "1999"))
        _put(cameras, "MDAlarm_20261124-021000.jpg", with_comment(BUS, "good stamp"))
        _put(cameras, "good-mtime.jpg", with_comment(BUS, "good mtime"), datetime(2026, 11, 24, 2, 10, tzinfo=UTC))

        async def settled() -> bool:
            n = await server.pool.fetchval("SELECT (SELECT count(*) FROM images) + (SELECT count(*) FROM quarantine)")
            return bool(n == 5)

        await wait_until(settled, timeout=30)
        rows = await server.pool.fetch("SELECT original_path, camera_id, reason, detail, stored_path FROM quarantine")
        refused = {Path(r["original_path"]).name: r for r in rows}
        assert set(refused) == {"clock-reset.jpg", "far-future.jpg", "MDAlarm_19991231-235959.jpg"}
        for name, row in refused.items():
            assert row["reason"] == "captured_at_out_of_range" and row["camera_id"] == "porch", row
            assert "outside the accepted range 2000-01-01T00:00:00Z" in row["detail"], row
            assert _read(row["stored_path"])[:2] == b"\xff\xd8", name  # kept, moved aside
        assert refused["clock-reset.jpg"]["detail"].startswith("mtime: capture time 1970-01-01T00:00:05")
        assert refused["far-future.jpg"]["detail"].startswith("mtime: capture time 2200-01-01T00:00:00")
        assert refused["MDAlarm_19991231-235959.jpg"]["detail"].startswith("filename: capture time 1999-12-31")

        accepted = await server.pool.fetch("SELECT original_name, captured_at, captured_at_source FROM images")
        assert {(Path(r["original_name"]).name, r["captured_at"], r["captured_at_source"]) for r in accepted} == {
            ("MDAlarm_20261124-021000.jpg", datetime(2026, 11, 24, 2, 10, tzinfo=UTC), "filename"),
            ("good-mtime.jpg", datetime(2026, 11, 24, 2, 10, tzinfo=UTC), "mtime"),
        }
        assert sorted(p.name for p in (cameras / "porch").iterdir()) == []


async def test_ingest_bytes_refuses_an_out_of_range_capture_time(make_settings: Callable[..., Settings]) -> None:
    """The check behind every path that hands ``ingest_bytes`` a time (REST, MQTT): nothing stored."""
    async with running(make_settings(role="api")) as server:
        await server.pool.execute("INSERT INTO cameras (id, name) VALUES ('porch', 'Porch')")
        for when in (datetime(1, 1, 1, tzinfo=UTC), datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)):
            with pytest.raises(InvalidImage) as refused:
                await server.ingestor.ingest_bytes("porch", BUS, captured_at=when, original_name="x.jpg")
            assert refused.value.reason == "captured_at_out_of_range"
        assert await server.pool.fetchval("SELECT count(*) FROM images") == 0
