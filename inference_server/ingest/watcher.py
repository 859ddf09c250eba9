"""Camera-folder watcher: notices new files (inotify, or polling for network shares) and
hands each one to the ingestor once it is complete.

"Complete" means the file's size and mtime have not changed for ``file_stable_s``: an FTP
upload grows in chunks, and a camera gives no other signal that it has finished.

Symlinked folders are never descended into: the scans list them, and the ingestor moves the
link itself to quarantine. The start-up scan does so before notification starts, because the
notify crate follows symlinked folders when it sets up its watches; a file that still arrives
through one is refused by the ingestor (its real place is outside) and left alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from watchfiles import Change, awatch
from watchfiles._rust_notify import WatchfilesRustInternalError

from inference_server.ingest.ingestor import OUTSIDE_REASONS, Ingestor, printable
from inference_server.store.db import DB_ERRORS

log = logging.getLogger(__name__)

_TEMP_SUFFIXES = (".part", ".tmp", ".partial", ".filepart", ".crdownload", "~")
_RETRY_AFTER_ERROR_S = 5.0
_FIRST_RESCAN_S = 2.0
_RESCAN_EVERY_S = 60.0


@dataclass(frozen=True, slots=True)
class _Found:
    files: list[Path]
    #: Symlinks to folders met on the way: listed, never followed.
    linked_folders: list[Path]


def _walk(folder: Path) -> _Found:
    files: list[Path] = []
    links: list[Path] = []
    for dirpath, dirs, names in os.walk(folder, followlinks=False):
        here = Path(dirpath)
        files += (here / name for name in names)
        links += (here / name for name in dirs if os.path.islink(here / name))
    return _Found(files, links)


def is_temporary(name: str) -> bool:
    """Names FTP servers and copy tools use while a file is still being written."""
    return name.startswith(".") or name.lower().endswith(_TEMP_SUFFIXES)


@dataclass(slots=True)
class _Seen:
    size: int
    mtime_ns: int
    stable_since: float
    not_before: float = 0.0


class FolderWatcher:
    def __init__(
        self,
        root: Path,
        ingestor: Ingestor,
        *,
        stable_s: float,
        polling: bool,
        poll_interval_s: float,
    ) -> None:
        self.root = root.resolve()
        self.ingestor = ingestor
        self.stable_s = stable_s
        self.polling = polling
        self.poll_interval_s = poll_interval_s
        self._pending: dict[Path, _Seen | None] = {}
        self._tick = max(0.02, min(0.25, stable_s / 4))
        self.ready = asyncio.Event()
        #: Set when a file joins ``_pending``: wakes the check loop from its idle wait.
        self._seen = asyncio.Event()
        self._rescanning = False
        #: Paths refused as outside the camera folders (seen through a symlinked folder the
        #: notifier follows): not handed to the ingestor again until the next full rescan.
        self._outside: set[Path] = set()

    async def run(self, stop: asyncio.Event) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        checker = asyncio.create_task(self._check_loop(stop), name="watcher-check")
        try:
            while not stop.is_set():
                try:
                    await self._watch(stop)
                except* WatchfilesRustInternalError as errors:
                    # notify fails on any path that is not UTF-8 (an FTP server writing latin-1
                    # names), and cannot watch at all while such a folder exists. Until it can,
                    # rescan (os.walk reads any name) every poll interval: slower, nothing lost.
                    log.log(
                        logging.DEBUG if self._rescanning else logging.WARNING,
                        "file watching failed, rescanning every %.1f s until it works error=%s",
                        self.poll_interval_s,
                        errors.exceptions[0],
                    )
                    self._rescanning = True
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), self.poll_interval_s)
        finally:
            checker.cancel()
            await asyncio.gather(checker, return_exceptions=True)

    async def _watch(self, stop: asyncio.Event) -> None:
        watch = awatch(
            self.root,
            stop_event=stop,
            force_polling=self.polling,
            poll_delay_ms=int(self.poll_interval_s * 1000),
            debounce=200,
            # The notifier's thread takes the GIL every step to look for changes and the stop
            # event: 20 ms cost 2 ms of CPU a second all day; 50 (watchfiles' default) 0.5, for
            # up to ~40 ms more before a new file is seen (docs/decisions.md, stop 33).
            step=50,
            recursive=True,
            ignore_permission_denied=True,
        )
        # Files that arrived while the server was down are found by the first scan.
        await self._rescan()
        if not self.ready.is_set():
            self.ready.set()
            log.info("watching camera folders root=%s polling=%s", self.root, self.polling)
        async for changes in watch:
            self._rescanning = False
            for change, raw in changes:
                if change != Change.deleted:
                    self._see(Path(raw))

    async def _rescan(self) -> None:
        # Walk in a thread, register on the loop: only the loop touches _pending.
        found = await asyncio.to_thread(_walk, self.root)
        self._outside.clear()
        for path in found.files:
            self._see(path)
        # Symlinked folders go to quarantine now, not after file_stable_s: at start-up this
        # runs before the notifier sets up its watches (it would follow them out).
        for link in found.linked_folders:
            if link not in self._pending:
                await self._ingest(link, None)

    def _see(self, path: Path) -> None:
        if is_temporary(path.name) or path in self._pending or path in self._outside:
            return
        if path.is_dir() and not path.is_symlink():
            # A folder copied in whole can hold files written before its watch existed.
            found = _walk(path)
            for file in (*found.files, *found.linked_folders):
                self._see(file)
            return
        self._pending[path] = None
        self._seen.set()

    async def _check_loop(self, stop: asyncio.Event) -> None:
        # Safety net: a full rescan shortly after start (a file written between the first scan
        # and the moment notification began) and then periodically (an inotify queue overflow).
        next_rescan = time.monotonic() + _FIRST_RESCAN_S
        while not stop.is_set():
            if self._pending:
                await asyncio.sleep(self._tick)
            else:
                # Nothing to check: sleep until a file is seen or the next rescan is due, rather
                # than turning the event loop every tick for nothing (8-50 times a second).
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._seen.wait(), max(0.0, next_rescan - time.monotonic()))
                self._seen.clear()
            if time.monotonic() >= next_rescan:
                next_rescan = time.monotonic() + _RESCAN_EVERY_S
                await self._rescan()
            if self._pending:
                await self._check_pending()

    async def _check_pending(self) -> None:
        now = time.monotonic()
        ready: list[Path] = []
        for path, seen in list(self._pending.items()):
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                del self._pending[path]
                continue
            if seen is None or (st.st_size, st.st_mtime_ns) != (seen.size, seen.mtime_ns):
                self._pending[path] = _Seen(st.st_size, st.st_mtime_ns, now)
                if self.stable_s > 0:
                    continue
                seen = self._pending[path]
            assert seen is not None
            if now - seen.stable_since >= self.stable_s and now >= seen.not_before:
                ready.append(path)
        for path in sorted(ready):
            await self._ingest(path, self._pending.pop(path))

    async def _ingest(self, path: Path, seen: _Seen | None) -> None:
        try:
            result = await self.ingestor.ingest_file(path)
        except DB_ERRORS as err:
            # The database or the disk is unhappy: keep the file and try again later.
            log.error("ingest failed, will retry file=%s error=%r", printable(path), err)
            self._retry_later(path, seen)
        except Exception:
            # A bug met by one file must not end this loop: every camera's ingest would
            # stop silently. Keep the file and try it again later, as above.
            log.exception("ingest crashed, will retry file=%s", printable(path))
            self._retry_later(path, seen)
        else:
            if result.reason in OUTSIDE_REASONS:
                self._outside.add(path)

    def _retry_later(self, path: Path, seen: _Seen | None) -> None:
        if seen is not None:
            seen.not_before = time.monotonic() + _RETRY_AFTER_ERROR_S
        self._pending[path] = seen
