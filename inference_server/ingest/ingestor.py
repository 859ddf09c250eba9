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
import logging
import os
import re
import shutil
import stat
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo

import asyncpg

from inference_server import decode_budget
from inference_server.buffers import Lent
from inference_server.config import Settings
from inference_server.ingest.clips import (
    CLIP_MEDIA_TYPES,
    CLIP_SUFFIXES,
    ClipLimits,
    SampledClip,
    sample_clip,
    sniff_media_type,
    suffix_for,
)
from inference_server.ingest.filenames import camera_id_candidates, timestamp_from_name
from inference_server.ingest.validate import (
    ImageInfo,
    ImageLimits,
    InvalidImage,
    check_pixels,
    decodes_as_rgbx,
    inspect_image,
)
from inference_server.jobs.queue import JobQueue, JobTaker
from inference_server.logging_setup import FirstSeen
from inference_server.schemas import CAMERA_ID_PATTERN
from inference_server.store import api_keys, cameras, clips, images, quarantine
from inference_server.telemetry import metrics
from inference_server.timerange import CAPTURED_AT_OUT_OF_RANGE, capture_time_problem

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png"})
#: Quarantine reasons of a file whose real place is outside the cameras folder: recorded, never moved.
OUTSIDE_REASONS = frozenset({"outside_cameras_folder", "outside_camera_folder"})
_NAME_MAX = 255  # bytes in one file name (ext4, XFS, btrfs, ZFS, SMB shares)
_EXT = {"image/jpeg": "jpg", "image/png": "png"}
_CAMERA_ID = re.compile(CAMERA_ID_PATTERN)

Status = Literal["queued", "duplicate", "quarantined", "vanished"]


@dataclass(frozen=True, slots=True)
class IngestResult:
    status: Status
    camera_id: str | None
    image_id: int | None = None
    job_id: int | None = None
    reason: str | None = None
    #: A video clip: what became of it (its frames' images and jobs).
    clip: ClipOutcome | None = None


@dataclass(frozen=True, slots=True)
class ClipOutcome:
    clip_id: int
    image_ids: list[int]
    job_ids: list[int]
    duration_s: float
    frames_decoded: int


def printable(path: Path | str) -> str:
    """A file name as text PostgreSQL accepts (undecodable bytes become escapes)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace").replace("\x00", "\\0")


#: Folders whose camera id the ingestor keeps, and camera ids uploaded to (it forgets them all
#: past this).
_IDS_KEPT = 1024


class UnknownCamera(LookupError):
    """Upload for a camera id that does not exist."""


class CameraDisabled(RuntimeError):
    """The camera exists but its detection is switched off."""


class CameraIdConflict(UnknownCamera):
    """The id chosen for a new camera folder was taken meanwhile (another folder registered it,
    or this folder was registered under another id): nothing is stored, look the id up again."""


class _Refused(InvalidImage):
    """A camera file whose real place is not where it may be read or removed."""

    def __init__(self, reason: str, detail: str, entry: Path | None) -> None:
        super().__init__(reason, detail)
        #: The directory entry that may be moved to quarantine (a link inside the camera
        #: folder), or None: the file is outside, record it and leave it alone.
        self.entry = entry


@dataclass(frozen=True, slots=True)
class _Located:
    #: The file's directory entry at its real place, inside its camera folder.
    entry: Path
    #: What to read: the entry, or the target of a link inside the same camera folder.
    source: Path
    st: os.stat_result


@dataclass(frozen=True, slots=True)
class _Loaded:
    data: bytes
    info: ImageInfo
    sha256: bytes
    #: The picture decoded by the check for this process's idle detect worker (``_check_upload``):
    #: handed over with the job, else given back by ``release``.
    picture: Lent | None = None

    def release(self) -> None:
        """The decoded picture back to the worker's pool, unless the job took it along."""
        if self.picture is not None:
            self.picture.give_back()


@dataclass(frozen=True, slots=True)
class _Turned:
    """A camera file refused before anything was stored: what ``_quarantine`` records."""

    reason: str
    detail: str
    entry: Path | None
    move: bool = True


@dataclass(frozen=True, slots=True)
class _Ready:
    """A camera image checked and placed in the image store, for ``_commit``."""

    found: _Located
    loaded: _Loaded
    captured_at: datetime
    when_source: str
    stored: Path
    #: Whether this ingest put the bytes there (False: the same bytes were stored before).
    placed_now: bool


