"""Retention on real PostgreSQL and real files: exactly what has expired goes, nothing else."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from inference_server.config import Settings
from inference_server.store.db import create_pool
from inference_server.store.migrate import migrate
from inference_server.store.retention import RetentionReport, RetentionWorker, run_retention
from inference_server.telemetry.metrics import REGISTRY
from tests.support.waiting import wait_until

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
RETENTION_DAYS = 14
EVENT_RETENTION_DAYS = 90
_SCORES = {"low": 10, "medium": 40, "high": 70, "critical": 90}


def _ago(days: float = 0, hours: float = 0) -> datetime:
    return NOW - timedelta(days=days, hours=hours)


def _write(path: Path, size: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(range(256)) * (size // 256) + b"\xff" * (size % 256))
    return path


@dataclass
class World:
    """A database and data folder built row by row with controlled timestamps."""

    pool: asyncpg.Pool
    settings: Settings
    image_ids: dict[str, int] = field(default_factory=dict)
    image_files: dict[str, Path] = field(default_factory=dict)
    event_ids: dict[str, uuid.UUID] = field(default_factory=dict)
    snapshot_files: dict[str, Path] = field(default_factory=dict)
    quarantine_ids: dict[str, int] = field(default_factory=dict)
    outbox_ids: dict[str, int] = field(default_factory=dict)

    async def image(
        self, name: str, received_days_ago: float, size: int, *, job: str | None = "done", detections: int = 1
    ) -> int:
        path = _write(self.settings.images_path / "front" / "2025-05-01" / f"{name}.jpg", size)
        image_id: int = await self.pool.fetchval(
            "INSERT INTO images (camera_id, sha256, path, source, media_type, width, height, size_bytes,"
            " captured_at, captured_at_source, received_at)"
            " VALUES ('front', $1, $2, 'folder', 'image/jpeg', 64, 64, $3, $4, 'filename', $4) RETURNING id",
            hashlib.sha256(name.encode()).digest(),
            str(path),
            size,
            _ago(received_days_ago),
        )
        for _ in range(detections):
            await self.pool.execute(
                "INSERT INTO detections (image_id, camera_id, label, category, confidence, x1, y1, x2, y2,"
                " detected_at) VALUES ($1, 'front', 'person', 'person', 0.9, 0.1, 0.1, 0.5, 0.5, $2)",
                image_id,
                _ago(received_days_ago),
            )
        if job is not None:
            await self.pool.execute(
                "INSERT INTO jobs (image_id, camera_id, state, max_attempts, created_at)"
                " VALUES ($1, 'front', $2, 5, $3)",
                image_id,
                job,
                _ago(received_days_ago),
            )
        self.image_ids[name] = image_id
        self.image_files[name] = path
        return image_id

    async def event(
        self, name: str, image: str | None, started_days_ago: float, level: str, *, reviewed: bool = False
    ) -> uuid.UUID:
        event_id = uuid.uuid4()
        snapshot = _write(self.settings.snapshots_path / "front" / f"{event_id}.jpg", 500 + 17 * len(self.event_ids))
        await self.pool.execute(
            "INSERT INTO events (id, camera_id, image_id, started_at, risk_score, risk_level, summary, reasoning,"
            " risk_factors, objects, analysis_source, snapshot_path, reviewed)"
            " VALUES ($1, 'front', $2, $3, $4, $5, 'summary', 'reasoning', $6, $7, 'rules', $8, $9)",
            event_id,
            self.image_ids[image] if image is not None else None,
            _ago(started_days_ago),
            _SCORES[level],
            level,
            [],
            ["person"],
            str(snapshot),
            reviewed,
        )
        self.event_ids[name] = event_id
        self.snapshot_files[name] = snapshot
        return event_id

    async def quarantined(self, name: str, days_ago: float, stored: Path | str | None) -> int:
        qid: int = await self.pool.fetchval(
            "INSERT INTO quarantine (camera_id, original_path, stored_path, reason, detail, created_at)"
            " VALUES ('front', $1, $2, 'corrupt_image', 'test', $3) RETURNING id",
            f"/cameras/front/{name}.jpg",
            str(stored) if stored is not None else None,
            _ago(days_ago),
        )
        self.quarantine_ids[name] = qid
        return qid

    async def outbox(self, name: str, created_days_ago: float, sent_ago: timedelta | None) -> int:
        mid: int = await self.pool.fetchval(
            "INSERT INTO outbox (topic, payload, created_at, sent_at) VALUES ($1, $2, $3, $4) RETURNING id",
            f"hsi/test/{name}",
            b"{}",
            _ago(created_days_ago),
            NOW - sent_ago if sent_ago is not None else None,
        )
        self.outbox_ids[name] = mid
        return mid

    async def images_left(self) -> set[str]:
        ids = {r["id"] for r in await self.pool.fetch("SELECT id FROM images")}
        return {name for name, image_id in self.image_ids.items() if image_id in ids}

    async def per_image(self, table: str) -> dict[str, int]:
        rows = await self.pool.fetch(f"SELECT image_id, count(*) AS n FROM {table} GROUP BY image_id")
        by_id = {r["image_id"]: r["n"] for r in rows}
        return {name: by_id[i] for name, i in self.image_ids.items() if i in by_id}

    async def events_left(self) -> dict[str, tuple[int | None, str | None]]:
        """Event name -> (image_id, snapshot_path) of the event rows still there."""
        rows = await self.pool.fetch("SELECT id, image_id, snapshot_path FROM events")
        by_id = {r["id"]: (r["image_id"], r["snapshot_path"]) for r in rows}
        return {name: by_id[i] for name, i in self.event_ids.items() if i in by_id}

    async def named_rows(self, table: str, names: dict[str, int]) -> set[str]:
        ids = {r["id"] for r in await self.pool.fetch(f"SELECT id FROM {table}")}
        return {name for name, i in names.items() if i in ids}


def _settings(tmp_path: Path, database_url: str, retention_interval_s: float = 3600) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        database_url=database_url,
        retention_days=RETENTION_DAYS,
        event_retention_days=EVENT_RETENTION_DAYS,
        retention_interval_s=retention_interval_s,
    )


@pytest.fixture
async def world(database_url: str, tmp_path: Path) -> AsyncIterator[World]:
    pool = await create_pool(database_url, 4)
    await migrate(pool)
    await pool.execute("INSERT INTO cameras (id, name) VALUES ('front', 'Front')")
    yield World(pool, _settings(tmp_path, database_url))
    await pool.close()


@pytest.fixture
async def full(world: World, tmp_path: Path) -> World:
    """One of everything retention has a rule for, on both sides of each cutoff."""
    await world.image("old", 20, 1001, detections=2)
    await world.image("recent", 2, 1002)
    await world.image("edge", RETENTION_DAYS, 1003)  # exactly at the cutoff: not older, kept
    await world.image("protected", 20, 1004)
    await world.image("low", 20, 1005)
    await world.image("medium", 20, 1006)
    await world.image("reviewed_high", 20, 1007)
    await world.image("ancient", 100, 1008)
    await world.image("dead_recent", 3, 1009, job="dead")
    await world.image("dead_old", 20, 1010, job="dead")
    await world.image("backlog", 20, 1011, job="queued")
    await world.event("protected", "protected", 20, "high")
    await world.event("low", "low", 20, "low")
    await world.event("medium", "medium", 20, "medium")
    await world.event("reviewed_high", "reviewed_high", 20, "high", reviewed=True)
    await world.event("ancient", "ancient", 100, "critical")
    await world.event("recent", "recent", 2, "low")
    await world.outbox("unsent_old", 30, None)
    await world.outbox("sent_2d", 3, timedelta(days=2))
    await world.outbox("sent_2h", 1, timedelta(hours=2))
    q = world.settings.quarantine_path / "front"
    await world.quarantined("old_file", 20, _write(q / "20250510_bad.jpg", 3001))
    await world.quarantined("recent_file", 2, _write(q / "20250530_bad.jpg", 3002))
    await world.quarantined("old_nofile", 20, None)
    await world.quarantined("outside", 20, _write(tmp_path / "outside" / "precious.jpg", 3003))
    return world


def _metric(name: str, kind: str | None = None) -> float:
    value = REGISTRY.get_sample_value(name, {"kind": kind} if kind is not None else {})
    return value or 0.0


async def test_first_run_deletes_exactly_what_has_expired_and_nothing_else(full: World, tmp_path: Path) -> None:
    gone_images = {"old", "low", "medium", "reviewed_high", "ancient", "dead_old"}
    gone_snapshots = {"low", "medium", "reviewed_high", "ancient"}
    expected_bytes = (
        sum(full.image_files[n].stat().st_size for n in gone_images)
        + sum(full.snapshot_files[n].stat().st_size for n in gone_snapshots)
        + 3001
    )
    kinds = tuple(RetentionReport().counts())  # every kind the report has, new ones included
    before = {k: _metric("hsi_retention_deleted_total", k) for k in kinds}
    bytes_before = _metric("hsi_retention_freed_bytes_total")

    report = await run_retention(full.pool, full.settings, now=NOW)

    assert report == RetentionReport(
        events=1,
        images=6,
        jobs=6,
        detections=7,
        snapshots=4,
        outbox=1,
        quarantine=3,
        freed_bytes=expected_bytes,
    )
    # Images: the old ones went with their files, detections and jobs (dead ones included);
    # the recent, the one at the cutoff, the protected one and the backlogged one stayed.
    kept_images = {"recent", "edge", "protected", "dead_recent", "backlog"}
    assert await full.images_left() == kept_images
    assert {n for n, p in full.image_files.items() if p.exists()} == kept_images
    assert await full.per_image("detections") == dict.fromkeys(kept_images, 1)
    assert await full.per_image("jobs") == dict.fromkeys(kept_images, 1)
    assert await full.pool.fetchval("SELECT state FROM jobs WHERE image_id = $1", full.image_ids["dead_recent"]) == (
        "dead"
    )
    # Events: past event retention deleted; old unprotected ones lose image and snapshot but stay.
    protected = full.event_ids["protected"]
    assert await full.events_left() == {
        "protected": (full.image_ids["protected"], str(full.snapshot_files["protected"])),
        "low": (None, None),
        "medium": (None, None),
        "reviewed_high": (None, None),
        "recent": (full.image_ids["recent"], str(full.snapshot_files["recent"])),
    }
    assert {n for n, p in full.snapshot_files.items() if p.exists()} == {"protected", "recent"}
    assert protected in {r["id"] for r in await full.pool.fetch("SELECT id FROM events")}
    # Outbox: unsent never, sent only after a day.
    assert await full.named_rows("outbox", full.outbox_ids) == {"unsent_old", "sent_2h"}
    # Quarantine: old rows gone; the file outside the data folder is left alone.
    assert await full.named_rows("quarantine", full.quarantine_ids) == {"recent_file"}
    assert not (full.settings.quarantine_path / "front" / "20250510_bad.jpg").exists()
    assert (full.settings.quarantine_path / "front" / "20250530_bad.jpg").exists()
    assert (tmp_path / "outside" / "precious.jpg").read_bytes()[:3] == b"\x00\x01\x02"
    # Prometheus counters moved by exactly the report.
    after = {k: _metric("hsi_retention_deleted_total", k) - before[k] for k in kinds}
    assert after == report.counts()
    assert _metric("hsi_retention_freed_bytes_total") - bytes_before == expected_bytes


async def test_second_run_with_the_same_now_deletes_nothing(full: World) -> None:
    await run_retention(full.pool, full.settings, now=NOW)
    images, events = await full.images_left(), await full.events_left()

    again = await run_retention(full.pool, full.settings, now=NOW)

    assert again == RetentionReport()
    assert await full.images_left() == images
    assert await full.events_left() == events


async def test_reviewing_a_protected_event_releases_its_image_and_snapshot_at_the_next_run(full: World) -> None:
    await run_retention(full.pool, full.settings, now=NOW)
    image_bytes = full.image_files["protected"].stat().st_size
    snapshot_bytes = full.snapshot_files["protected"].stat().st_size

    await full.pool.execute("UPDATE events SET reviewed = true WHERE id = $1", full.event_ids["protected"])
    report = await run_retention(full.pool, full.settings, now=NOW)

    assert report == RetentionReport(
        images=1, jobs=1, detections=1, snapshots=1, freed_bytes=image_bytes + snapshot_bytes
    )
    assert "protected" not in await full.images_left()
    assert not full.image_files["protected"].exists()
    assert not full.snapshot_files["protected"].exists()
    assert (await full.events_left())["protected"] == (None, None)


async def test_protected_event_expires_with_event_retention_and_takes_its_evidence(world: World) -> None:
    await world.image("kept", 20, 700)
    await world.event("kept", "kept", 20, "critical")

    assert await run_retention(world.pool, world.settings, now=NOW) == RetentionReport()

    later = NOW + timedelta(days=EVENT_RETENTION_DAYS)
    report = await run_retention(world.pool, world.settings, now=later)
    assert (report.events, report.images, report.snapshots) == (1, 1, 1)
    assert await world.images_left() == set()
    assert not world.image_files["kept"].exists() and not world.snapshot_files["kept"].exists()


async def test_folders_of_cameras_that_no_longer_exist_are_swept_once_old_enough(world: World, tmp_path: Path) -> None:
    # What a crash between a camera's delete and the removal of its files leaves behind.
    s = world.settings
    outside = _write(tmp_path / "outside" / "keep.jpg", 100)
    outside_dir = tmp_path / "outside_dir"
    _write(outside_dir / "keep.jpg", 100)
    orphans = [
        _write(s.images_path / "ghost" / "2025-05-01" / "a.jpg", 1000),
        _write(s.snapshots_path / "ghost" / "7.jpg", 200),
        _write(s.quarantine_path / "ghost" / "20250510_bad.jpg", 30),
    ]
    (s.images_path / "ghost" / "2025-05-02").mkdir()  # an empty day folder
    link = s.images_path / "ghost" / "2025-05-01" / "link.jpg"
    link.symlink_to(outside)  # the link goes, never what it points to
    (s.images_path / "linked").symlink_to(outside_dir, target_is_directory=True)  # never followed
    named = _write(s.quarantine_path / "_unknown" / "20250530_named.jpg", 40)
    await world.quarantined("named", 1, named)  # a row names it: kept
    latin1 = _write(s.quarantine_path / "_unknown" / os.fsdecode(b"20250530_caf\xe9.jpg"), 10)  # not UTF-8
    await world.quarantined("latin1", 1, os.fsencode(latin1).decode("utf-8", "backslashreplace"))  # as rows hold it
    stray = _write(s.images_path / "front" / "2025-05-01" / "stray.jpg", 50)  # its camera exists: kept

    fresh = await run_retention(world.pool, s, now=NOW)

    # Just written: may be a new camera's first image, stored a moment before its row commits.
    assert fresh.orphan_files == 0
    assert all(p.exists() for p in orphans)

    report = await run_retention(world.pool, s, now=NOW, orphan_grace_s=0)

    assert report == RetentionReport(orphan_files=4, freed_bytes=1230 + len(str(outside)))
    assert [(root / "ghost").exists() for root in (s.images_path, s.snapshots_path, s.quarantine_path)] == [
        False,
        False,
        False,
    ]
    assert outside.exists() and (outside_dir / "keep.jpg").exists()
    assert (s.images_path / "linked").is_symlink()
    assert named.exists() and stray.exists() and latin1.exists()
    assert await run_retention(world.pool, s, now=NOW, orphan_grace_s=0) == RetentionReport()


async def test_snapshot_files_no_event_names_are_swept_from_a_live_cameras_folder_once_old_enough(
    world: World,
) -> None:
    """Before stop 34 a snapshot drawn only to be published on MQTT was written to
    ``snapshots/<camera>/<image id>.jpg`` and nothing ever removed it (no row names it), nor an
    event's earlier picture once the picture moved: a camera seeing activity a few hours a day
    left gigabytes there. Retention sweeps them; the camera's folder and the files events name
    stay."""
    s = world.settings
    await world.image("pictured", 1, 1001)
    await world.event("pictured", "pictured", 1, "medium")
    pictured = world.snapshot_files["pictured"]
    leftovers = [_write(s.snapshots_path / "front" / f"{n}.jpg", 300) for n in (7, 8, 9)]

    fresh = await run_retention(world.pool, s, now=NOW)

    # A file drawn moments ago may be the picture of an event whose transaction has not committed.
    assert fresh.orphan_files == 0 and all(p.exists() for p in leftovers)

    report = await run_retention(world.pool, s, now=NOW, orphan_grace_s=0)

    assert report == RetentionReport(orphan_files=3, freed_bytes=900)
    assert not any(p.exists() for p in leftovers)
    assert pictured.exists() and (s.snapshots_path / "front").is_dir()
    assert await run_retention(world.pool, s, now=NOW, orphan_grace_s=0) == RetentionReport()


async def test_image_with_a_queued_job_is_kept_until_the_job_is_finished(world: World) -> None:
    await world.image("backlog", 30, 800, job="queued")
    assert await run_retention(world.pool, world.settings, now=NOW) == RetentionReport()

    await world.pool.execute("UPDATE jobs SET state = 'done' WHERE image_id = $1", world.image_ids["backlog"])
    report = await run_retention(world.pool, world.settings, now=NOW)

    assert (report.images, report.jobs, report.freed_bytes) == (1, 1, 800)
    assert not world.image_files["backlog"].exists()


async def test_quarantine_rows_naming_files_outside_the_data_folder_never_remove_those_files(
    world: World, tmp_path: Path
) -> None:
    outside = _write(tmp_path / "outside" / "precious.jpg", 900)
    q = world.settings.quarantine_path
    tricks: list[Path | str] = [
        outside,
        q / ".." / ".." / "outside" / "precious.jpg",  # climbs out of the quarantine folder
        world.settings.snapshots_path / "x.jpg",  # in the data dir, but not a quarantine folder
        q / "..",
        q,
        "",
    ]
    (q / "link").mkdir(parents=True)
    (q / "link" / "out").symlink_to(tmp_path / "outside")
    tricks.append(q / "link" / "out" / "precious.jpg")  # a symlinked folder leading out
    snapshot = _write(world.settings.snapshots_path / "x.jpg", 50)
    for i, path in enumerate(tricks):
        await world.quarantined(f"trick{i}", 20, path)

    report = await run_retention(world.pool, world.settings, now=NOW)

    assert (report.quarantine, report.freed_bytes) == (len(tricks), 0)
    assert await world.named_rows("quarantine", world.quarantine_ids) == set()
    assert outside.read_bytes()[:3] == b"\x00\x01\x02"
    assert snapshot.exists() and q.is_dir()


async def test_quarantined_corrupt_image_keeps_its_file_while_the_image_row_lives(world: World) -> None:
    # The detect stage quarantines an undecodable image in place: both rows name one file.
    await world.image("corrupt", 3, 600, job="dead")
    await world.quarantined("corrupt", 20, world.image_files["corrupt"])

    report = await run_retention(world.pool, world.settings, now=NOW)

    assert (report.quarantine, report.images, report.freed_bytes) == (1, 0, 0)
    assert world.image_files["corrupt"].exists()


async def test_missing_files_count_as_zero_bytes_and_do_not_stop_the_run(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    await world.image("vanished", 20, 400)
    await world.image("present", 20, 300)
    await world.event("vanished", "vanished", 100, "low")
    world.image_files["vanished"].unlink()
    world.snapshot_files["vanished"].unlink()
    caplog.set_level(logging.DEBUG, logger="inference_server.store.retention")

    report = await run_retention(world.pool, world.settings, now=NOW)

    assert (report.images, report.events, report.snapshots, report.freed_bytes) == (2, 1, 1, 300)
    assert await world.images_left() == set()
    gone = [r for r in caplog.records if "already gone" in r.getMessage()]
    assert [r.levelno for r in gone] == [logging.DEBUG, logging.DEBUG]


async def test_batches_smaller_than_the_backlog_still_delete_everything(world: World) -> None:
    for i in range(7):
        await world.image(f"old{i}", 20 + i, 100 + i)
        await world.event(f"old{i}", None, 30 + i, "low")
        await world.outbox(f"sent{i}", 5, timedelta(days=3))
        await world.quarantined(f"q{i}", 20, None)
    await world.event("ancient", None, 200, "low")
    await world.image("recent", 1, 50)

    expected_bytes = sum(world.image_files[f"old{i}"].stat().st_size for i in range(7)) + sum(
        p.stat().st_size for p in world.snapshot_files.values()
    )

    report = await run_retention(world.pool, world.settings, now=NOW, batch_size=2)

    assert report == RetentionReport(
        events=1,
        images=7,
        jobs=7,
        detections=7,
        snapshots=8,
        outbox=7,
        quarantine=7,
        freed_bytes=expected_bytes,
    )
    assert await world.images_left() == {"recent"}
    assert await world.pool.fetchval("SELECT count(*) FROM events WHERE snapshot_path IS NOT NULL") == 0


def _run_logs(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "retention run done" in r.getMessage()]


async def test_worker_runs_shortly_after_start_logs_a_summary_and_stops_promptly(
    world: World, tmp_path: Path, caplog: pytest.LogCaptureFixture, database_url: str
) -> None:
    await world.image("old", 20, 1234)
    settings = _settings(tmp_path, database_url, retention_interval_s=0.05)
    caplog.set_level(logging.INFO, logger="inference_server.store.retention")
    stop = asyncio.Event()
    task = asyncio.create_task(RetentionWorker(world.pool, settings, clock=lambda: NOW).run(stop))
    try:
        await wait_until(lambda: not world.image_files["old"].exists(), timeout=10, interval=0.02)
        # ...and again one interval later.
        await wait_until(lambda: len(_run_logs(caplog)) >= 2, timeout=10, interval=0.02)
    finally:
        stop.set()
        async with asyncio.timeout(5):
            await task
    first = _run_logs(caplog)[0]
    assert "images=1 jobs=1 detections=1" in first
    assert "freed_bytes=1234" in first


async def test_worker_survives_a_database_error(world: World, caplog: pytest.LogCaptureFixture) -> None:
    worker = RetentionWorker(world.pool, world.settings, clock=lambda: NOW)
    await world.pool.close()
    caplog.set_level(logging.ERROR, logger="inference_server.store.retention")

    assert await worker.run_once() is None
    assert any("retention run failed" in r.getMessage() for r in caplog.records)


async def test_digests_older_than_digest_retention_are_pruned_and_counted(world: World) -> None:
    settings = world.settings.model_copy(update={"digest_retention_days": 30})

    async def digest(kind: str, made_days_ago: float, period_end_days_ago: float) -> int:
        end = _ago(period_end_days_ago)
        digest_id: int = await world.pool.fetchval(
            "INSERT INTO digests (kind, period_start, period_end, body, created_at)"
            " VALUES ($1, $2, $3, '{}', $4) RETURNING id",
            kind,
            end - timedelta(hours=9),
            end,
            _ago(made_days_ago),
        )
        return digest_id

    ids = {
        "scheduled_old": await digest("scheduled", 40, 40),
        "on_demand_old": await digest("on_demand", 31, 35),
        "scheduled_recent": await digest("scheduled", 29, 29),
        "on_demand_recent": await digest("on_demand", 1, 2),
        # A clock set back (or a digest of a period asked for long after): made long ago but of
        # the latest night. It stays: its row keeps a restarted scheduler from sending it again.
        "scheduled_latest": await digest("scheduled", 40, 0.2),
    }

    report = await run_retention(world.pool, settings, now=NOW)

    assert report.digests == 2
    assert report == RetentionReport(digests=2)
    assert await world.named_rows("digests", ids) == {"scheduled_recent", "on_demand_recent", "scheduled_latest"}
    assert (await run_retention(world.pool, settings, now=NOW)).digests == 0
    assert "digests=2" in report.summary()
