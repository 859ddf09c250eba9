"""Turns an arriving image into an image row + job (one transaction), or a quarantine entry.

Crash safety for camera-folder files: the bytes are first linked (or copied) into the
image store, then the image and its job commit together, and only then is the camera's
file removed. A crash at any point leaves either the original file (re-ingested after a
restart; duplicates are recognised by hash) or a committed job — never nothing.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import io
import logging
import os
import shutil
import stat
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo

import asyncpg
from PIL import Image

from inference_server.config import Settings
from inference_server.ingest.filenames import camera_id_for_folder, timestamp_from_name
from inference_server.ingest.validate import ImageInfo, ImageLimits, InvalidImage, inspect_image
from inference_server.jobs.queue import JobQueue
from inference_server.store import cameras, images, quarantine
from inference_server.telemetry import metrics

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png"})
_NAME_MAX = 255  # bytes in one file name (ext4, XFS, btrfs, ZFS, SMB shares)
_EXT = {"image/jpeg": "jpg", "image/png": "png"}

Status = Literal["queued", "duplicate", "quarantined", "vanished"]


@dataclass(frozen=True, slots=True)
class IngestResult:
    status: Status
    camera_id: str | None
    image_id: int | None = None
    job_id: int | None = None
    reason: str | None = None


def printable(path: Path | str) -> str:
    """A file name as text PostgreSQL accepts (undecodable bytes become escapes)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace").replace("\x00", "\\0")


class UnknownCamera(LookupError):
    """Upload for a camera id that does not exist."""


class CameraDisabled(RuntimeError):
    """The camera exists but its detection is switched off."""


@dataclass(frozen=True, slots=True)
class _Loaded:
    data: bytes
    info: ImageInfo
    sha256: bytes


