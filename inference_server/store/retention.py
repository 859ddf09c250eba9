"""Retention: deletes what has outlived ``retention_days`` / ``event_retention_days``.

The rules, and why each is what it is, are in ``docs/retention.md``. In short: events go
after ``event_retention_days``; images (with their jobs and detections), event snapshots
and quarantine entries after ``retention_days``, except what an unreviewed high or
critical event still needs; sent outbox rows after a day.

Rows are deleted in bounded batches, each its own short transaction, and the files those
rows named are removed after the commit, in a thread. A file is only ever removed from
the folder its kind lives in under the data directory, whatever a row says.
"""

from __future__ import annotations

import asyncio
import logging
import stat
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
from prometheus_client import Counter

from inference_server.config import Settings
from inference_server.telemetry.metrics import REGISTRY

log = logging.getLogger(__name__)

#: Rows per statement: small enough that a first run on a big database holds no long locks.
BATCH_SIZE = 1000
#: Sent outbox rows are kept this long (enough to look into a delivery problem).
OUTBOX_SENT_RETENTION = timedelta(days=1)
#: The first run waits this long (or one interval, if shorter) so start-up settles first.
FIRST_RUN_DELAY_S = 30.0

DELETED = Counter(
    "hsi_retention_deleted_total",
    "Rows removed by retention, by kind (snapshots: snapshot files released)",
    ["kind"],
    registry=REGISTRY,
)
FREED_BYTES = Counter("hsi_retention_freed_bytes_total", "Bytes of files removed by retention", registry=REGISTRY)


@dataclass(slots=True)
class RetentionReport:
    """What one retention run removed. Counts are rows, except ``snapshots`` (snapshot files
    released, whether their event row was deleted or only its ``snapshot_path`` cleared)."""

    events: int = 0
    images: int = 0
    jobs: int = 0
    detections: int = 0
    snapshots: int = 0
    outbox: int = 0
    quarantine: int = 0
    freed_bytes: int = 0

    def counts(self) -> dict[str, int]:
        """Rows (or snapshots) removed per kind, without ``freed_bytes``."""
        counts = asdict(self)
        del counts["freed_bytes"]
        return counts

    def summary(self) -> str:
        """``key=value`` pairs for the log."""
        return " ".join(f"{k}={v}" for k, v in asdict(self).items())


# An event whose evidence is kept: unreviewed, high or critical, within event retention.
# $1 is the event retention cutoff in every statement that uses it.
_PROTECTING_EVENT = "NOT e.reviewed AND e.risk_level IN ('high', 'critical') AND e.started_at >= $1"

_DELETE_EXPIRED_EVENTS = (
    "DELETE FROM events WHERE id IN ("
    " SELECT id FROM events WHERE started_at < $1 LIMIT $2 FOR UPDATE SKIP LOCKED)"
    " RETURNING snapshot_path"
)

_RELEASE_SNAPSHOTS = (
    "WITH victims AS ("
    " SELECT e.id, e.snapshot_path FROM events e"
    " WHERE e.started_at < $2 AND e.snapshot_path IS NOT NULL AND NOT (" + _PROTECTING_EVENT + ")"
    " LIMIT $3 FOR UPDATE SKIP LOCKED)"
    " UPDATE events SET snapshot_path = NULL FROM victims WHERE events.id = victims.id"
    " RETURNING victims.snapshot_path"
)

# An image whose job is queued or running is still the pipeline's (a backlog after a long
# outage); it is deleted at a later run, once the job is done or dead.
_LOCK_EXPIRED_IMAGES = (
    "SELECT i.id, i.path FROM images i"
    " WHERE i.received_at < $2"
    " AND NOT EXISTS (SELECT 1 FROM events e WHERE e.image_id = i.id AND " + _PROTECTING_EVENT + ")"
    " AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.image_id = i.id AND j.state IN ('queued', 'running'))"
    " LIMIT $3 FOR UPDATE OF i SKIP LOCKED"
)
# Explicit deletes (the foreign keys would cascade anyway) so that the report can count them.
_DELETE_DETECTIONS_OF = "DELETE FROM detections WHERE image_id = ANY($1::bigint[])"
_DELETE_JOBS_OF = "DELETE FROM jobs WHERE image_id = ANY($1::bigint[])"
_DELETE_IMAGES = "DELETE FROM images WHERE id = ANY($1::bigint[])"

