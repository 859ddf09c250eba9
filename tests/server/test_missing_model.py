"""A first start without its detector model (no internet for the build's download, a wrong path)
is not a crash loop: the server runs, takes images in and queues them, and ``hsi/status`` names
the missing model and what to do (the add-on's first start, issue 21)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from inference_server import demo_assets
from inference_server.config import Settings

from .conftest import running


async def test_server_starts_without_its_model_queues_images_and_says_why(
    tmp_path: Path, make_settings: Callable[..., Settings]
) -> None:
    missing = tmp_path / "models" / "detector.onnx"
    settings = make_settings(detector_backend="onnx", detector_weights=missing, ftp_enabled=False)
    async with running(settings) as server:
        status = await server.status.current()
        assert status.detector is None
        [detector] = [m for m in status.models if m.name == "detector"]
        assert detector.state == "missing" and detector.device == "none"
        assert detector.detail is not None and str(missing) in detector.detail
        assert "HSI_DETECTOR_WEIGHTS" in detector.detail  # what to do
        # Images are still taken in: they wait in the queue for the model.
        folder = settings.cameras_path / "front"
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(demo_assets.image("bus.jpg"), folder / "bus.jpg")
        await server.ingestor.ingest_file(folder / "bus.jpg")
        queued: dict[str, Any] = (await server.status.current()).queue
        assert queued["queued"] == 1 and queued["done"] == 0, queued