class Ingestor:
    def __init__(self, settings: Settings, pool: asyncpg.Pool, queue: JobQueue) -> None:
        self.settings = settings
        self.pool = pool
        self.queue = queue
        self.root = settings.cameras_path.resolve()
        self.tz = ZoneInfo(settings.camera_timezone)
        self.limits = ImageLimits(settings.max_image_bytes, settings.max_image_pixels, settings.min_image_side)

    # ---------------------------------------------------------------------------------
    async def ingest_file(self, path: Path) -> IngestResult:
        """Ingest one complete file found under the cameras folder."""
        started = metrics.now()
        try:
            rel = path.relative_to(self.root)
        except ValueError:
            return await self._quarantine(path, None, "outside_cameras_folder", f"not under {self.root}")
        if len(rel.parts) < 2:
            return await self._quarantine(
                path, None, "not_in_camera_folder", "files go in <cameras>/<camera>/, not the top folder"
            )
        folder = rel.parts[0]
        camera_id = camera_id_for_folder(folder)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return IngestResult("vanished", camera_id)
        source = path
        if stat.S_ISLNK(st.st_mode):
            target = await asyncio.to_thread(path.resolve)
            if not target.is_relative_to(self.root / folder):
                return await self._quarantine(
                    path, camera_id, "symlink_outside_camera_folder", f"link points to {printable(target)}"
                )
            source = target
            try:
                st = os.stat(target)
            except FileNotFoundError:
                return await self._quarantine(path, camera_id, "broken_symlink", "link target is missing")
        if not stat.S_ISREG(st.st_mode):
            return await self._quarantine(path, camera_id, "not_a_file", "not a regular file")
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            return await self._quarantine(
                path,
                camera_id,
                "unsupported_file_type",
                f"suffix {printable(path.suffix)!r} is not .jpg/.png",
            )
        if st.st_size > self.limits.max_bytes:
            return await self._quarantine(
                path, camera_id, "too_large", f"{st.st_size} bytes > limit {self.limits.max_bytes}"
            )
        try:
            loaded = await asyncio.to_thread(self._load, source)
        except InvalidImage as bad:
            return await self._quarantine(path, camera_id, bad.reason, bad.detail)
        except FileNotFoundError:
            return IngestResult("vanished", camera_id)

        stamp = timestamp_from_name(path.name, self.tz)
        captured_at, when_source = (
            (stamp, "filename")
            if stamp
            else (
                datetime.fromtimestamp(st.st_mtime, UTC),
                "mtime",
            )
        )
        metrics.STAGE.labels("validate").observe(metrics.now() - started)
        try:
            result = await self._commit(
                camera_id=camera_id,
                folder=folder,
                loaded=loaded,
                source_file=source,
                original_name=printable(rel),
                captured_at=captured_at,
                captured_at_source=when_source,
                source="folder",
            )
        except CameraDisabled:
            return await self._quarantine(path, camera_id, "camera_disabled", "detection is off for this camera")
        if result.status in ("queued", "duplicate"):
            await asyncio.to_thread(_unlink_quietly, path)
        return result

    async def ingest_bytes(
        self,
        camera_id: str,
        data: bytes,
        *,
        captured_at: datetime | None,
        original_name: str | None,
        source: Literal["upload", "mqtt"] = "upload",
    ) -> IngestResult:
        """Ingest an uploaded image. Raises ``InvalidImage`` (nothing is stored), ``UnknownCamera``
        or ``CameraDisabled``. Uploads are decoded in full here, so a corrupt one is refused at once."""
        started = metrics.now()
        loaded = await asyncio.to_thread(self._check_upload, data)
        metrics.STAGE.labels("validate").observe(metrics.now() - started)
        when_source = "client" if captured_at is not None else "received"
        return await self._commit(
            camera_id=camera_id,
            folder=None,
            loaded=loaded,
            source_file=None,
            original_name=original_name or source,
            captured_at=captured_at or datetime.now(UTC),
            captured_at_source=when_source,
            source=source,
        )

    def _check_upload(self, data: bytes) -> _Loaded:
        info = inspect_image(data, self.limits)
        try:
            with Image.open(io.BytesIO(data)) as img:
                img.load()
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
            raise InvalidImage("corrupt_image", f"cannot be decoded: {err}") from err
        return _Loaded(data, info, hashlib.sha256(data).digest())

    def _load(self, source: Path) -> _Loaded:
        with open(source, "rb") as fh:
            data = fh.read(self.limits.max_bytes + 1)
        info = inspect_image(data, self.limits)
        return _Loaded(data, info, hashlib.sha256(data).digest())

    async def _commit(
        self,
        *,
        camera_id: str,
        folder: str | None,
        loaded: _Loaded,
        source_file: Path | None,
        original_name: str,
        captured_at: datetime,
        captured_at_source: str,
        source: str,
    ) -> IngestResult:
        started = metrics.now()
        day = captured_at.astimezone(UTC).strftime("%Y-%m-%d")
        stored = (
            self.settings.images_path / camera_id / day / f"{loaded.sha256.hex()[:32]}.{_EXT[loaded.info.media_type]}"
        )
        placed_now = await asyncio.to_thread(_place, source_file, loaded.data, stored)
        try:
            image_id, job_id, camera_id = await self._insert(
                camera_id, folder, loaded, stored, original_name, captured_at, captured_at_source, source
            )
        except (UnknownCamera, CameraDisabled):
            if placed_now:
                await asyncio.to_thread(_unlink_quietly, stored)
            raise
        metrics.STAGE.labels("enqueue").observe(metrics.now() - started)
        if image_id is None:
            log.info("duplicate image ignored camera_id=%s file=%s", camera_id, original_name)
            metrics.INGESTED.labels(camera_id, source, "duplicate").inc()
            existing = await images.find(self.pool, camera_id, loaded.sha256)
            return IngestResult("duplicate", camera_id, existing[0] if existing else None)
        metrics.INGESTED.labels(camera_id, source, "queued").inc()
        log.info(
            "image queued camera_id=%s image_id=%s job_id=%s file=%s captured_at=%s (%s)",
            camera_id,
            image_id,
            job_id,
            original_name,
            captured_at.isoformat(),
            captured_at_source,
        )
        return IngestResult("queued", camera_id, image_id, job_id)

    async def _insert(
        self,
        camera_id: str,
        folder: str | None,
        loaded: _Loaded,
        stored: Path,
        original_name: str,
        captured_at: datetime,
        captured_at_source: str,
        source: str,
    ) -> tuple[int | None, int | None, str]:
        """Image row and job in one transaction; (image id or None if a duplicate, job id, camera id)."""
        job_id: int | None = None
        async with self.pool.acquire() as conn, conn.transaction():
            if folder is not None:
                camera, created = await cameras.ensure_for_folder(conn, camera_id, printable(folder))
                if created:
                    log.info("camera registered camera_id=%s folder=%s", camera.id, printable(folder))
            else:
                found = await cameras.get(conn, camera_id)
                if found is None:
                    raise UnknownCamera(camera_id)
                camera = found
            if not camera.enabled:
                raise CameraDisabled(camera.id)
            image_id = await images.insert(
                conn,
                images.NewImage(
                    camera_id=camera.id,
                    sha256=loaded.sha256,
                    path=str(stored),
                    source=source,
                    original_name=original_name,
                    media_type=loaded.info.media_type,
                    width=loaded.info.width,
                    height=loaded.info.height,
                    size_bytes=len(loaded.data),
                    captured_at=captured_at,
                    captured_at_source=captured_at_source,
                ),
            )
            if image_id is None:
                job_id = None
            else:
                job_id = await self.queue.enqueue(conn, image_id, camera.id)
        return image_id, job_id, camera.id

    async def _quarantine(self, path: Path, camera_id: str | None, reason: str, detail: str) -> IngestResult:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
        dest = self.settings.quarantine_path / (camera_id or "_unknown") / _fit_name(f"{stamp}_", path.name)
        size: int | None
        try:
            size = os.lstat(path).st_size
            await asyncio.to_thread(_move, path, dest)
            stored: str | None = str(dest)
        except FileNotFoundError:
            return IngestResult("vanished", camera_id)
        except OSError as err:
            log.error("quarantine move failed path=%s error=%s", printable(path), err)
            size, stored = None, None
        await quarantine.add(
            self.pool,
            camera_id=camera_id,
            original_path=printable(path),
            stored_path=printable(stored) if stored else None,
            reason=reason,
            detail=detail,
            size_bytes=size,
        )
        metrics.QUARANTINED.labels(reason).inc()
        log.warning(
            "file quarantined camera_id=%s reason=%s detail=%s file=%s",
            camera_id,
            reason,
            detail,
            printable(path),
        )
        return IngestResult("quarantined", camera_id, reason=reason)


