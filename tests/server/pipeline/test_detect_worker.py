"""pipeline/detect.py: what a batch holds between inference and its store."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Callable
from pathlib import Path

import asyncpg

from bench.store_stage import store_pipeline
from inference_server import demo_assets
from inference_server.config import Settings
from inference_server.detection.detector import build_detector
from inference_server.detection.onnx_backend import Letterboxed
from inference_server.pipeline.detect import _Item
from tests.server.conftest import coco_settings


async def test_the_model_input_is_let_go_once_inferred(
    make_settings: Callable[..., Settings], pool: asyncpg.Pool
) -> None:
    """The detector's prepared input (a float tensor, 2 MB an image at 416 px, made on a decode
    thread) is released when inference is done, not held while the batch waits to be stored."""
    # The add-on's backend (ultralytics' predictor keeps its own last batch, whatever we do).
    settings = make_settings(**coco_settings(), detector_backend="onnx")
    worker, ingestor, queue = await store_pipeline(settings, pool, build_detector(settings), ["front"])
    try:
        await ingestor.ingest_bytes(
            "front", demo_assets.image("bus.jpg").read_bytes(), captured_at=None, original_name=None
        )
        [job] = await queue.claim(1)
        image, model_input = worker._load(Path(job.image_path))
        assert isinstance(model_input, Letterboxed) and model_input.tensor.nbytes > 1_000_000
        tensor = weakref.ref(model_input.tensor)
        item = _Item(job, image, [], model_input)
        del model_input
        decoded: asyncio.Queue[list[_Item] | None] = asyncio.Queue()
        inferred: asyncio.Queue[list[_Item] | None] = asyncio.Queue()
        decoded.put_nowait([item])
        decoded.put_nowait(None)

        await worker._infer_loop(decoded, inferred)

        assert inferred.get_nowait() == [item] and inferred.get_nowait() is None
        assert [d.label for d in item.detections].count("person") >= 3  # bus.jpg's people
        gc.collect()
        assert tensor() is None, "the inferred batch still holds the model's input"
    finally:
        worker._infer_pool.shutdown()
        worker._decode_pool.shutdown()
