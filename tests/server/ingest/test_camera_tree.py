"""The camera tree is a boundary: nothing outside it is read, moved or removed, whatever links
exist in it, at start-up or later; and every folder in it is a camera of its own."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import asyncpg
import pytest

from inference_server import demo_assets
from inference_server.config import Settings
from inference_server.detection.ultralytics_backend import UltralyticsDetector
from inference_server.ingest.ingestor import Ingestor
from inference_server.jobs.queue import JobQueue, QueuePolicy
from inference_server.store.db import create_pool
from inference_server.store.migrate import migrate
from tests.support.waiting import wait_until

from ..conftest import running
from .conftest import with_comment

BUS = demo_assets.image("bus.jpg").read_bytes()


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


@pytest.fixture
async def ingest(make_settings: Callable[..., Settings]) -> AsyncIterator[tuple[Ingestor, Settings]]:
    """The real ingestor on a real database, without the watcher: each test hands it paths."""
    settings = make_settings()
    settings.cameras_path.mkdir(parents=True)
    assert settings.database_url is not None
    pool = await create_pool(settings.database_url, 4)
    await migrate(pool)
    yield Ingestor(settings, pool, JobQueue(pool, QueuePolicy(), "tests")), settings
    await pool.close()


@pytest.mark.parametrize(
    "link, file",
    [
        ("porch/linkdir", "porch/linkdir/x.jpg"),  # a symlinked folder in the camera folder
        ("porch/sub/linkdir", "porch/sub/linkdir/x.jpg"),  # ... two levels down
        ("porch/sub/linkdir", "porch/sub/linkdir/deeper/x.jpg"),  # ... with real folders beyond it
        ("porch", "porch/x.jpg"),  # the camera folder itself is a link
    ],
)
async def test_a_file_reached_through_a_symlinked_folder_is_recorded_and_left_where_it_is(
    ingest: tuple[Ingestor, Settings], tmp_path: Path, link: str, file: str
) -> None:
    ingestor, settings = ingest
    cams = settings.cameras_path
    elsewhere = tmp_path / "elsewhere"
    outside_name = Path(file).relative_to(link)
    outside = _write(elsewhere / outside_name, BUS)
    (cams / link).parent.mkdir(parents=True, exist_ok=True)
    (cams / link).symlink_to(elsewhere, target_is_directory=True)

    result = await ingestor.ingest_file(cams.resolve() / file)

    assert (result.status, result.reason) == ("quarantined", "outside_camera_folder")
    assert outside.read_bytes() == BUS  # neither moved, removed nor changed
    assert (cams / link).is_symlink()
    rows = await ingestor.pool.fetch("SELECT reason, stored_path, original_path FROM quarantine")
    assert [(r["reason"], r["stored_path"], r["original_path"]) for r in rows] == [
        ("outside_camera_folder", None, str(cams.resolve() / file))
    ]
    assert await ingestor.pool.fetchval("SELECT count(*) FROM images") == 0
    assert not [p for p in settings.images_path.rglob("*") if p.is_file()]
    assert not settings.images_path.exists() or not any(settings.images_path.rglob("*.jpg"))


async def test_a_link_to_a_folder_inside_the_same_camera_folder_is_followed(
    ingest: tuple[Ingestor, Settings],
) -> None:
    ingestor, settings = ingest
    real = _write(settings.cameras_path / "porch" / "2026" / "x.jpg", BUS)
    (settings.cameras_path / "porch" / "latest").symlink_to("2026", target_is_directory=True)

    result = await ingestor.ingest_file(settings.cameras_path.resolve() / "porch" / "latest" / "x.jpg")

    assert (result.status, result.camera_id) == ("queued", "porch")
    assert not real.exists()  # ingested files leave the camera folder, as always


async def test_two_folders_with_the_same_slug_become_two_cameras(ingest: tuple[Ingestor, Settings]) -> None:
    ingestor, settings = ingest
    cams = settings.cameras_path.resolve()
    first = with_comment(BUS, "Front Door")
    second = with_comment(BUS, "front_door")
    third = with_comment(BUS, "Front Door again")

    a = await ingestor.ingest_file(_write(cams / "Front Door" / "a.jpg", first))
    b = await ingestor.ingest_file(_write(cams / "front_door" / "b.jpg", second))
    c = await ingestor.ingest_file(_write(cams / "Front Door" / "c.jpg", third))

    assert (a.status, b.status, c.status) == ("queued", "queued", "queued")
    hashed = "front_door_" + hashlib.sha256(b"front_door").hexdigest()[:8]
    rows = await ingestor.pool.fetch("SELECT id, folder FROM cameras ORDER BY id")
    assert [(r["id"], r["folder"]) for r in rows] == [("front_door", "Front Door"), (hashed, "front_door")]
    images = await ingestor.pool.fetch("SELECT camera_id, sha256, path FROM images ORDER BY id")
    assert [(r["camera_id"], r["sha256"]) for r in images] == [
        ("front_door", _sha(first)),
        (hashed, _sha(second)),
        ("front_door", _sha(third)),  # the first folder keeps its id
    ]
    # Each camera's files are in its own folder, so deleting one camera cannot take the other's.
    assert [Path(r["path"]).relative_to(settings.images_path).parts[0] for r in images] == [
        "front_door",
        hashed,
        "front_door",
    ]


async def test_a_camera_added_over_rest_adopts_its_folder_and_keeps_its_id(
    ingest: tuple[Ingestor, Settings],
) -> None:
    ingestor, settings = ingest
    await ingestor.pool.execute("INSERT INTO cameras (id, name) VALUES ('front_door', 'Front door')")

    result = await ingestor.ingest_file(_write(settings.cameras_path.resolve() / "Front Door" / "a.jpg", BUS))

    assert result.camera_id == "front_door"
    rows = await ingestor.pool.fetch("SELECT id, folder FROM cameras")
    assert [(r["id"], r["folder"]) for r in rows] == [("front_door", "Front Door")]


async def _quarantined(pool: asyncpg.Pool) -> dict[str, str]:
    rows = await pool.fetch("SELECT original_path, reason FROM quarantine")
    return {r["original_path"]: r["reason"] for r in rows}


async def test_symlinks_present_at_start_up_lead_nothing_out_of_the_camera_tree(
    make_settings: Callable[..., Settings], pose_detector: UltralyticsDetector, tmp_path: Path
) -> None:
    settings = make_settings()
    cams = settings.cameras_path
    elsewhere = tmp_path / "elsewhere"
    before = _write(elsewhere / "before.jpg", with_comment(BUS, "there before the start"))
    links = {
        "porch/linkdir": "symlink_outside_camera_folder",  # depth 1 in a camera folder
        "porch/sub/linkdir": "symlink_outside_camera_folder",  # depth 2
        "garden": "symlinked_camera_folder",  # a camera folder that is a link
    }
    for link in links:
        (cams / link).parent.mkdir(parents=True, exist_ok=True)
        (cams / link).symlink_to(elsewhere, target_is_directory=True)

    async with running(settings, pose_detector) as server:
        after = _write(elsewhere / "x.jpg", with_comment(BUS, "written after the start"))
        nested = _write(elsewhere / "deeper" / "y.jpg", with_comment(BUS, "in a new folder"))
        # A good file after them: once it is in, the watcher has been through the others.
        _write(cams / "porch" / "MDAlarm_20261124-020000.jpg", BUS)
        await wait_until(lambda: server.pool.fetchval("SELECT count(*) = 1 FROM images"), 30)
        await wait_until(lambda: server.pool.fetchval("SELECT count(*) = 3 FROM quarantine"), 30)

        real = cams.resolve()
        assert await _quarantined(server.pool) == {str(real / link): reason for link, reason in links.items()}
        # The links themselves went to quarantine, still pointing where they did.
        stored = [r["stored_path"] for r in await server.pool.fetch("SELECT stored_path FROM quarantine")]
        assert [os.readlink(p) for p in stored] == [str(elsewhere)] * 3
        assert not any((cams / link).is_symlink() for link in links)
        # Nothing outside was ingested, moved or removed.
        stored_shas = {r["sha256"] for r in await server.pool.fetch("SELECT sha256 FROM images")}
        assert stored_shas == {_sha(BUS)}
        for outside in (before, after, nested):
            assert outside.exists()
            assert _sha(outside.read_bytes()) not in stored_shas


async def test_a_known_folders_next_file_is_one_statement(ingest: tuple[Ingestor, Settings]) -> None:
    """The first file of a new folder is three statements (the id looked up, the camera
    registered, the file inserted), no transaction around them; the next ones are one statement
    each: no look-up (issue 20, cost per image). Before stop 50 the first was six round trips:
    the look-up, BEGIN, the folder's camera read, registered, the insert, COMMIT."""
    from bench.roundtrips import RoundTrips

    ingestor, settings = ingest
    cams = settings.cameras_path.resolve()
    with RoundTrips() as first:
        assert (await ingestor.ingest_file(_write(cams / "porch" / "a.jpg", BUS))).status == "queued"
    with RoundTrips() as second:
        result = await ingestor.ingest_file(_write(cams / "porch" / "b.jpg", with_comment(BUS, "b")))
    assert result.status == "queued" and result.camera_id == "porch"
    assert (first.count, second.count) == (3, 1)
    assert not any(s.startswith(("BEGIN", "COMMIT")) for s in first.by_statement)
    rows = await ingestor.pool.fetch("SELECT i.camera_id, j.state FROM images i JOIN jobs j ON j.image_id = i.id")
    assert [(r["camera_id"], r["state"]) for r in rows] == [("porch", "queued"), ("porch", "queued")]
    cameras = await ingestor.pool.fetch("SELECT id, name, folder, enabled FROM cameras")
    assert [tuple(r) for r in cameras] == [("porch", "Porch", "porch", True)]