class Ingestor:
    def __init__(self, settings: Settings, pool: asyncpg.Pool, queue: JobQueue) -> None:
        self.settings = settings
        self.pool = pool
        self.queue = queue
        self.root = settings.cameras_path.resolve()
        self.tz = ZoneInfo(settings.camera_timezone)
        #: Folder → camera id, learned from the files stored: a known folder's next file is one
        #: statement that checks the id is still the folder's (``_insert``), no look-up first.
        self._folder_ids: dict[str, str] = {}
        #: Camera ids an upload (REST, MQTT) was last stored for: their next upload is one
        #: statement that checks the camera still exists and is enabled, no look-up first.
        self._upload_ids: set[str] = set()
        #: Cameras whose first image this process has logged at INFO (the others at DEBUG).
        self._announced = FirstSeen()
        self.limits = ImageLimits(
            settings.max_image_bytes,
            settings.max_image_pixels,
            settings.min_image_side,
            settings.max_image_aspect_ratio,
        )
        self.clip_limits = ClipLimits(
            max_bytes=settings.clip_max_bytes,
            max_duration_s=settings.clip_max_duration_s,
            max_frames=settings.clip_max_frames,
            decode_timeout_s=settings.clip_decode_timeout_s,
            max_pixels=settings.max_image_pixels,
            min_side=settings.min_image_side,
            max_aspect_ratio=settings.max_image_aspect_ratio,
            analysis_fps=settings.clip_analysis_fps,
            motion_threshold=settings.clip_motion_threshold,
        )

    # ---------------------------------------------------------------------------------
    async def ingest_file(self, path: Path) -> IngestResult:
        """Ingest one complete file found under the cameras folder.

        Nothing outside the cameras folder is ever read, moved or removed: the file's folder is
        resolved (symlinked folders at any depth, or a symlinked camera folder, lead out) and must
        really be inside its camera's folder; a file there that is a symlink is followed only to
        a target inside that folder. A file whose real place is outside is quarantined as
        ``outside_camera_folder``: recorded, and left where it is.
        """
        try:
            return await self._ingest_file(path)
        except CameraIdConflict as conflict:
            # Another folder took the id chosen for a new folder (or the folder was registered
            # under another id) between the look-up and the insert: look the id up again.
            log.info("camera id changed meanwhile, ingesting again camera_id=%s file=%s", conflict, printable(path))
            return await self._ingest_file(path)

    def _relative(self, path: Path) -> Path | None:
        """``path`` relative to the cameras folder (as resolved, or as configured), or None."""
        for base in (self.root, self.settings.cameras_path.absolute()):
            if path.is_absolute() and path.is_relative_to(base):
                rel = path.relative_to(base)
                return None if ".." in rel.parts else rel
        return None

    async def _camera_id_for_folder(self, folder: str) -> str:
        """The id of ``folder``'s camera (a new folder's to be); a registered folder is
        remembered, so its file is inserted by the one statement of a known folder's."""
        if (known := self._folder_ids.get(folder)) is not None:
            return known
        camera_id, registered = await cameras.id_for_folder(self.pool, printable(folder), camera_id_candidates(folder))
        if registered:
            self._remember(folder, camera_id)
        return camera_id

    def _remember(self, folder: str, camera_id: str) -> None:
        if len(self._folder_ids) >= _IDS_KEPT:
            self._folder_ids.clear()  # folders are cameras: thousands only from a hostile uploader
        self._folder_ids[folder] = camera_id

    async def _ingest_file(self, path: Path) -> IngestResult:
        started = metrics.now()
        rel = self._relative(path)
        if rel is None:
            return await self._quarantine(path, None, "outside_cameras_folder", f"not under {self.root}", move=False)
        if len(rel.parts) < 2:
            if await asyncio.to_thread(os.path.islink, self.root / rel):
                return await self._quarantine(
                    self.root / rel,
                    None,
                    "symlinked_camera_folder",
                    "a camera folder must be a real folder: through a link the server would read and"
                    " delete files outside the cameras folder (mount the other disk there instead)",
                )
            return await self._quarantine(
                path, None, "not_in_camera_folder", "files go in <cameras>/<camera>/, not the top folder"
            )
        folder = rel.parts[0]
        camera_id = await self._camera_id_for_folder(folder)
        # One trip to a thread: find, check, read and place the file (the event loop's share of a
        # hop is most of ingest's own CPU: docs/performance.md, "Stop 28").
        opened = await asyncio.to_thread(self._open_file, path, rel, camera_id, self.queue.idle_taker())
        if opened is None:
            return IngestResult("vanished", camera_id)
        if isinstance(opened, _Turned):
            return await self._quarantine(
                path, camera_id, opened.reason, opened.detail, entry=opened.entry, move=opened.move
            )
        if isinstance(opened, _Located):
            return await self._ingest_clip_file(path, rel, folder, camera_id, opened)
        entry = opened.found.entry
        metrics.STAGE.labels("validate").observe(metrics.now() - started)
        try:
            result = await self._commit(
                camera_id=camera_id,
                folder=folder,
                loaded=opened.loaded,
                source_file=opened.found.source,
                original_name=printable(rel),
                captured_at=opened.captured_at,
                captured_at_source=opened.when_source,
                source="folder",
                placed=(opened.stored, opened.placed_now),
            )
        except CameraDisabled:
            return await self._quarantine(
                path, camera_id, "camera_disabled", "detection is off for this camera", entry=entry
            )
        finally:
            opened.loaded.release()  # unless the worker took the picture along with the job
        if result.status in ("queued", "duplicate"):
            try:
                await asyncio.to_thread(_take_out, entry, self.root, None)
            except FileNotFoundError:
                # Already gone: a camera retrying the upload, or a second watcher.
                log.debug("ingested file already removed camera_id=%s file=%s", camera_id, printable(path))
            except _Refused as refused:
                log.warning(
                    "ingested file left in place camera_id=%s reason=%s detail=%s file=%s",
                    camera_id,
                    refused.reason,
                    refused.detail,
                    printable(path),
                )
        return result

    def _open_file(
        self, path: Path, rel: Path, camera_id: str, taker: JobTaker | None
    ) -> _Ready | _Located | _Turned | None:
        """On a thread: where the camera file really is, whether it may be ingested, its bytes
        checked (``taker``: decoded for this process's idle worker, ``_check_upload``), and (an
        image) its bytes placed in the image store. A clip's location is returned for
        ``_ingest_clip_file``; None: the file is gone."""
        try:
            found = _locate(self.root / rel, self.root / rel.parts[0])
        except FileNotFoundError:
            return None
        except _Refused as refused:
            return _Turned(refused.reason, refused.detail, refused.entry, move=refused.entry is not None)
        entry, st = found.entry, found.st
        suffix = path.suffix.lower()
        if not stat.S_ISREG(st.st_mode):
            return _Turned("not_a_file", "not a regular file", entry)
        if suffix in CLIP_SUFFIXES:
            return found
        if suffix not in IMAGE_SUFFIXES:
            detail = f"suffix {printable(path.suffix)!r} is not .jpg/.png/.mp4/.mkv/.avi/.mov"
            return _Turned("unsupported_file_type", detail, entry)
        if st.st_size > self.limits.max_bytes:
            return _Turned("too_large", f"{st.st_size} bytes > limit {self.limits.max_bytes}", entry)
        try:
            loaded = self._load(found.source, taker)
        except InvalidImage as bad:
            return _Turned(bad.reason, bad.detail, entry)
        except FileNotFoundError:
            return None
        ready = None
        try:
            when = _capture_time(path.name, st.st_mtime, self.tz)
            if isinstance(when, str):
                return _Turned(CAPTURED_AT_OUT_OF_RANGE, when, None)
            stored = self._stored_path(camera_id, when[0], loaded)
            ready = _Ready(found, loaded, when[0], when[1], stored, _place(found.source, loaded.data, stored))
            return ready
        finally:
            if ready is None:
                loaded.release()

    def _stored_path(self, camera_id: str, captured_at: datetime, loaded: _Loaded) -> Path:
        """Where the image store keeps the bytes: by camera, UTC day and hash."""
        day = captured_at.astimezone(UTC).strftime("%Y-%m-%d")
        name = f"{loaded.sha256.hex()[:32]}.{_EXT[loaded.info.media_type]}"
        return self.settings.images_path / camera_id / day / name

    async def ingest_bytes(
        self,
        camera_id: str,
        data: bytes,
        *,
        captured_at: datetime | None,
        original_name: str | None,
        source: Literal["upload", "mqtt"] = "upload",
        key: api_keys.StillActive | None = None,
    ) -> IngestResult:
        """Ingest an uploaded image. Raises ``InvalidImage`` (nothing is stored), ``UnknownCamera``
        or ``CameraDisabled``. Uploads are read in full here, so a corrupt one is refused at once;
        so is a ``captured_at`` outside ``timerange``'s capture range (reason ``captured_at_out_of_range``).
        ``key``: the upload's API key, verified earlier, is checked by the insert (``api_keys.KeyRevoked``,
        nothing stored, once revoked)."""
        if captured_at is not None and (problem := capture_time_problem(captured_at)) is not None:
            raise InvalidImage(CAPTURED_AT_OUT_OF_RANGE, problem)
        when_source = "client" if captured_at is not None else "received"
        captured_at = captured_at or datetime.now(UTC)
        started = metrics.now()
        taker = self.queue.idle_taker()
        placed: tuple[Path, bool] | None = None
        if camera_id in self._upload_ids:
            # A camera this process stored an upload for: the bytes are checked and placed in one
            # hop to a thread (a hop costs ~0.1 ms of CPU; the insert still checks the camera).
            loaded, placed = await asyncio.to_thread(self._check_and_place, camera_id, data, captured_at, taker)
        else:
            loaded = await asyncio.to_thread(self._check_upload, data, taker)
        metrics.STAGE.labels("validate").observe(metrics.now() - started)
        try:
            return await self._commit(
                camera_id=camera_id,
                folder=None,
                loaded=loaded,
                source_file=None,
                original_name=original_name or source,
                captured_at=captured_at,
                captured_at_source=when_source,
                source=source,
                placed=placed,
                key=key,
            )
        finally:
            loaded.release()  # unless the worker took the picture along with the job

    def _check_and_place(
        self, camera_id: str, data: bytes, captured_at: datetime, taker: JobTaker | None
    ) -> tuple[_Loaded, tuple[Path, bool]]:
        """On a thread: an upload's bytes checked (``_check_upload``, decoded for ``taker``), then
        placed in the image store; (what was loaded, (where it is, whether this call put it there)),
        the ``placed`` that ``_commit`` takes."""
        loaded = self._check_upload(data, taker)
        try:
            stored = self._stored_path(camera_id, captured_at, loaded)
            return loaded, (stored, _place(None, loaded.data, stored))
        except BaseException:
            loaded.release()
            raise

    # --- video clips ----------------------------------------------------------------------------
    async def _ingest_clip_file(
        self, path: Path, rel: Path, folder: str, camera_id: str, found: _Located
    ) -> IngestResult:
        """A clip in a camera folder: sampled into frames (images of the camera, one job each, all
        committed with the clip's row in one transaction), or quarantined with the reason."""
        entry = found.entry
        if found.st.st_size > self.clip_limits.max_bytes:
            return await self._quarantine(
                path,
                camera_id,
                "too_large",
                f"{found.st.st_size} bytes > clip limit {self.clip_limits.max_bytes}",
                entry=entry,
            )
        try:
            data = await asyncio.to_thread(_read_at_most, found.source, self.clip_limits.max_bytes + 1)
            sampled = await asyncio.to_thread(self._sample, data)
        except InvalidImage as bad:
            return await self._quarantine(path, camera_id, bad.reason, bad.detail, entry=entry)
        except FileNotFoundError:
            return IngestResult("vanished", camera_id)
        stamp = timestamp_from_name(path.name, self.tz)
        if stamp is not None:
            started_at, when_source = stamp, "filename"
        else:
            # A clip's file is written as it ends: it started its duration before.
            when = _capture_time(path.name, found.st.st_mtime, self.tz)
            if isinstance(when, str):
                return await self._quarantine(path, camera_id, CAPTURED_AT_OUT_OF_RANGE, when, entry=entry)
            started_at, when_source = when[0] - timedelta(seconds=sampled.duration_s), when[1]
        if (problem := capture_time_problem(started_at)) is not None:
            return await self._quarantine(path, camera_id, CAPTURED_AT_OUT_OF_RANGE, problem, entry=entry)
        try:
            result = await self._commit_clip(
                camera_id=camera_id,
                folder=folder,
                data=data,
                sampled=sampled,
                media_type=sniff_media_type(data) or CLIP_MEDIA_TYPES[path.suffix.lower()],
                source_file=found.source,
                original_name=printable(rel),
                started_at=started_at,
                captured_at_source=when_source,
                source="folder",
            )
        except CameraDisabled:
            return await self._quarantine(
                path, camera_id, "camera_disabled", "detection is off for this camera", entry=entry
            )
        try:
            await asyncio.to_thread(_take_out, entry, self.root, None)
        except FileNotFoundError:
            log.debug("ingested clip already removed camera_id=%s file=%s", camera_id, printable(path))
        except _Refused as refused:
            log.warning("ingested clip left in place camera_id=%s detail=%s", camera_id, refused.detail)
        return result

    async def ingest_clip_bytes(
        self,
        camera_id: str,
        data: bytes,
        *,
        media_type: str,
        captured_at: datetime | None,
        original_name: str | None,
    ) -> IngestResult:
        """An uploaded clip (``captured_at``: when it started; default: received now minus its
        duration). Raises ``InvalidImage`` (nothing is stored), ``UnknownCamera`` or ``CameraDisabled``."""
        if captured_at is not None and (problem := capture_time_problem(captured_at)) is not None:
            raise InvalidImage(CAPTURED_AT_OUT_OF_RANGE, problem)
        await self._require_camera(camera_id)
        sampled = await asyncio.to_thread(self._sample, data)
        if captured_at is None:
            started_at, source = datetime.now(UTC) - timedelta(seconds=sampled.duration_s), "received"
        else:
            started_at, source = captured_at, "client"
        return await self._commit_clip(
            camera_id=camera_id,
            folder=None,
            data=data,
            sampled=sampled,
            media_type=media_type,
            source_file=None,
            original_name=original_name or "upload",
            started_at=started_at,
            captured_at_source=source,
            source="upload",
        )

    def _sample(self, data: bytes) -> SampledClip:
        started = metrics.now()
        sampled = sample_clip(data, self.clip_limits, decode_budget.shared(self.settings.decode_memory_mb))
        metrics.STAGE.labels("clip_decode").observe(metrics.now() - started)
        return sampled

    async def _commit_clip(
        self,
        *,
        camera_id: str,
        folder: str | None,
        data: bytes,
        sampled: SampledClip,
        media_type: str,
        source_file: Path | None,
        original_name: str,
        started_at: datetime,
        captured_at_source: str,
        source: str,
    ) -> IngestResult:
        """The clip file and its frames' files placed, then the clip row, the frames' image rows and
        their jobs in one transaction: the frames reach the detector together, one after another,
        and so land in the camera's same activity batch and event."""
        sha = hashlib.sha256(data).digest()
        day = started_at.astimezone(UTC).strftime("%Y-%m-%d")
        clip_path = self.settings.clips_path / camera_id / day / f"{sha.hex()[:32]}{suffix_for(media_type)}"
        frames = [(frame, hashlib.sha256(frame.jpeg).digest()) for frame in sampled.frames]
        frame_paths = [self.settings.images_path / camera_id / day / f"{h.hex()[:32]}.jpg" for _, h in frames]
        placed = [await asyncio.to_thread(_place, source_file, data, clip_path)]
        for (frame, _), stored in zip(frames, frame_paths, strict=True):
            placed.append(await asyncio.to_thread(_place, None, frame.jpeg, stored))
        image_ids: list[int] = []
        job_ids: list[int] = []
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                camera = await self._camera_in(conn, camera_id, folder)
                clip_id = await clips.insert(
                    conn,
                    clips.NewClip(
                        camera_id=camera.id,
                        sha256=sha,
                        path=str(clip_path),
                        media_type=media_type,
                        original_name=original_name,
                        codec=sampled.codec,
                        width=sampled.width,
                        height=sampled.height,
                        duration_s=sampled.duration_s,
                        frames_decoded=sampled.frames_decoded,
                        frames_sampled=len(frames),
                        size_bytes=len(data),
                        started_at=started_at,
                    ),
                )
                if clip_id is not None:
                    for (frame, digest), stored in zip(frames, frame_paths, strict=True):
                        image_id = await images.insert(
                            conn,
                            images.NewImage(
                                camera_id=camera.id,
                                sha256=digest,
                                path=str(stored),
                                source=source,
                                original_name=f"{original_name}#t={frame.offset_s:.2f}",
                                media_type="image/jpeg",
                                width=frame.width,
                                height=frame.height,
                                size_bytes=len(frame.jpeg),
                                captured_at=started_at + timedelta(seconds=frame.offset_s),
                                captured_at_source=captured_at_source,
                                clip_id=clip_id,
                                clip_offset_s=frame.offset_s,
                            ),
                        )
                        if image_id is not None:  # a frame identical to an earlier image: nothing new
                            image_ids.append(image_id)
                            job_ids.append(await self.queue.enqueue(conn, image_id, camera.id))
        except (UnknownCamera, CameraDisabled):
            for was_placed, stored in zip(placed, [clip_path, *frame_paths], strict=True):
                if was_placed:
                    await asyncio.to_thread(_unlink_quietly, stored)
            raise
        if clip_id is None:
            existing = await clips.find(self.pool, camera.id, sha)
            assert existing is not None
            metrics.INGESTED.labels(camera.id, source, "duplicate").inc()
            log.info("duplicate clip ignored camera_id=%s clip_id=%s file=%s", camera.id, existing[0], original_name)
            known = await clips.frame_images(self.pool, existing[0])
            outcome = ClipOutcome(existing[0], known, [], sampled.duration_s, sampled.frames_decoded)
            return IngestResult("duplicate", camera.id, known[0] if known else None, None, clip=outcome)
        metrics.INGESTED.labels(camera.id, source, "queued").inc(len(image_ids))
        log.info(
            "clip queued camera_id=%s clip_id=%s frames=%d decoded=%d duration_s=%.1f decode_s=%.2f file=%s",
            camera.id,
            clip_id,
            len(image_ids),
            sampled.frames_decoded,
            sampled.duration_s,
            sampled.decode_s,
            original_name,
        )
        outcome = ClipOutcome(clip_id, image_ids, job_ids, sampled.duration_s, sampled.frames_decoded)
        return IngestResult(
            "queued", camera.id, image_ids[0] if image_ids else None, job_ids[0] if job_ids else None, clip=outcome
        )

    async def _folder_camera(
        self, conn: asyncpg.Connection | asyncpg.Pool, camera_id: str, folder: str
    ) -> cameras.Camera:
        """``folder``'s camera, registered as ``camera_id`` on first sight; raises ``CameraIdConflict``."""
        try:
            camera, created = await cameras.ensure_for_folder(conn, camera_id, printable(folder))
        except cameras.FolderIdConflict as conflict:
            raise CameraIdConflict(camera_id) from conflict
        if created:
            log.info("camera registered camera_id=%s folder=%s", camera.id, printable(folder))
        return camera

    async def _camera_in(self, conn: asyncpg.Connection, camera_id: str, folder: str | None) -> cameras.Camera:
        """The camera (a new folder's registered), inside the caller's transaction; raises
        ``CameraIdConflict``, ``UnknownCamera`` or ``CameraDisabled``."""
        if folder is not None:
            camera = await self._folder_camera(conn, camera_id, folder)
        else:
            found = await cameras.get(conn, camera_id)
            if found is None:
                raise UnknownCamera(camera_id)
            camera = found
        if not camera.enabled:
            raise CameraDisabled(camera.id)
        return camera

    def _check_upload(self, data: bytes, taker: JobTaker | None = None) -> _Loaded:
        """Headers, then all of the data read in bounded memory (``check_pixels``): a corrupt or
        cut-short upload is refused at once, without decoding it at full size.

        ``taker``: this process's detect worker, waiting for work with nothing in hand, so the
        picture is likely to be handed to it with its job (``JobQueue.enqueue_camera_image``). A
        JPEG it decodes as RGBX is then checked by decoding it as the worker would, into the
        worker's array (the same entropy decode as the 1/8-scale check, so the same refusals): the
        worker does not decode it again (docs/decisions.md, "One decode at the door")."""
        info = inspect_image(data, self.limits)
        picture = taker.picture_buffer((info.width, info.height)) if taker and decodes_as_rgbx(info) else None
        try:
            check_pixels(
                data,
                info,
                decode_budget.shared(self.settings.decode_memory_mb),
                None if picture is None else picture.array,
            )
        except BaseException:
            if picture is not None:
                picture.give_back()
            raise
        return _Loaded(data, info, hashlib.sha256(data).digest(), picture)

    def _load(self, source: Path, taker: JobTaker | None = None) -> _Loaded:
        with open(source, "rb") as fh:
            data = fh.read(self.limits.max_bytes + 1)
        return self._check_upload(data, taker)

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
        placed: tuple[Path, bool] | None = None,
        key: api_keys.StillActive | None = None,
    ) -> IngestResult:
        """Insert the image and its job; ``placed``: its bytes are in the store already (where,
        and whether this call put them there), else they are placed first."""
        started = metrics.now()
        if folder is None and camera_id not in self._upload_ids:
            # An upload names its camera (anyone on the broker can name any): look it up before a
            # folder is made for it, so an unknown, disabled or malformed id leaves nothing on disk.
            # A camera uploaded to before is checked by the insert (a file placed for one deleted
            # or switched off since is taken back below).
            await self._require_camera(camera_id)
        if placed is None:
            stored = self._stored_path(camera_id, captured_at, loaded)
            placed = (stored, await asyncio.to_thread(_place, source_file, loaded.data, stored))
        stored, placed_now = placed
        try:
            image_id, job_id, camera_id = await self._insert(
                camera_id, folder, loaded, stored, original_name, captured_at, captured_at_source, source, key
            )
        except (UnknownCamera, CameraDisabled, api_keys.KeyRevoked):
            # Deleted or switched off since the look-up (or the upload's key revoked): take back
            # the file and the folders made for it.
            if placed_now:
                await asyncio.to_thread(_unlink_quietly, stored)
                await asyncio.to_thread(_remove_empty_folders, stored.parent, self.settings.images_path)
            raise
        metrics.STAGE.labels("enqueue").observe(metrics.now() - started)
        if image_id is None:
            log.info("duplicate image ignored camera_id=%s file=%s", camera_id, original_name)
            metrics.INGESTED.labels(camera_id, source, "duplicate").inc()
            existing = await images.find(self.pool, camera_id, loaded.sha256)
            return IngestResult("duplicate", camera_id, existing[0] if existing else None)
        metrics.INGESTED.labels(camera_id, source, "queued").inc()
        first = self._announced.level(camera_id)
        if log.isEnabledFor(first):
            log.log(
                first,
                "image queued camera_id=%s image_id=%s job_id=%s file=%s captured_at=%s (%s)%s",
                camera_id,
                image_id,
                job_id,
                original_name,
                captured_at.isoformat(),
                captured_at_source,
                "; the first from this camera since start, its next images are logged at DEBUG"
                if first == logging.INFO
                else "",
            )
        return IngestResult("queued", camera_id, image_id, job_id)

    async def _require_camera(self, camera_id: str) -> None:
        """Raise ``UnknownCamera`` (also for an id outside the camera id grammar) or ``CameraDisabled``."""
        if _CAMERA_ID.fullmatch(camera_id) is None:
            raise UnknownCamera(camera_id)
        camera = await cameras.get(self.pool, camera_id)
        if camera is None:
            raise UnknownCamera(camera_id)
        if not camera.enabled:
            raise CameraDisabled(camera_id)

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
        key: api_keys.StillActive | None = None,
    ) -> tuple[int | None, int | None, str]:
        """Image row and job, in one statement (a new folder's camera registered by one before
        it); (image id or None if a duplicate, job id, camera id)."""
        new_image = images.NewImage(
            camera_id=camera_id,
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
        )
        if folder is None:
            # An upload: one statement, which inserts only while the camera exists and is enabled.
            enabled, image_id, job_id = await self.queue.enqueue_camera_image(
                self.pool, new_image, None, key, loaded.picture
            )
            if not enabled:
                self._upload_ids.discard(camera_id)
                raise UnknownCamera(camera_id) if enabled is None else CameraDisabled(camera_id)
            if len(self._upload_ids) >= _IDS_KEPT:
                self._upload_ids.clear()
            self._upload_ids.add(camera_id)
            return image_id, job_id, camera_id
        if self._folder_ids.get(folder) != camera_id:
            # A new folder: its camera registered by a statement of its own (a camera registered
            # for a file whose insert then fails stays registered: its folder holds a valid image),
            # then inserted as a known folder's file (docs/decisions.md, "A new folder's camera").
            camera = await self._folder_camera(self.pool, camera_id, folder)
            self._remember(folder, camera.id)
        # A known folder: one statement, which inserts only while the camera is still the
        # folder's and enabled.
        enabled, image_id, job_id = await self.queue.enqueue_camera_image(
            self.pool, new_image, printable(folder), picture=loaded.picture
        )
        if enabled is None:
            # Deleted, or the folder re-registered under another id, since it was learned.
            self._folder_ids.pop(folder, None)
            raise CameraIdConflict(camera_id)
        if not enabled:
            raise CameraDisabled(camera_id)
        return image_id, job_id, camera_id

    async def _quarantine(
        self,
        path: Path,
        camera_id: str | None,
        reason: str,
        detail: str,
        *,
        entry: Path | None = None,
        move: bool = True,
    ) -> IngestResult:
        """Record ``path`` as refused and move the file (``entry``: its directory entry at its real
        place, by default ``path``) out of the camera folder into the quarantine folder.
        ``move=False``: the file's real place is outside the cameras folder, so it is only
        recorded, never moved."""
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
        dest = self.settings.quarantine_path / (camera_id or "_unknown") / _fit_name(f"{stamp}_", path.name)
        size: int | None = None
        stored: str | None = None
        if move:
            try:
                size = await asyncio.to_thread(_take_out, entry or path, self.root, dest)
                stored = str(dest)
            except FileNotFoundError:
                return IngestResult("vanished", camera_id)
            except _Refused as refused:
                log.warning("quarantine left the file in place path=%s detail=%s", printable(path), refused.detail)
            except OSError as err:
                log.error("quarantine move failed path=%s error=%s", printable(path), err)
        await quarantine.record(
            self.pool,
            source="file",
            camera_id=camera_id,
            original_path=printable(path),
            stored_path=printable(stored) if stored else None,
            reason=reason,
            detail=detail,
            size_bytes=size,
        )
        return IngestResult("quarantined", camera_id, reason=reason)


