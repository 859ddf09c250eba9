"""Camera-folder watcher: notices new files (inotify, or rescans for network shares) and hands
each one to the ingestor once it is complete.

"Complete" means the file's size and mtime have not changed for ``file_stable_s``: an FTP
upload grows in chunks, and a camera gives no other signal that it has finished.

The notifications are read on the event loop (asyncinotify: the kernel's inotify, no thread):
an idle watcher costs nothing until a file lands, and a file is seen as soon as it is written
(docs/decisions.md, "The folder watcher reads inotify on the event loop"). Every folder of the
tree gets its own watch, added before the folder is listed, so a file written into a folder
that has just appeared is found by the listing or reported by the watch. Names are bytes to
the kernel: any name a camera or FTP server writes (latin-1 included) is watched.

Symlinks are never followed: a watch is added only to a real folder (``ONLYDIR`` with
``DONT_FOLLOW``), a symlinked folder is listed and the ingestor moves the link itself to
quarantine. Where inotify cannot watch (polling asked for: network shares and some Docker
mounts, where other machines' writes raise no notification; the kernel's watch limit reached;
no inotify at all) the tree is rescanned every ``watch_poll_interval_s`` instead, said in the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from inference_server.ingest.ingestor import OUTSIDE_REASONS, Ingestor, printable
from inference_server.store.db import DB_ERRORS

if TYPE_CHECKING:
    from asyncinotify import Event, Inotify

log = logging.getLogger(__name__)

_TEMP_SUFFIXES = (".part", ".tmp", ".partial", ".filepart", ".crdownload", "~")
_RETRY_AFTER_ERROR_S = 5.0
_FIRST_RESCAN_S = 2.0
_RESCAN_EVERY_S = 60.0
#: inotify's mask bits (linux/inotify.h; asyncinotify's ``Mask`` names them too).
_CLOSE_WRITE, _MOVED_FROM, _MOVED_TO, _CREATE = 0x8, 0x40, 0x80, 0x100
_Q_OVERFLOW, _IGNORED, _ISDIR = 0x4000, 0x8000, 0x40000000
_ONLYDIR, _DONT_FOLLOW, _EXCL_UNLINK = 0x01000000, 0x02000000, 0x04000000
#: What a folder's watch reports: a file or folder appearing, moved in or written and closed (a
#: file that was there already, written over), and a folder moved out (its watches go with it).
#: Not each write (``IN_MODIFY``: an FTP upload in 8 KiB chunks is a notification each): a file
#: seen is watched for its size to settle anyway (``_check_pending``). Only on a real folder,
#: never through a symlink.
_WATCH_MASK = _CREATE | _CLOSE_WRITE | _MOVED_TO | _MOVED_FROM | _ONLYDIR | _DONT_FOLLOW | _EXCL_UNLINK


@dataclass(slots=True)
class _Found:
    files: list[Path] = field(default_factory=list)
    #: Symlinks to folders met on the way: listed, never followed.
    linked_folders: list[Path] = field(default_factory=list)


def _list_into(here: Path, found: _Found, folders: list[Path]) -> None:
    """``here``'s entries: files (and links to files) into ``found``, links to folders too,
    real folders into ``folders``; nothing when it is gone or unreadable."""
    try:
        with os.scandir(here) as entries:
            for entry in entries:
                path = here / entry.name
                if entry.is_dir(follow_symlinks=False):
                    folders.append(path)
                elif entry.is_symlink() and entry.is_dir():
                    found.linked_folders.append(path)
                else:
                    found.files.append(path)
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return


def _walk(folder: Path) -> _Found:
    found = _Found()
    folders = [folder]
    while folders:
        _list_into(folders.pop(), found, folders)
    return found


class _WatchLimit(OSError):
    """inotify cannot watch another folder (``fs.inotify.max_user_watches``) or start at all."""


class _Tree:
    """An inotify watch on a folder and on every real folder under it."""

    def __init__(self, inotify: Inotify) -> None:
        self.inotify = inotify

    def add(self, folder: Path) -> _Found:
        """Watch ``folder`` and the folders under it, each before it is listed; the files and
        symlinked folders found in them (written before their watch existed)."""
        from asyncinotify import Mask

        found = _Found()
        folders = [folder]
        while folders:
            here = folders.pop()
            try:
                self.inotify.add_watch(here, Mask(_WATCH_MASK))
            except (FileNotFoundError, NotADirectoryError):
                continue  # gone already, or a symlink by now
            except PermissionError:
                log.warning("camera folder not readable, not watched folder=%s", printable(here))
                continue
            except OSError as err:
                if err.errno in (errno.ENOSPC, errno.ENOMEM):
                    raise _WatchLimit(
                        f"cannot watch {printable(here)}: {err.strerror} (fs.inotify.max_user_watches)"
                    ) from err
                raise
            _list_into(here, found, folders)
        return found

    def drop(self, folder: Path) -> None:
        """Stop watching ``folder`` and the folders under it (moved out, or moved within the tree:
        its new place is watched anew)."""
        for watch in self.inotify.watches:
            if watch.path == folder or folder in watch.path.parents:
                with contextlib.suppress(OSError):  # the kernel may have dropped it already
                    self.inotify.rm_watch(watch)


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
        #: Paths the ingestor refused as outside the camera folders: not handed to it again
        #: until the next full rescan.
        self._outside: set[Path] = set()

    async def run(self, stop: asyncio.Event) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        checker = asyncio.create_task(self._check_loop(stop), name="watcher-check")
        try:
            while not stop.is_set():
                why = "polling asked for (watch_polling)" if self.polling else await self._watch(stop)
                if why is None:
                    continue  # the cameras folder itself went away: made again, watched again
                level = logging.INFO if self.polling else logging.WARNING
                log.log(level, "not notified of files (%s): rescanning every %.1f s", why, self.poll_interval_s)
                await self._poll(stop)
        finally:
            checker.cancel()
            await asyncio.gather(checker, return_exceptions=True)

    async def _poll(self, stop: asyncio.Event) -> None:
        """The fallback: a full rescan every poll interval, until the server stops."""
        self._mark_ready()
        while not stop.is_set():
            await self._rescan()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.poll_interval_s)

    def _mark_ready(self) -> None:
        if not self.ready.is_set():
            self.ready.set()
            log.info("watching camera folders root=%s polling=%s", self.root, self.polling)

    async def _watch(self, stop: asyncio.Event) -> str | None:
        """Read inotify until ``stop``; why it cannot (the caller rescans instead), or None when
        the cameras folder was removed (the caller makes it and watches again)."""
        try:
            from asyncinotify import Inotify
        except (ImportError, OSError, AttributeError) as err:  # no inotify here: not Linux
            return f"inotify unavailable: {err!r}"
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            inotify = Inotify()
        except OSError as err:  # fs.inotify.max_user_instances reached
            return f"inotify unavailable: {err}"
        with inotify:
            tree = _Tree(inotify)
            try:
                # Watches first, then the first full scan: files that arrived while the server
                # was down, and symlinked folders (to quarantine at once).
                tree.add(self.root)
                await self._rescan()
                self._mark_ready()
                async for event in _events(inotify, stop):
                    if not self._on_event(tree, event):
                        return None
            except _WatchLimit as err:
                return str(err)
        return None

    def _on_event(self, tree: _Tree, event: Event) -> bool:
        """Act on one notification; False when the cameras folder itself is gone."""
        mask = int(event.mask)
        if mask & _Q_OVERFLOW:
            # The kernel dropped notifications: watch what appeared meanwhile, look at everything.
            log.warning("inotify queue overflowed: rescanning the camera folders")
            self._see_found(tree.add(self.root))
            return True
        path = event.path
        if mask & _IGNORED:
            return path != self.root
        if path is None:
            return True
        if mask & _ISDIR:
            if mask & _MOVED_FROM:
                tree.drop(path)
            elif mask & (_CREATE | _MOVED_TO):
                # A folder made or moved in: watched before it is listed, so no file is missed.
                self._see_found(tree.add(path))
            return True
        if not mask & _MOVED_FROM:
            self._see(path)
        return True

    def _see_found(self, found: _Found) -> None:
        for path in (*found.files, *found.linked_folders):
            self._see(path)

    async def _rescan(self) -> None:
        # Walk in a thread, register on the loop: only the loop touches _pending.
        found = await asyncio.to_thread(_walk, self.root)
        self._outside.clear()
        for path in found.files:
            self._see(path)
        # Symlinked folders go to quarantine now, not after file_stable_s.
        for link in found.linked_folders:
            if link not in self._pending:
                await self._ingest(link, None)

    def _see(self, path: Path) -> None:
        if is_temporary(path.name) or path in self._pending or path in self._outside:
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


async def _events(inotify: Inotify, stop: asyncio.Event) -> AsyncIterator[Event]:
    """``inotify``'s notifications until ``stop`` is set."""
    stopping = asyncio.ensure_future(stop.wait())
    try:
        while True:
            getting = asyncio.ensure_future(inotify.get())
            await asyncio.wait((getting, stopping), return_when=asyncio.FIRST_COMPLETED)
            if not getting.done():
                getting.cancel()
                await asyncio.gather(getting, return_exceptions=True)
                return
            yield getting.result()
    finally:
        stopping.cancel()