async def test_a_registered_folders_first_file_after_a_restart_is_the_look_up_and_the_insert(
    ingest: tuple[Ingestor, Settings],
) -> None:
    """A process that has not seen the folder yet (a restart) finds it registered by the look-up
    and inserts its file as a known folder's: two statements (six before stop 50)."""
    from bench.roundtrips import RoundTrips

    ingestor, settings = ingest
    cams = settings.cameras_path.resolve()
    await ingestor.ingest_file(_write(cams / "porch" / "a.jpg", BUS))
    restarted = Ingestor(settings, ingestor.pool, JobQueue(ingestor.pool, QueuePolicy(), "tests"))

    with RoundTrips() as first:
        result = await restarted.ingest_file(_write(cams / "porch" / "b.jpg", with_comment(BUS, "b")))

    assert (result.status, result.camera_id) == ("queued", "porch")
    assert first.count == 2
    assert await ingestor.pool.fetchval("SELECT count(*) FROM cameras") == 1
    assert await ingestor.pool.fetchval("SELECT count(*) FROM jobs") == 2


async def test_a_new_folders_first_files_at_once_register_one_camera_and_are_all_queued(
    ingest: tuple[Ingestor, Settings],
) -> None:
    """A camera's first FTP upload is often several files at once: each is ingested concurrently
    and registers the folder's camera by its own statement; one camera results and every file is
    queued once, whichever statement won."""
    ingestor, settings = ingest
    cams = settings.cameras_path.resolve()
    for round_ in range(4):
        folder = f"yard{round_}"
        files = [_write(cams / folder / f"{n}.jpg", with_comment(BUS, f"{folder}-{n}")) for n in range(4)]
        results = await asyncio.gather(*(ingestor.ingest_file(f) for f in files))
        assert [(r.status, r.camera_id) for r in results] == [("queued", folder)] * 4
        rows = await ingestor.pool.fetch("SELECT id, folder FROM cameras WHERE folder = $1", folder)
        assert [tuple(r) for r in rows] == [(folder, folder)]
        assert await ingestor.pool.fetchval("SELECT count(*) FROM images WHERE camera_id = $1", folder) == 4


