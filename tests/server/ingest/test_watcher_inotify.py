"""ingest/watcher.py on inotify: no notifier thread, folders made, moved in and renamed while it
runs are watched, and where inotify cannot watch the tree is rescanned instead.

The real watcher and ingestor on a real database and a real inotify (no server, no model): each
test writes files as cameras and FTP servers do and reads what the ingestor stored."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from asyncinotify import Event, Inotify, Mask

from inference_server import demo_assets
from inference_server.config import Settings
from inference_server.ingest import watcher
from inference_server.ingest.ingestor import Ingestor
from inference_server.jobs.queue import JobQueue, QueuePolicy
from inference_server.store.db import create_pool
from inference_server.store.migrate import migrate
from tests.support.waiting import wait_until

from .conftest import with_comment

BUS = demo_assets.image("bus.jpg").read_bytes()
#: Far beyond the watcher's own delays (file_stable_s 0.05) and far below its 60 s safety rescan:
#: a file found in this time was found by a notification (or the fallback's rescans), not by it.
_SEEN_WITHIN_S = 10


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(with_comment(BUS, text))
    return path


async def _upload(path: Path, data: bytes, chunk: int) -> None:
    """As an FTP server writes an upload coming over the network: a write a chunk, the next a
    moment later (the kernel merges identical notifications nobody has read yet)."""
    with path.open("wb") as upload:
        for start in range(0, len(data), chunk):
            upload.write(data[start : start + chunk])
            upload.flush()
            await asyncio.sleep(0.01)


@asynccontextmanager
async def _watching(settings: Settings, *, polling: bool = False) -> AsyncIterator[asyncpg.Pool]:
    settings.cameras_path.mkdir(parents=True, exist_ok=True)
    assert settings.database_url is not None
    pool = await create_pool(settings.database_url, 4)
    await migrate(pool)
    folder_watcher = watcher.FolderWatcher(
        settings.cameras_path,
        Ingestor(settings, pool, JobQueue(pool, QueuePolicy(), "tests")),
        stable_s=0.05,
        polling=polling,
        poll_interval_s=0.2,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(folder_watcher.run(stop))
    try:
        await asyncio.wait_for(folder_watcher.ready.wait(), 10)
        yield pool
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        await pool.close()


async def _ingested(pool: asyncpg.Pool, count: int) -> set[str]:
    await wait_until(
        lambda: pool.fetchval("SELECT count(*) >= $1 FROM images", count), _SEEN_WITHIN_S, what=f"{count} images"
    )
    return {r["original_name"] for r in await pool.fetch("SELECT original_name FROM images")}


async def test_the_watcher_runs_no_thread_of_its_own(make_settings: Callable[..., Settings]) -> None:
    """watchfiles ran its notifier on a thread that took the GIL every 50 ms, all day (1-1.25 ms
    of CPU a second idle, docs/performance.md): inotify is now read on the event loop."""
    before = {t.ident for t in threading.enumerate()}
    async with _watching(make_settings()) as pool:
        _write(make_settings().cameras_path / "porch" / "MDAlarm_20261206-010000.jpg", "one")
        await _ingested(pool, 1)
        started = [t.name for t in threading.enumerate() if t.ident not in before and "asyncio" not in t.name]
        assert started == []


async def test_files_in_folders_made_moved_in_and_renamed_while_watching_are_ingested(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings()
    cams = settings.cameras_path
    async with _watching(settings) as pool:
        # A camera writing into a dated folder tree it makes on the spot.
        _write(cams / "porch" / "2026" / "12" / "06" / "a.jpg", "made on the spot")
        # A folder with a file in it, written elsewhere and moved in whole.
        _write(tmp_path / "staging" / "garden" / "b.jpg", "moved in")
        (tmp_path / "staging" / "garden").rename(cams / "garden")
        assert await _ingested(pool, 2) == {"porch/2026/12/06/a.jpg", "garden/b.jpg"}

        # A watched folder renamed: its files are reported under the new name, not the old.
        (cams / "garden" / "old").mkdir()
        await asyncio.sleep(0.2)
        (cams / "garden" / "old").rename(cams / "garden" / "new")
        _write(cams / "garden" / "new" / "c.jpg", "in the renamed folder")
        assert "garden/new/c.jpg" in await _ingested(pool, 3)
        assert await pool.fetchval("SELECT count(*) FROM quarantine") == 0


async def test_polling_rescans_the_tree(
    make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    """watch_polling (network shares): no inotify, a rescan every poll interval."""
    settings = make_settings()
    caplog.set_level(logging.INFO, logger=watcher.__name__)
    async with _watching(settings, polling=True) as pool:
        _write(settings.cameras_path / "porch" / "sub" / "a.jpg", "polled")
        assert await _ingested(pool, 1) == {"porch/sub/a.jpg"}
    assert "not notified of files (polling asked for (watch_polling))" in caplog.text


async def test_a_full_watch_table_falls_back_to_rescans_and_says_so(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The kernel's watch limit (fs.inotify.max_user_watches, ENOSPC) reached at the third
    folder: a fake of that limit, which the machine running the tests cannot be made to hit
    without changing a system-wide setting."""
    settings = make_settings()
    for camera in ("a", "b", "c", "d"):
        (settings.cameras_path / camera).mkdir(parents=True)
    real_add = Inotify.add_watch
    added: list[Path] = []

    def limited(self: Inotify, path: Any, mask: Mask) -> Any:
        if len(added) >= 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        added.append(path)
        return real_add(self, path, mask)

    monkeypatch.setattr(Inotify, "add_watch", limited)
    async with _watching(settings) as pool:
        for camera in ("a", "b", "c", "d"):
            _write(settings.cameras_path / camera / "x.jpg", camera)
        assert await _ingested(pool, 4) == {"a/x.jpg", "b/x.jpg", "c/x.jpg", "d/x.jpg"}
    assert "not notified of files (cannot watch" in caplog.text
    assert "rescanning every 0.2 s" in caplog.text


