"""Whatever lands in a camera folder, the server keeps going: bad files are quarantined with
a reason and moved out of the way, good files around them still become events."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import Callable
from pathlib import Path

import asyncpg

from inference_server import demo_assets
from inference_server.config import Settings
from inference_server.detection.ultralytics_backend import UltralyticsDetector
from inference_server.ingest.filenames import camera_id_for_folder
from tests.support.waiting import wait_until

from ..conftest import running
from .conftest import broken_huffman_jpeg, cut_in_half, encoded, with_comment

BUS = demo_assets.image("bus.jpg").read_bytes()  # four people
ZIDANE = demo_assets.image("zidane.jpg").read_bytes()  # two people
ASTRONAUT = demo_assets.image("astronaut.png").read_bytes()  # one person, a PNG
PRIVATE = with_comment(ZIDANE, "a file outside the camera folders")


def _write(path: Path | bytes, data: bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(data)


def _upload_slowly(path: Path, chunks: list[bytes], pause_s: float) -> None:
    """An FTP upload: one open file growing chunk by chunk."""
    with open(path, "wb") as upload:
        for chunk in chunks:
            upload.write(chunk)
            upload.flush()
            time.sleep(pause_s)


def _read(path: str | Path) -> bytes:
    return Path(path).read_bytes()


def _link_target(path: str) -> Path | None:
    return Path(path).readlink() if Path(path).is_symlink() else None


def _left_in(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_symlink() or p.is_file())


async def _settled(pool: asyncpg.Pool, images: int, quarantined: int) -> bool:
    row = await pool.fetchrow(
        "SELECT (SELECT count(*) FROM images) AS images,"
        " (SELECT count(*) FROM quarantine) AS quarantined,"
        " (SELECT count(*) FROM jobs WHERE state IN ('queued', 'running')) AS pending"
    )
    assert row is not None
    return bool(row["images"] == images and row["quarantined"] == quarantined and row["pending"] == 0)


async def _outcomes(pool: asyncpg.Pool) -> dict[str, tuple[str, bool, int]]:
    """Per ingested file: its job's state, whether people were detected, and how many events the
    camera activity it belongs to (its batch) produced."""
    rows = await pool.fetch(
        "SELECT i.original_name, j.state,"
        " (SELECT count(*) FROM detections d WHERE d.image_id = i.id) > 0 AS detected,"
        " (SELECT count(*) FROM events e JOIN batch_images bi ON bi.batch_id = e.batch_id"
        "  WHERE bi.image_id = i.id) AS events"
        " FROM images i JOIN jobs j ON j.image_id = i.id"
    )
    return {r["original_name"]: (r["state"], r["detected"], r["events"]) for r in rows}


async def test_bad_files_are_quarantined_while_good_ones_become_events(
    make_settings: Callable[..., Settings],
    pose_detector: UltralyticsDetector,
    jpeg_bomb: Path,
    tmp_path: Path,
) -> None:
    settings = make_settings(max_image_bytes=6 * 1024 * 1024)
    cams = settings.cameras_path
    private = tmp_path / "elsewhere" / "private.jpg"
    _write(private, PRIVATE)
    long_good = "MDAlarm_20261124-020500_" + "x" * 176 + ".jpg"  # 204 bytes
    long_bad = "y" * 245 + ".jpg"  # 249 bytes: with the quarantine's time prefix it would pass 255

    # Distinct bytes per file (a comment segment), as successive shots are: same bytes are duplicates.
    good = {
        "front/MDAlarm_20261124-020000.jpg": BUS,
        "front/Front Door snap 1.jpg": with_comment(BUS, "spaces"),
        "front/Kamera Haustür – Überwachung.jpg": with_comment(BUS, "unicode"),
        "front/-rf.jpg": with_comment(BUS, "leading dash"),
        f"front/{long_good}": with_comment(BUS, "long name"),
        "front/line\nbreak.jpg": with_comment(BUS, "newline"),
        "back/Schedule_20261124-030000.jpg": ZIDANE,
        "Garten Süd/Front_00_20261124040000.png": ASTRONAUT,
    }
    bad = {
        "front/MDAlarm_20261124-020001.jpg": (broken_huffman_jpeg(BUS), "corrupt_image"),
        "front/MDAlarm_20261124-020002.jpg": (cut_in_half(BUS), "truncated"),
        "front/MDAlarm_20261124-020004.jpg": (cut_in_half(BUS) + b"\xff\xd9", "truncated"),  # forged end
        "front/MDAlarm_20261124-020005.jpg": (encoded((32, 65000), "JPEG"), "bad_aspect_ratio"),
        "front/MDAlarm_20261124-020003.jpg": (b"", "empty_file"),
        "back/alarm.jpg": (b"motion detected on channel 1\n", "not_an_image"),
        "back/bomb.jpg": (_read(jpeg_bomb), "too_many_pixels"),
        "back/animated.jpg": (_read(demo_assets.image("no_time_for_that_tiny.gif")), "unsupported_format"),
        "back/thumb.jpg": (encoded((8, 8), "JPEG"), "too_small"),
        "back/huge.jpg": (ZIDANE + b"\x00" * (7 * 1024 * 1024), "too_large"),
        "back/readme.txt": (b"camera firmware 1.2.3\n", "unsupported_file_type"),
        f"back/{long_bad}": (b"not a picture", "not_an_image"),
        "stray.jpg": (with_comment(ZIDANE, "top level"), "not_in_camera_folder"),
    }

    async with running(settings, pose_detector) as server:
        for name, data in [*good.items(), *((n, d) for n, (d, _) in bad.items())]:
            _write(cams / name, data)
        (cams / "front" / "link.jpg").symlink_to(private)

        await wait_until(lambda: _settled(server.pool, images=len(good), quarantined=len(bad) + 1), 45)

        rows = await server.pool.fetch(
            "SELECT q.reason, q.original_path, q.stored_path, q.camera_id, i.original_name"
            " FROM quarantine q LEFT JOIN images i ON i.path = q.original_path"
        )
        # Every refusal happens at the door (the corrupt one too): each names the camera's file.
        quarantined = {str(Path(r["original_path"]).relative_to(cams.resolve())): r for r in rows}
        assert all(r["original_name"] is None for r in rows)
        assert {name: r["reason"] for name, r in quarantined.items()} == {
            **{name: reason for name, (_, reason) in bad.items()},
            "front/link.jpg": "symlink_outside_camera_folder",
        }
        assert quarantined["stray.jpg"]["camera_id"] is None
        assert quarantined["front/MDAlarm_20261124-020001.jpg"]["camera_id"] == "front"
        # A person can look at exactly what was refused.
        assert {name: _read(r["stored_path"]) for name, r in quarantined.items() if name in bad} == {
            name: data for name, (data, _) in bad.items()
        }
        assert _link_target(quarantined["front/link.jpg"]["stored_path"]) == private

        # The link's target was neither moved, changed nor ingested.
        assert _read(private) == PRIVATE
        private_sha = hashlib.sha256(PRIVATE).digest()
        assert await server.pool.fetchval("SELECT count(*) FROM images WHERE sha256 = $1", private_sha) == 0

        # Nothing is left behind for the next restart to trip over.
        assert _left_in(cams) == []

        await wait_until(lambda: server.pool.fetchval("SELECT count(*) = 0 FROM batches WHERE closed_at IS NULL"))
        assert await _outcomes(server.pool) == {name: ("done", True, 1) for name in good}
        cameras = await server.pool.fetch("SELECT id, folder FROM cameras ORDER BY id")
        assert [(c["id"], c["folder"]) for c in cameras] == [
            ("back", "back"),
            ("front", "front"),
            ("garten_s_d", "Garten Süd"),
        ]


async def test_names_that_are_not_utf8_are_ingested_and_watching_goes_on(
    make_settings: Callable[..., Settings], pose_detector: UltralyticsDetector
) -> None:
    # Old cameras and FTP servers write latin-1 names; the file system takes any bytes.
    settings = make_settings()
    cams = os.fsencode(settings.cameras_path)
    async with running(settings, pose_detector) as server:
        _write(cams + b"/front/caf\xe9.jpg", BUS)
        _write(cams + b"/Garten S\xfcd/MDAlarm_20261124-060000.jpg", ZIDANE)
        await wait_until(lambda: server.pool.fetchval("SELECT count(*) = 2 FROM jobs WHERE state = 'done'"), 30)

        _write(settings.cameras_path / "front" / "MDAlarm_20261124-060100.jpg", ASTRONAUT)
        await wait_until(lambda: server.pool.fetchval("SELECT count(*) = 3 FROM jobs WHERE state = 'done'"), 30)
        # A camera's event may be opened when its activity closes: wait for them all to close.
        await wait_until(lambda: server.pool.fetchval("SELECT count(*) = 0 FROM batches WHERE closed_at IS NULL"))

        assert await _outcomes(server.pool) == {
            "front/caf\\xe9.jpg": ("done", True, 1),
            "Garten S\\xfcd/MDAlarm_20261124-060000.jpg": ("done", True, 1),
            "front/MDAlarm_20261124-060100.jpg": ("done", True, 1),
        }
        camera_ids = await server.pool.fetch("SELECT id FROM cameras ORDER BY id")
        assert [c["id"] for c in camera_ids] == sorted(["front", camera_id_for_folder(os.fsdecode(b"Garten S\xfcd"))])
        assert await server.pool.fetchval("SELECT count(*) FROM quarantine") == 0
        assert _left_in(settings.cameras_path) == []


async def test_file_still_being_written_is_ingested_once_complete(
    make_settings: Callable[..., Settings], pose_detector: UltralyticsDetector
) -> None:
    settings = make_settings(file_stable_s=0.6)
    path = settings.cameras_path / "porch" / "MDAlarm_20261124-050000.jpg"
    chunks = [BUS[i : i + 16 * 1024] for i in range(0, len(BUS), 16 * 1024)]
    assert len(chunks) >= 6  # with 0.2 s pauses the upload outlasts file_stable_s twice over

    async with running(settings, pose_detector) as server:
        path.parent.mkdir(parents=True)
        await asyncio.to_thread(_upload_slowly, path, chunks, 0.2)
        await wait_until(lambda: server.pool.fetchval("SELECT count(*) = 1 FROM jobs WHERE state = 'done'"))

        images = await server.pool.fetch("SELECT sha256, size_bytes, width, height FROM images")
        assert [dict(r) for r in images] == [
            {"sha256": hashlib.sha256(BUS).digest(), "size_bytes": len(BUS), "width": 810, "height": 1080}
        ]
        assert await server.pool.fetchval("SELECT count(*) FROM quarantine") == 0
        await wait_until(lambda: server.pool.fetchval("SELECT count(*) = 1 FROM events WHERE ended_at IS NOT NULL"))
        assert _left_in(settings.cameras_path) == []