def _capture_time(name: str, mtime: float, tz: ZoneInfo) -> tuple[datetime, str] | str:
    """A camera file's capture time and where it came from (its name's stamp, else its mtime),
    or why it has none the server accepts (see ``timerange``)."""
    stamp = timestamp_from_name(name, tz)
    if stamp is not None:
        when, source = stamp, "filename"
    else:
        try:
            when, source = datetime.fromtimestamp(mtime, UTC), "mtime"
        except (OverflowError, OSError, ValueError):
            return f"mtime: {mtime} is not a date"
    problem = capture_time_problem(when)
    return f"{source}: {problem}" if problem is not None else (when, source)


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


def _remove_empty_folders(folder: Path, root: Path) -> None:
    """Remove ``folder`` and its parents below ``root`` while they are empty."""
    while folder != root and folder.is_relative_to(root):
        try:
            folder.rmdir()
        except OSError as err:
            if err.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT):
                return  # in use by another image (or already gone): keep it
            raise
        folder = folder.parent


def _fit_name(prefix: str, name: str) -> str:
    """``prefix + name``, the name's stem shortened to fit in one file name; the suffix is kept."""
    suffix = Path(name).suffix
    if len(os.fsencode(prefix + suffix)) >= _NAME_MAX:
        suffix = ""
    stem = name[: len(name) - len(suffix)]
    while stem and len(os.fsencode(prefix + stem + suffix)) > _NAME_MAX:
        stem = stem[:-1]
    return prefix + stem + suffix


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or path.is_relative_to(folder)