def _place(source_file: Path | None, data: bytes, stored: Path) -> bool:
    """Put the bytes at ``stored``: a hard link when possible (no copy), else a complete copy.
    Returns False when the file was already there (the same bytes, ingested before)."""
    if stored.exists():
        return False
    stored.parent.mkdir(parents=True, exist_ok=True)
    if source_file is not None:
        try:
            os.link(source_file, stored)
            return True
        except FileExistsError:
            return False
        except OSError as err:
            if err.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                raise
    tmp = stored.with_name(f".{stored.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, stored)
    return True


def _fit_name(prefix: str, name: str) -> str:
    """``prefix + name``, the name's stem shortened to fit in one file name; the suffix is kept."""
    suffix = Path(name).suffix
    if len(os.fsencode(prefix + suffix)) >= _NAME_MAX:
        suffix = ""
    stem = name[: len(name) - len(suffix)]
    while stem and len(os.fsencode(prefix + stem + suffix)) > _NAME_MAX:
        stem = stem[:-1]
    return prefix + stem + suffix


def _move(path: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(path, dest)
    except OSError as err:
        if err.errno != errno.EXDEV:
            raise
        shutil.move(str(path), str(dest))


def _unlink_quietly(path: Path) -> None:
    # The file may already be gone (a camera retrying the upload, or a second watcher).
    path.unlink(missing_ok=True)