_DELETE_SENT_OUTBOX = (
    "DELETE FROM outbox WHERE id IN ("
    " SELECT id FROM outbox WHERE sent_at IS NOT NULL AND sent_at < $1 LIMIT $2 FOR UPDATE SKIP LOCKED)"
)

_DELETE_EXPIRED_QUARANTINE = (
    "DELETE FROM quarantine WHERE id IN ("
    " SELECT id FROM quarantine WHERE created_at < $1 LIMIT $2 FOR UPDATE SKIP LOCKED)"
    " RETURNING stored_path"
)
# A corrupt image is quarantined in place: its quarantine row names the image's own file.
_PATHS_OWNED_BY_IMAGES = "SELECT path FROM images WHERE path = ANY($1::text[])"


def _affected(status: str) -> int:
    """Row count of an asyncpg command status such as ``DELETE 12``."""
    return int(status.rsplit(" ", 1)[-1])


async def run_retention(
    pool: asyncpg.Pool,
    settings: Settings,
    *,
    now: datetime,
    batch_size: int = BATCH_SIZE,
    stop: asyncio.Event | None = None,
) -> RetentionReport:
    """Apply the retention rules as of ``now`` (timezone-aware); return what was removed.

    Running it again with the same ``now`` removes nothing more. When ``stop`` is set the
    run ends after the current batch; what is left is removed by the next run.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    event_cutoff = now - timedelta(days=settings.event_retention_days)
    data_cutoff = now - timedelta(days=settings.retention_days)
    outbox_cutoff = now - OUTBOX_SENT_RETENTION
    report = RetentionReport()
    files = _FileRemover(settings)

    def stopping() -> bool:
        return stop is not None and stop.is_set()

    # Events first: an event past event retention protects nothing any more.
    while not stopping():
        rows = await pool.fetch(_DELETE_EXPIRED_EVENTS, event_cutoff, batch_size)
        report.events += len(rows)
        snapshots = [r["snapshot_path"] for r in rows if r["snapshot_path"] is not None]
        report.snapshots += len(snapshots)
        report.freed_bytes += await files.remove("snapshot", snapshots)
        if len(rows) < batch_size:
            break

    while not stopping():
        rows = await pool.fetch(_RELEASE_SNAPSHOTS, event_cutoff, data_cutoff, batch_size)
        report.snapshots += len(rows)
        report.freed_bytes += await files.remove("snapshot", [r["snapshot_path"] for r in rows])
        if len(rows) < batch_size:
            break

    while not stopping():
        async with pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(_LOCK_EXPIRED_IMAGES, event_cutoff, data_cutoff, batch_size)
            ids = [r["id"] for r in rows]
            if ids:
                report.detections += _affected(await conn.execute(_DELETE_DETECTIONS_OF, ids))
                report.jobs += _affected(await conn.execute(_DELETE_JOBS_OF, ids))
                report.images += _affected(await conn.execute(_DELETE_IMAGES, ids))
        report.freed_bytes += await files.remove("image", [r["path"] for r in rows])
        if len(rows) < batch_size:
            break

    while not stopping():
        deleted = _affected(await pool.execute(_DELETE_SENT_OUTBOX, outbox_cutoff, batch_size))
        report.outbox += deleted
        if deleted < batch_size:
            break

    while not stopping():
        async with pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(_DELETE_EXPIRED_QUARANTINE, data_cutoff, batch_size)
            stored = [r["stored_path"] for r in rows if r["stored_path"]]
            owned = {r["path"] for r in await conn.fetch(_PATHS_OWNED_BY_IMAGES, stored)} if stored else set()
        report.quarantine += len(rows)
        report.freed_bytes += await files.remove("quarantine", [p for p in stored if p not in owned])
        if len(rows) < batch_size:
            break

    for kind, count in report.counts().items():
        if count:
            DELETED.labels(kind).inc(count)
    if report.freed_bytes:
        FREED_BYTES.inc(report.freed_bytes)
    return report


class _FileRemover:
    """Removes files named by deleted rows, only inside the folder each kind lives in."""

    def __init__(self, settings: Settings) -> None:
        self._roots: dict[str, tuple[Path, ...]] = {
            "image": (settings.images_path,),
            "snapshot": (settings.snapshots_path,),
            # Quarantined files are moved to quarantine/, or left in images/ (corrupt images).
            "quarantine": (settings.quarantine_path, settings.images_path),
        }

    async def remove(self, kind: str, paths: Sequence[str]) -> int:
        """Remove ``paths`` in a thread (never on the event loop); return the bytes freed."""
        if not paths:
            return 0
        return await asyncio.to_thread(_remove_files, kind, list(paths), self._roots[kind])


def _remove_files(kind: str, paths: list[str], roots: Sequence[Path]) -> int:
    resolved = [root.resolve() for root in roots]
    return sum(_remove_file(kind, raw, resolved) for raw in paths)


def _remove_file(kind: str, raw: str, roots: Sequence[Path]) -> int:
    """Unlink one file; return its size, or 0 when it is gone, refused or cannot be removed."""
    path = Path(raw)
    try:
        # Resolve the folder, not the file itself: a symlink is removed, never followed.
        target = path.parent.resolve() / path.name
    except (OSError, RuntimeError, ValueError) as err:
        log.warning("retention skipped unresolvable path kind=%s path=%r error=%s", kind, raw, err)
        return 0
    if path.name in ("", ".", "..") or not any(target != root and target.is_relative_to(root) for root in roots):
        log.warning("retention refused to remove a file outside its data folder kind=%s path=%r", kind, raw)
        return 0
    try:
        info = target.lstat()
        if stat.S_ISDIR(info.st_mode):
            log.warning("retention refused to remove a directory kind=%s path=%r", kind, raw)
            return 0
        target.unlink()
    except FileNotFoundError:
        log.debug("retention file already gone kind=%s path=%r", kind, raw)
        return 0
    except (OSError, ValueError) as err:
        log.warning("retention could not remove file kind=%s path=%r error=%s", kind, raw, err)
        return 0
    return info.st_size


def _utc_now() -> datetime:
    return datetime.now(UTC)


class RetentionWorker:
    """Runs :func:`run_retention` every ``settings.retention_interval_s``, the first time
    ``first_run_delay_s`` after start (default: 30 s, or one interval if shorter)."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        settings: Settings,
        *,
        first_run_delay_s: float | None = None,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self.pool = pool
        self.settings = settings
        self.first_run_delay_s = (
            first_run_delay_s
            if first_run_delay_s is not None
            else min(FIRST_RUN_DELAY_S, settings.retention_interval_s)
        )
        self.clock = clock

    async def run(self, stop: asyncio.Event) -> None:
        delay = self.first_run_delay_s
        while not await _stopped_within(stop, delay):
            await self.run_once(stop)
            delay = self.settings.retention_interval_s

    async def run_once(self, stop: asyncio.Event | None = None) -> RetentionReport | None:
        """One run, logged; a database error is logged and left to the next run."""
        started = time.monotonic()
        try:
            report = await run_retention(self.pool, self.settings, now=self.clock(), stop=stop)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as err:
            log.error("retention run failed error=%r", err)
            return None
        log.info("retention run done %s duration_s=%.3f", report.summary(), time.monotonic() - started)
        return report


async def _stopped_within(stop: asyncio.Event, seconds: float) -> bool:
    """Wait up to ``seconds``; True as soon as ``stop`` is set."""
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        return False
    return True