async def test_a_new_folder_adopting_a_switched_off_camera_refuses_its_file_and_stays_adopted(
    ingest: tuple[Ingestor, Settings],
) -> None:
    """A new folder whose camera exists without a folder and is switched off (made over REST):
    the folder is adopted by its statement, the file refused as that camera's (quarantined, its
    bytes taken back out of the image store)."""
    ingestor, settings = ingest
    cams = settings.cameras_path.resolve()
    await ingestor.pool.execute("INSERT INTO cameras (id, name, enabled) VALUES ('porch', 'Made over REST', false)")

    result = await ingestor.ingest_file(_write(cams / "porch" / "a.jpg", BUS))

    assert (result.status, result.reason) == ("quarantined", "camera_disabled")
    rows = await ingestor.pool.fetch("SELECT id, name, folder, enabled FROM cameras")
    assert [tuple(r) for r in rows] == [("porch", "Made over REST", "porch", False)]
    assert await ingestor.pool.fetchval("SELECT count(*) FROM images") == 0


async def test_a_camera_switched_off_after_its_first_file_refuses_the_next(ingest: tuple[Ingestor, Settings]) -> None:
    ingestor, settings = ingest
    cams = settings.cameras_path.resolve()
    await ingestor.ingest_file(_write(cams / "porch" / "a.jpg", BUS))
    await ingestor.pool.execute("UPDATE cameras SET enabled = false WHERE id = 'porch'")

    result = await ingestor.ingest_file(_write(cams / "porch" / "b.jpg", with_comment(BUS, "b")))

    assert (result.status, result.reason) == ("quarantined", "camera_disabled")
    assert await ingestor.pool.fetchval("SELECT count(*) FROM images") == 1
    stored = sorted(p.name for p in settings.images_path.rglob("*") if p.is_file())
    assert stored == [f"{_sha(BUS).hex()[:32]}.jpg"]  # b's bytes were taken back out


async def test_a_folder_whose_camera_let_go_of_it_is_looked_up_again(ingest: tuple[Ingestor, Settings]) -> None:
    """The ingestor remembers a folder's camera; when the database no longer says so (the camera
    was detached from the folder, deleted, or the folder registered again elsewhere) the file is
    not stored under the old id: the id is looked up again and the file stored once."""
    ingestor, settings = ingest
    cams = settings.cameras_path.resolve()
    await ingestor.ingest_file(_write(cams / "porch" / "a.jpg", BUS))
    await ingestor.pool.execute("UPDATE cameras SET folder = NULL WHERE id = 'porch'")

    second = with_comment(BUS, "b")
    result = await ingestor.ingest_file(_write(cams / "porch" / "b.jpg", second))

    assert (result.status, result.camera_id) == ("queued", "porch")
    rows = await ingestor.pool.fetch("SELECT id, folder FROM cameras")
    assert [(r["id"], r["folder"]) for r in rows] == [("porch", "porch")]  # adopted again
    assert [r["sha256"] for r in await ingestor.pool.fetch("SELECT sha256 FROM images ORDER BY id")] == [
        _sha(BUS),
        _sha(second),
    ]
    assert await ingestor.pool.fetchval("SELECT count(*) FROM jobs") == 2