async def test_after_a_queue_overflow_folders_made_meanwhile_are_watched_and_listed(
    make_settings: Callable[..., Settings],
) -> None:
    """IN_Q_OVERFLOW: the kernel dropped notifications (a burst beyond fs.inotify.max_queued_events,
    16,384 by default). The overflow is given to the watcher as the kernel gives it (an event with
    no watch); the folder made while notifications were lost is watched and its file found."""
    settings = make_settings()
    cams = settings.cameras_path
    cams.mkdir(parents=True)
    folder_watcher = watcher.FolderWatcher(
        cams, Ingestor.__new__(Ingestor), stable_s=0.05, polling=False, poll_interval_s=0.2
    )
    with Inotify() as inotify:
        tree = watcher._Tree(inotify)
        tree.add(folder_watcher.root)
        lost = _write(cams / "porch" / "lost" / "a.jpg", "while notifications were lost")
        # What the kernel reported meanwhile is thrown away, as an overflow throws it away.
        inotify.sync_timeout = 0.5
        while inotify.sync_get() is not None:
            pass
        assert folder_watcher._on_event(tree, Event(None, Mask.Q_OVERFLOW, 0, None))
        assert set(folder_watcher._pending) == {lost.resolve()}
        watched = {w.path for w in inotify.watches}
        assert {cams.resolve() / "porch", cams.resolve() / "porch" / "lost"} <= watched


async def test_an_upload_in_many_writes_is_a_couple_of_notifications(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An FTP upload arrives in chunks: each write was a notification for the event loop to
    handle (``IN_MODIFY``: 19 in all for bus.jpg in 8 KiB writes). The file is watched for its
    size to settle once it is seen, so only its creation and its close are asked for."""
    settings = make_settings()
    handled: list[int] = []
    on_event = watcher.FolderWatcher._on_event

    def counted(self: watcher.FolderWatcher, tree: Any, event: Event) -> bool:
        handled.append(int(event.mask))
        return on_event(self, tree, event)

    monkeypatch.setattr(watcher.FolderWatcher, "_on_event", counted)
    (settings.cameras_path / "porch").mkdir(parents=True)
    async with _watching(settings) as pool:
        data = with_comment(BUS, "in chunks")
        await _upload(settings.cameras_path / "porch" / "chunked.jpg", data, 8192)
        assert await _ingested(pool, 1) == {"porch/chunked.jpg"}
    assert len(data) // 8192 >= 16
    assert len(handled) <= 3, [hex(m) for m in handled]
