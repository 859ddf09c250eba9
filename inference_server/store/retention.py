"""Retention: deletes what has outlived ``retention_days`` / ``event_retention_days``.

The rules, and why each is what it is, are in ``docs/retention.md``. In short: events go
after ``event_retention_days``; images (with their jobs and detections), event snapshots
and quarantine entries after ``retention_days`` (a video clip with the last of its frames),
except what an unreviewed high or
critical event still needs; sent outbox rows after a day; digests after
``digest_retention_days`` (the scheduled ones of the last 2 days always stay); household contexts replaced before
the older of the two cutoffs (the one in force then stays: images are judged with the context
of their capture time).

Rows are deleted in bounded batches, each its own short transaction, and the files those
rows named are removed after the commit, in a thread. A file is only ever removed from
the folder its kind lives in under the data directory, whatever a row says.

Camera folders under ``images/``, ``snapshots/``, ``quarantine/`` and ``clips/`` whose camera no longer
exists (a crash between a camera's delete and the removal of its files) are swept: their
files that no row names go once unchanged for ``ORPHAN_GRACE_S``, then their empty folders. So
are the snapshot files no event names in the folders of cameras that exist (an event's earlier
picture, one drawn in a transaction that rolled back).
Deleting a camera removes its files at once with :func:`remove_camera_files`.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import stat
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
from prometheus_client import Counter

from inference_server.config import Settings
from inference_server.store import cameras, context
from inference_server.store.db import DB_ERRORS
from inference_server.telemetry.metrics import REGISTRY

log = logging.getLogger(__name__)

#: Rows per statement: small enough that a first run on a big database holds no long locks.
BATCH_SIZE = 1000
#: Sent outbox rows are kept this long (enough to look into a delivery problem).
OUTBOX_SENT_RETENTION = timedelta(days=1)
#: A scheduled digest whose period ended this recently is kept (the scheduler's send-once guard).
DIGEST_GUARD = timedelta(days=2)
#: The first run waits this long (or one interval, if shorter) so start-up settles first.
FIRST_RUN_DELAY_S = 30.0
#: A file or folder in the folder of a camera that does not exist is swept only once unchanged
#: this long: a new camera's first image is stored moments before its camera row commits.
ORPHAN_GRACE_S = 3600.0

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
    #: Video clips whose sampled frames (images) are all gone.
    clips: int = 0
    outbox: int = 0
    quarantine: int = 0
    #: Household contexts replaced before the retention cutoffs.
    contexts: int = 0
    #: Digests older than ``digest_retention_days``.
    digests: int = 0
    #: Strangers (migration 0009) none of whose sightings is left.
    strangers: int = 0
    #: Files no row names, swept from the folders of cameras that no longer exist, and snapshot
    #: files no event names (an event's earlier picture, say) from those of cameras that do.
    orphan_files: int = 0
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

# A clip goes with the last of its frames: one kept by a protecting event keeps its clip.
_DELETE_EXPIRED_CLIPS = (
    "DELETE FROM clips WHERE id IN ("
    " SELECT c.id FROM clips c WHERE c.received_at < $1"
    " AND NOT EXISTS (SELECT 1 FROM images i WHERE i.clip_id = c.id) LIMIT $2 FOR UPDATE SKIP LOCKED)"
    " RETURNING path"
)

_DELETE_SENT_OUTBOX = (
    "DELETE FROM outbox WHERE id IN ("
    " SELECT id FROM outbox WHERE sent_at IS NOT NULL AND sent_at < $1 LIMIT $2 FOR UPDATE SKIP LOCKED)"
)

_DELETE_EXPIRED_QUARANTINE = (
    "DELETE FROM quarantine WHERE id IN ("
    " SELECT id FROM quarantine WHERE created_at < $1 LIMIT $2 FOR UPDATE SKIP LOCKED)"
    " RETURNING stored_path"
)
# A scheduled digest's row is what stops the scheduler sending its period again after a
# restart: one whose period ended less than DIGEST_GUARD ago stays, whatever the setting.
_DELETE_FORGOTTEN_STRANGERS = (
    "DELETE FROM strangers WHERE id IN ("
    " SELECT s.id FROM strangers s WHERE s.last_seen < $1"
    "  AND NOT EXISTS (SELECT 1 FROM detection_identities di WHERE di.stranger_id = s.id)"
    " LIMIT $2 FOR UPDATE SKIP LOCKED)"
)

_DELETE_EXPIRED_DIGESTS = (
    "DELETE FROM digests WHERE id IN ("
    " SELECT id FROM digests WHERE created_at < $1 AND (kind <> 'scheduled' OR period_end < $2)"
    " LIMIT $3 FOR UPDATE SKIP LOCKED)"
)
# A corrupt image is quarantined in place: its quarantine row names the image's own file.
_PATHS_OWNED_BY_IMAGES = "SELECT path FROM images WHERE path = ANY($1::text[])"
# A file some row names is never swept, whichever folder it is in.
_NAMED_PATHS = (
    "SELECT path AS p FROM images WHERE path = ANY($1::text[])"
    " UNION SELECT snapshot_path FROM events WHERE snapshot_path = ANY($1::text[])"
    " UNION SELECT stored_path FROM quarantine WHERE stored_path = ANY($1::text[])"
    " UNION SELECT path FROM clips WHERE path = ANY($1::text[])"
)


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
    orphan_grace_s: float = ORPHAN_GRACE_S,
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
        rows = await pool.fetch(_DELETE_EXPIRED_CLIPS, data_cutoff, batch_size)
        report.clips += len(rows)
        report.freed_bytes += await files.remove("clip", [r["path"] for r in rows])
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

    digest_cutoff = now - timedelta(days=settings.digest_retention_days)
    while not stopping():
        deleted = _affected(await pool.execute(_DELETE_EXPIRED_DIGESTS, digest_cutoff, now - DIGEST_GUARD, batch_size))
        report.digests += deleted
        if deleted < batch_size:
            break

    # A stranger holds no vector (its sightings' embeddings went with their detections above);
    # once none of its sightings is left it goes too.
    while not stopping():
        deleted = _affected(await pool.execute(_DELETE_FORGOTTEN_STRANGERS, data_cutoff, batch_size))
        report.strangers += deleted
        if deleted < batch_size:
            break

    context_cutoff = min(event_cutoff, data_cutoff)
    while not stopping():
        deleted = await context.prune(pool, context_cutoff, batch_size)
        report.contexts += deleted
        if deleted < batch_size:
            break

    if not stopping():
        files_swept, freed = await _sweep_orphan_folders(pool, settings, orphan_grace_s)
        report.orphan_files += files_swept
        report.freed_bytes += freed

    for kind, count in report.counts().items():
        if count:
            DELETED.labels(kind).inc(count)
    if report.freed_bytes:
        FREED_BYTES.inc(report.freed_bytes)
    return report


def _kind_roots(settings: Settings) -> dict[str, Path]:
    """The data folders that hold one folder per camera, by the kind of file they hold."""
    return {
        "image": settings.images_path,
        "snapshot": settings.snapshots_path,
        "quarantine": settings.quarantine_path,
        "clip": settings.clips_path,
    }


async def remove_camera_files(pool: asyncpg.Pool, settings: Settings, deleted: cameras.DeletedCamera) -> int:
    """Remove a deleted camera's files, once its delete has committed; return the bytes freed.

    The files its rows named go first (only from the folder each kind lives in; one a row names
    again meanwhile, a camera of the same id re-created, is kept); then whatever else is in its
    folders under ``images/``, ``snapshots/`` and ``quarantine/``, as the orphan sweep does, and
    the folders once empty. Running it again removes nothing more.
    """
    files = _FileRemover(settings)
    named = [*deleted.image_paths, *deleted.snapshot_paths, *deleted.quarantine_paths]
    freed = 0
    try:
        again = await _named_paths(pool, named)
        for kind, paths in (
            ("image", deleted.image_paths),
            ("snapshot", deleted.snapshot_paths),
            ("quarantine", deleted.quarantine_paths),
        ):
            freed += await files.remove(kind, [p for p in paths if p not in again])
        emptied = {os.path.dirname(p) for p in named}
        for kind, root in _kind_roots(settings).items():
            _, swept = await _sweep_folder(pool, kind, root, deleted.camera_id, ORPHAN_GRACE_S, emptied)
            freed += swept
    except DB_ERRORS as err:
        # The camera is deleted all the same; the orphan sweep of the next retention run
        # removes what is left.
        log.warning("camera files not all removed camera_id=%s error=%r", deleted.camera_id, err)
    log.info("camera files removed camera_id=%s freed_bytes=%d", deleted.camera_id, freed)
    return freed


async def _named_paths(pool: asyncpg.Pool, paths: Sequence[str]) -> set[str]:
    named: set[str] = set()
    for start in range(0, len(paths), BATCH_SIZE):
        rows = await pool.fetch(_NAMED_PATHS, list(paths[start : start + BATCH_SIZE]))
        named.update(r["p"] for r in rows)
    return named


async def _sweep_orphan_folders(pool: asyncpg.Pool, settings: Settings, grace_s: float) -> tuple[int, int]:
    """Sweep the folders of cameras that no longer exist, and the snapshot folders of those that
    do; return (files removed, bytes freed).

    A snapshot file no event names is left over: an event's earlier picture (the picture moved to
    a better image), one drawn in a transaction that rolled back, or (before stop 34) one drawn
    only to be published on MQTT. Nothing reads such a file again."""
    roots = _kind_roots(settings)
    listed = {kind: await asyncio.to_thread(_folder_names, root) for kind, root in roots.items()}
    known = await cameras.ids(pool)
    # (kind, camera folder, whether the folder stays: its camera exists and writes into it)
    folders = [(kind, name, False) for kind, names in listed.items() for name in sorted(names - known)]
    folders += [("snapshot", name, True) for name in sorted(listed["snapshot"] & known)]
    removed = freed = 0
    for kind, name, keep in folders:
        count, size = await _sweep_folder(pool, kind, roots[kind], name, grace_s, keep_folder=keep)
        removed += count
        freed += size
    return removed, freed


async def _sweep_folder(
    pool: asyncpg.Pool,
    kind: str,
    root: Path,
    name: str,
    grace_s: float,
    emptied: set[str] | None = None,
    *,
    keep_folder: bool = False,
) -> tuple[int, int]:
    """Remove the files under ``root/name`` that no row names and that are unchanged for
    ``grace_s``, then its empty folders (``emptied``: folders files were just removed from,
    which go however recently changed), ``root/name`` itself unless ``keep_folder`` (a camera
    that exists writes into it); return (files removed, bytes freed)."""
    cutoff = time.time() - grace_s
    old = await asyncio.to_thread(_old_files, root, name, cutoff)
    named = await _named_paths(pool, [_as_text(p) for p in old])
    victims = [p for p in old if _as_text(p) not in named]
    removed, freed = await asyncio.to_thread(
        _remove_and_prune, kind, victims, root, name, cutoff, emptied or set(), keep_folder
    )
    if removed or freed:
        log.info("orphaned camera files removed kind=%s folder=%r files=%d freed_bytes=%d", kind, name, removed, freed)
    return removed, freed


def _as_text(path: str) -> str:
    """``path`` as rows hold it: a name that is not UTF-8 is stored with its bytes escaped
    (as the ingestor's ``printable`` does), and PostgreSQL takes no undecodable text."""
    return os.fsencode(path).decode("utf-8", "backslashreplace").replace("\x00", "\\0")


def _folder_names(root: Path) -> set[str]:
    """Names of the real folders (not links) directly under ``root``."""
    try:
        with os.scandir(root) as entries:
            return {e.name for e in entries if e.is_dir(follow_symlinks=False)}
    except FileNotFoundError:
        return set()


def _camera_folder(root: Path, name: str) -> Path | None:
    """``root/name`` when it is a real folder directly in ``root`` (resolved), else None."""
    real_root = root.resolve()
    folder = real_root / name
    if name in ("", ".", "..") or "/" in name or folder.parent != real_root:
        return None
    try:
        return folder if stat.S_ISDIR(folder.lstat().st_mode) else None
    except FileNotFoundError:
        return None


def _old_files(root: Path, name: str, cutoff: float) -> list[str]:
    """Everything but folders under ``root/name`` (links are listed, never followed) whose
    last change (ctime: a hard link made or a file written) is before ``cutoff``."""
    if _camera_folder(root, name) is None:
        return []
    found: list[str] = []
    # Walked as configured (not resolved), so the paths compare equal to the ones rows hold.
    for dirpath, dirs, names in os.walk(root / name, followlinks=False):
        for entry in (*names, *(d for d in dirs if os.path.islink(os.path.join(dirpath, d)))):
            path = os.path.join(dirpath, entry)
            try:
                if os.lstat(path).st_ctime < cutoff:
                    found.append(path)
            except FileNotFoundError:
                continue
    return found


def _remove_and_prune(
    kind: str,
    paths: list[str],
    root: Path,
    name: str,
    cutoff: float,
    emptied_before: set[str],
    keep_folder: bool = False,
) -> tuple[int, int]:
    real_root = root.resolve()
    removed = freed = 0
    emptied = set(emptied_before)
    for raw in paths:
        size = _remove_file(kind, raw, [real_root])
        if size is not None:
            removed += 1
            freed += size
            emptied.add(os.path.dirname(raw))
    folder = _camera_folder(root, name)
    if folder is None:
        return removed, freed
    emptied = {os.path.realpath(d) for d in emptied}
    # Deepest first, so a day folder goes before its camera folder. A folder is removed when
    # this sweep emptied it or it has been empty since before the cutoff: a fresh empty folder
    # may be a new image's, made a moment before the image is linked into it.
    for dirpath, _dirs, _names in os.walk(folder, topdown=False, followlinks=False):
        if keep_folder and dirpath == str(folder):
            continue
        try:
            if dirpath in emptied or os.lstat(dirpath).st_ctime < cutoff:
                os.rmdir(dirpath)
                emptied.add(os.path.dirname(dirpath))
        except FileNotFoundError:
            continue
        except OSError as err:
            if err.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                log.warning("could not remove folder kind=%s path=%r error=%s", kind, dirpath, err)
    return removed, freed


class _FileRemover:
    """Removes files named by deleted rows, only inside the folder each kind lives in."""

    def __init__(self, settings: Settings) -> None:
        self._roots: dict[str, tuple[Path, ...]] = {
            "image": (settings.images_path,),
            "snapshot": (settings.snapshots_path,),
            "clip": (settings.clips_path,),
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
    return sum(_remove_file(kind, raw, resolved) or 0 for raw in paths)


def _remove_file(kind: str, raw: str, roots: Sequence[Path]) -> int | None:
    """Unlink one file; return its size, or None when it is gone, refused or cannot be removed."""
    path = Path(raw)
    try:
        # Resolve the folder, not the file itself: a symlink is removed, never followed.
        target = path.parent.resolve() / path.name
    except (OSError, RuntimeError, ValueError) as err:
        log.warning("retention skipped unresolvable path kind=%s path=%r error=%s", kind, raw, err)
        return None
    if path.name in ("", ".", "..") or not any(target != root and target.is_relative_to(root) for root in roots):
        log.warning("retention refused to remove a file outside its data folder kind=%s path=%r", kind, raw)
        return None
    try:
        info = target.lstat()
        if stat.S_ISDIR(info.st_mode):
            log.warning("retention refused to remove a directory kind=%s path=%r", kind, raw)
            return None
        target.unlink()
    except FileNotFoundError:
        log.debug("retention file already gone kind=%s path=%r", kind, raw)
        return None
    except (OSError, ValueError) as err:
        log.warning("retention could not remove file kind=%s path=%r error=%s", kind, raw, err)
        return None
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
        except DB_ERRORS as err:
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
