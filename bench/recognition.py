"""Cost of known-people recognition: embedding time per person, and the whole server's throughput
with recognition on vs off, measured in one run.

1. Per person: ``Recognizer._embed_now`` (crops, face and body models on one thread) on the
   people of ``zidane.jpg``, ``bus.jpg`` and ``astronaut.png``; median ms per image and per person.
2. Throughput: the whole server (embedded PostgreSQL, broker, folder watcher, detect worker) is
   started with the same settings except the embedding models (off, then on, then off again,
   so drift shows; a process per run, one data folder, a camera per run), and a burst of
   ``--images`` distinct JPEGs of people is dropped into the camera's folder; the rate is images
   stored per second, first file dropped to last job done.

Run from the repository root (``scripts/models/fetch`` first)::

    YOLO_OFFLINE=1 XDG_RUNTIME_DIR=/tmp .venv/bin/python -m bench.recognition --images 60
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import json
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from PIL import Image

from inference_server import demo_assets
from inference_server.config import Settings
from inference_server.detection.ultralytics_backend import UltralyticsDetector
from inference_server.embedding.embedder import SOURCES, Embedder, EmbeddingSource, model_key
from inference_server.embedding.onnx_backend import OnnxEmbedder
from inference_server.pipeline.identify import Recognizer
from inference_server.schemas import CameraCreate
from inference_server.server import Server
from inference_server.store import cameras

PHOTOS = ("zidane.jpg", "bus.jpg", "astronaut.png")


def per_person(detector: UltralyticsDetector, rounds: int) -> dict[str, float]:
    models = {s: demo_assets.embedder_model(s) for s in SOURCES}
    settings = Settings(embedding_max_people=8)
    embedders: dict[EmbeddingSource, Embedder] = {s: OnnxEmbedder(s, models[s]) for s in SOURCES}
    recognizer = Recognizer(settings, embedders, {s: model_key(p) for s, p in models.items()})
    per_image: list[float] = []
    people = faces = 0
    for _ in range(rounds):
        for name in PHOTOS:
            image = Image.open(demo_assets.image(name)).convert("RGB")
            image.thumbnail((640, 640))  # the decoded size the pipeline embeds from
            dets = [d for d in detector.detect([image])[0] if d.category == "person"]
            started = time.perf_counter()
            found = recognizer._embed_now(image, dets)
            per_image.append((time.perf_counter() - started) / max(1, len(dets)))
            people += len(dets)
            faces += sum(v is not None and v.face is not None for v in found)
    recognizer.close()
    return {
        "ms_per_person_median": round(1000 * statistics.median(per_image), 1),
        "people": people,
        "faces": faces,
    }


def _jpegs(n: int) -> list[bytes]:
    """``n`` distinct JPEGs of people (a numbered JPEG comment makes each file new to the server:
    a changed pixel may compress to the same bytes, and a repeat is not queued again)."""
    out = []
    for i in range(n):
        image = Image.open(demo_assets.image(PHOTOS[i % 2])).convert("RGB")  # zidane, bus: 2 and 4 people
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=90, comment=f"bench {i}".encode())
        out.append(buf.getvalue())
    assert len({hashlib.sha256(b).digest() for b in out}) == n
    return out


async def throughput(root: Path, images: list[bytes], recognition: bool, tag: str) -> float:
    extra: dict[str, Any] = {}
    if recognition:
        extra = {
            "face_embedder_model": demo_assets.embedder_model("face"),
            "body_embedder_model": demo_assets.embedder_model("body"),
        }
    settings = Settings(
        data_dir=root,  # one folder: the detector's ONNX export and the database are made once
        database_url=None,
        mqtt_url=None,
        mqtt_embedded_port=0,
        api_port=0,
        detector_weights=demo_assets.pose_weights(),
        detector_device="cpu",
        file_stable_s=0.05,
        camera_timezone="UTC",
        log_level="WARNING",
        **extra,
    )
    server = Server(settings)
    await server.start()
    try:
        await cameras.create(server.pool, CameraCreate(id=tag, name=tag))
        folder = settings.cameras_path / tag
        folder.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        for i, data in enumerate(images):
            (folder / f"img{i:04d}.jpg").write_bytes(data)
        done = "SELECT count(*) FROM jobs WHERE camera_id = $1 AND state = 'done'"
        while True:  # polls the database: the benchmark is outside the server's notifications
            if await server.pool.fetchval(done, tag) >= len(images):
                break
            await asyncio.sleep(0.05)
        elapsed = time.perf_counter() - started
        if recognition:
            people_seen = await server.pool.fetchval(
                "SELECT count(*) FROM detections WHERE camera_id = $1 AND category = 'person'", tag
            )
            embedded = await server.pool.fetchval(
                "SELECT count(*) FROM detection_identities di JOIN detections d ON d.id = di.detection_id"
                " WHERE d.camera_id = $1",
                tag,
            )
            print(f"  {tag}: {embedded} of {people_seen} person detections embedded (the rest skipped: busy)")
    finally:
        await server.stop()
    return len(images) / elapsed


def _run_child(root: Path, count: int, tag: str) -> float:
    """One server run in a process of its own (a fresh interpreter per start, as a restart is)."""
    out = subprocess.run(
        [sys.executable, "-m", "bench.recognition", "--one", tag, "--root", str(root), "--images", str(count)],
        capture_output=True,
        text=True,
        check=True,
        timeout=1200,
    )
    *notes, last = out.stdout.strip().splitlines()
    for line in notes:
        print(line, flush=True)
    rate: float = json.loads(last)["rate"]
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the per-person measurement")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--one", choices=("warmup", "off", "on", "off_again"), help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.one is not None:  # a child: one server run, its rate as the last line
        rate = asyncio.run(throughput(args.root, _jpegs(args.images), args.one == "on", args.one))
        print(json.dumps({"rate": rate}))
        return
    detector = UltralyticsDetector(demo_assets.pose_weights(), device="cpu", confidence=0.4, keep_classes=["person"])
    detector.warmup()
    report: dict[str, Any] = {"per_person": per_person(detector, args.rounds)}
    print(f"embedding: {report['per_person']}", flush=True)
    with tempfile.TemporaryDirectory(prefix="hsi-bench-recognition-") as tmp:
        _run_child(Path(tmp), 2, "warmup")  # exports the detector to ONNX once; not measured
        rates = {}
        for tag in ("off", "on", "off_again"):
            rates[tag] = round(_run_child(Path(tmp), args.images, tag), 2)
            print(f"throughput recognition {tag}: {rates[tag]} images/s", flush=True)
    off = (rates["off"] + rates["off_again"]) / 2
    report["throughput"] = rates | {"ratio_on_vs_off": round(rates["on"] / off, 3)}
    print(f"ratio on/off: {report['throughput']['ratio_on_vs_off']}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
