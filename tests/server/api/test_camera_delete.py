"""Deleting a camera takes its files with it: images, event snapshots and quarantined files,
only its own, only inside the data folder."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import aiohttp

from inference_server import demo_assets
from inference_server.config import Settings
from inference_server.detection.ultralytics_backend import UltralyticsDetector
from tests.support.waiting import wait_until

from ..conftest import auth_headers, drop, running


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if not p.is_dir()) if folder.exists() else []


async def test_deleting_a_camera_removes_its_files_and_only_its_own(
    make_settings: Callable[..., Settings], pose_detector: UltralyticsDetector, tmp_path: Path
) -> None:
    settings = make_settings()
    cams = settings.cameras_path
    outside = tmp_path / "outside.jpg"
    outside.write_bytes(b"not the server's")
    async with running(settings, pose_detector) as server:
        drop(demo_assets.image("bus.jpg"), cams / "porch" / "MDAlarm_20261124-020000.jpg")
        drop(demo_assets.image("zidane.jpg"), cams / "yard" / "MDAlarm_20261124-020000.jpg")
        (cams / "porch" / "readme.txt").write_text("camera firmware 1.2.3\n")
        pool = server.pool
        await wait_until(
            lambda: pool.fetchval(
                "SELECT count(DISTINCT camera_id) = 2 FROM events WHERE snapshot_path IS NOT NULL"
                " AND NOT EXISTS (SELECT 1 FROM batches WHERE closed_at IS NULL)"
                " AND NOT EXISTS (SELECT 1 FROM jobs WHERE state IN ('queued', 'running'))"
            ),
            60,
        )
        await wait_until(lambda: pool.fetchval("SELECT count(*) = 1 FROM quarantine"), 30)
        # A row naming a file outside the data folder (as an old or tampered row might).
        await pool.execute(
            "INSERT INTO quarantine (camera_id, original_path, stored_path, reason, detail)"
            " VALUES ('porch', 'x', $1, 'corrupt_image', 'test')",
            str(outside),
        )
        folders = [settings.images_path, settings.snapshots_path, settings.quarantine_path]
        assert [bool(_files(f / "porch")) for f in folders] == [True, True, True]
        yard_before = [_files(f / "yard") for f in folders]
        assert yard_before[0] and yard_before[1]

        headers = await auth_headers(server)
        async with aiohttp.ClientSession(base_url=server.api_url, headers=headers) as http:
            async with http.delete("/api/v1/cameras/porch") as resp:
                assert resp.status == 204
            assert [(f / "porch").exists() for f in folders] == [False, False, False]
            assert [_files(f / "yard") for f in folders] == yard_before
            assert await pool.fetchval("SELECT count(*) FROM quarantine WHERE camera_id = 'porch'") == 0
            assert outside.read_bytes() == b"not the server's"

            # Again: nothing left to delete, and nothing else is touched.
            async with http.delete("/api/v1/cameras/porch") as resp:
                assert resp.status == 404
            assert [_files(f / "yard") for f in folders] == yard_before
        assert await pool.fetchval("SELECT count(*) FROM images WHERE camera_id = 'yard'") == 1