def _locate(path: Path, camera_dir: Path) -> _Located:
    """Where the camera file ``path`` really is; ``_Refused`` unless inside ``camera_dir`` (real).

    ``path``'s folder is resolved: a symlinked folder at any depth, or a symlinked camera
    folder, leads out and is refused without touching the file. A file that is itself a link
    may be followed to a target inside ``camera_dir`` only; the link is then what is moved.
    """
    real_dir = Path(os.path.realpath(path.parent))
    if not _inside(real_dir, camera_dir):
        raise _Refused("outside_camera_folder", f"its folder is really {printable(real_dir)}", None)
    entry = real_dir / path.name
    st = os.lstat(entry)
    if not stat.S_ISLNK(st.st_mode):
        return _Located(entry, entry, st)
    target = Path(os.path.realpath(entry))
    if not _inside(target, camera_dir):
        raise _Refused("symlink_outside_camera_folder", f"link points to {printable(target)}", entry)
    try:
        return _Located(entry, target, os.stat(target))
    except FileNotFoundError:
        raise _Refused("broken_symlink", "link target is missing", entry) from None


def _take_out(entry: Path, tree: Path, dest: Path | None) -> int:
    """Remove the directory entry ``entry`` (a file or a link, never what a link points to), or
    move it to ``dest``; return its size. ``_Refused`` unless its folder really is inside
    ``tree``. The folder is held open while checked and used, so a link swapped in for it
    meanwhile cannot redirect the removal outside."""
    folder_fd = os.open(entry.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        real_dir = Path(os.path.realpath(entry.parent))
        if not _inside(real_dir, tree) or not os.path.samestat(os.stat(real_dir), os.fstat(folder_fd)):
            raise _Refused("outside_camera_folder", f"its folder is really {printable(real_dir)}", None)
        size = os.stat(entry.name, dir_fd=folder_fd, follow_symlinks=False).st_size
        if dest is None:
            os.unlink(entry.name, dir_fd=folder_fd)
            return size
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(entry.name, dest, src_dir_fd=folder_fd)
        except OSError as err:
            if err.errno != errno.EXDEV:
                raise
            _copy_entry(folder_fd, entry.name, dest)
            os.unlink(entry.name, dir_fd=folder_fd)
        return size
    finally:
        os.close(folder_fd)


def _copy_entry(folder_fd: int, name: str, dest: Path) -> None:
    """Copy a file or a link (as a link) to another file system, never following a link."""
    st = os.stat(name, dir_fd=folder_fd, follow_symlinks=False)
    if stat.S_ISLNK(st.st_mode):
        os.symlink(os.readlink(name, dir_fd=folder_fd), dest)
        return
    if not stat.S_ISREG(st.st_mode):
        raise OSError(errno.EINVAL, "not a regular file, cannot be copied", name)
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=folder_fd)
    with open(fd, "rb") as src, open(dest, "xb") as out:
        shutil.copyfileobj(src, out)


def _read_at_most(path: Path, limit: int) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(limit)


def _unlink_quietly(path: Path) -> None:
    # The file may already be gone (a camera retrying the upload, or a second watcher).
    path.unlink(missing_ok=True)
