"""Cost of known-people recognition: embedding time per person, and the whole server's throughput
with recognition on vs off, measured in one run.

1. Per person: ``Recognizer._embed_now`` (crops, face and body models on one thread) on the
   people of ``zidane.jpg``, ``bus.jpg`` and ``astronaut.png``; median ms per image and per person.
2. Throughput: the whole server (embedded PostgreSQL, broker, folder watcher, detect worker) is
   started with the same settings except the embedding models (off, then on, then off again,
   so drift shows; a process per run, one data folder, a camera per run), and a burst of
   ``--images`` distinct JPEGs of people is dropped into the camera's folder; the rate is images
   stored per second, first file dropped to last job done.

3. ``--strangers``: how often an unknown person is linked to the wrong stranger
   (``embedding/matching.match_stranger``) on the real photos: the people of astronaut.png,
   zidane.jpg, bus.jpg and camera.png, each in four views (as is, mirrored, 25 % brighter, the
   middle 90 %: ``bench/embeddings.py``), one sighting per person and view with its face (when
   seen) and body. Every ordered pair of sightings of different people is a chance of a false
   link, of the same person a chance of a true one (by face, by body); and ``--orders`` random
   orders of all sightings are streamed as the pipeline does (each linked to a stranger seen
   before it, or a new one), counting sightings linked to another person's stranger.

4. ``--stranger-cost``: what linking strangers adds to an image's result transaction:
   ``Recognizer.identify`` of one unknown person (the strangers' lock, the window's sightings
   read, matched, a stranger made) while 0, 100 or 500 strangers with 8 sightings each (face and
   body, random unit vectors: the cost does not depend on their content) are in the window, in
   the embedded PostgreSQL; and of one enrolled person (no stranger work) for comparison. Those
   transactions roll back; ``unknown_committed``: unknown people whose sightings are kept, each
   image catching up with the one before (as a stream of images does).

Run from the repository root (``scripts/models/fetch`` first)::

    YOLO_OFFLINE=1 XDG_RUNTIME_DIR=/tmp .venv/bin/python -m bench.recognition --images 60
    YOLO_OFFLINE=1 .venv/bin/python -m bench.recognition --strangers
    YOLO_OFFLINE=1 XDG_RUNTIME_DIR=/tmp .venv/bin/python -m bench.recognition --stranger-cost
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


STRANGER_PHOTOS = ("astronaut.png", "zidane.jpg", "bus.jpg", "camera.png")


def _sightings(detector: UltralyticsDetector) -> list[tuple[str, Any, Any]]:
    """(person key, face vector or None, body vector or None) of every person in every view."""
    import numpy as np

    from bench.embeddings import _iou, _views
    from inference_server.embedding.crops import body_box, crop, face_box

    embedders = {s: OnnxEmbedder(s, demo_assets.embedder_model(s)) for s in SOURCES}
    out: list[tuple[str, Any, Any]] = []
    for photo in STRANGER_PHOTOS:
        original = Image.open(demo_assets.image(photo)).convert("RGB")
        people = [d.bbox for d in detector.detect([original])[0]]
        for image, back in _views(original).values():
            pixels = np.asarray(image)
            for det in detector.detect([image])[0]:
                mapped = back(det.bbox)
                best = max(range(len(people)), key=lambda i: _iou(people[i], mapped), default=None)
                if best is None or _iou(people[best], mapped) < 0.5:
                    continue
                fb, bb = face_box(det, *image.size), body_box(det, *image.size)
                face = embedders["face"].embed([crop(pixels, fb)])[0] if fb is not None else None
                body = embedders["body"].embed([crop(pixels, bb)])[0] if bb is not None else None
                if face is not None or body is not None:
                    out.append((f"{photo}#{best}", face, body))
    return out


def strangers(detector: UltralyticsDetector, orders: int) -> dict[str, Any]:
    """False and true stranger links on the real photos (see the module's docstring, 3.)."""
    import random

    from inference_server.embedding.matching import STRANGER_THRESHOLDS, match_stranger

    seen = _sightings(detector)

    def rows(index: int, stranger: int) -> list[tuple[int, EmbeddingSource, Any]]:
        _key, face, body = seen[index]
        parts: tuple[tuple[EmbeddingSource, Any], ...] = (("face", face), ("body", body))
        return [(stranger, s, v) for s, v in parts if v is not None]

    pairs: dict[str, dict[str, int]] = {
        "same": {"n": 0, "face": 0, "body": 0},
        "different": {"n": 0, "face": 0, "body": 0},
    }
    for a in range(len(seen)):
        for b in range(len(seen)):
            if a == b:
                continue
            kind = "same" if seen[a][0] == seen[b][0] else "different"
            pairs[kind]["n"] += 1
            match = match_stranger(rows(a, 0), seen[b][1], seen[b][2])
            if match is not None:
                pairs[kind][match.source] += 1
    rng = random.Random(18)
    streamed = {"sightings": 0, "false_links": 0, "true_links": 0, "new": 0}
    per_person: list[int] = []
    for _ in range(orders):
        order = list(range(len(seen)))
        rng.shuffle(order)
        owner: dict[int, str] = {}  # stranger → the person of its first sighting
        known: list[tuple[int, EmbeddingSource, Any]] = []
        made: dict[str, set[int]] = {}
        for index in order:
            key, face, body = seen[index]
            match = match_stranger(known, face, body)
            if match is None:
                stranger = len(owner)
                owner[stranger] = key
                streamed["new"] += 1
            else:
                stranger = match.stranger
                streamed["true_links" if owner[stranger] == key else "false_links"] += 1
            made.setdefault(key, set()).add(stranger)
            known += rows(index, stranger)
            streamed["sightings"] += 1
        per_person += [len(v) for v in made.values()]
    # Why body links only at 0.92: different-person pairs a body link would join at lower thresholds.
    sweep = {}
    for body_at in (0.80, 0.86, 0.92):
        at: dict[EmbeddingSource, float] = {"face": STRANGER_THRESHOLDS["face"], "body": body_at}
        sweep[str(body_at)] = sum(
            match_stranger(rows(a, 0), seen[b][1], seen[b][2], at) is not None
            for a in range(len(seen))
            for b in range(len(seen))
            if a != b and seen[a][0] != seen[b][0]
        )
    people = len({k for k, _f, _b in seen})
    report = {
        "thresholds": dict(STRANGER_THRESHOLDS),
        "people": people,
        "sightings": len(seen),
        "with_face": sum(f is not None for _k, f, _b in seen),
        "pairs": pairs,
        "false_link_rate_pairs": round(
            (pairs["different"]["face"] + pairs["different"]["body"]) / pairs["different"]["n"], 4
        ),
        "true_link_rate_pairs": round((pairs["same"]["face"] + pairs["same"]["body"]) / pairs["same"]["n"], 4),
        "false_links_by_body_threshold": sweep,
        "orders": orders,
        "streamed": streamed,
        # Of all sightings, those linked to another person's stranger; and of all links made.
        "false_link_rate_streamed": round(streamed["false_links"] / streamed["sightings"], 4),
        "false_share_of_links": round(
            streamed["false_links"] / max(1, streamed["false_links"] + streamed["true_links"]), 4
        ),
        "strangers_per_person_mean": round(statistics.mean(per_person), 2),
    }
    return report


async def stranger_cost(root: Path, counts: tuple[int, ...] = (0, 100, 500), rounds: int = 30) -> dict[str, Any]:
    """Median ms of ``Recognizer.identify`` for one person (see the module's docstring, 4.);
    the first unknown person after each prefill reads the new sightings (the catch-up)."""
    from datetime import UTC, datetime

    import numpy as np

    from inference_server.domain import Detection, Identity
    from inference_server.pipeline.identify import PersonVectors
    from inference_server.server import open_database
    from inference_server.store import detections, images, people

    rng = np.random.default_rng(18)

    def unit(n: int) -> Any:
        v = rng.standard_normal(n).astype(np.float32)
        return v / np.linalg.norm(v)

    models = {"face": "face-bench", "body": "body-bench"}
    settings = Settings(data_dir=root, database_url=None, log_level="WARNING", stranger_window_h=12)
    pool, embedded = await open_database(settings)
    at = datetime(2026, 11, 24, 22, 0, tzinfo=UTC)
    made = 0

    async def person_image(conn: Any) -> int:
        nonlocal made
        made += 1
        image_id = await images.insert(
            conn,
            images.NewImage("bench", f"{made}".encode(), "x.jpg", "folder", None, "image/jpeg", 8, 8, 1, at, "mtime"),
        )
        assert image_id is not None
        await detections.insert_many(conn, image_id, "bench", at, [Detection("person", 0.9, (0.1, 0.1, 0.5, 0.9))])
        return image_id

    report: dict[str, dict[str, float]] = {}
    try:
        await pool.execute("INSERT INTO cameras (id, name, folder) VALUES ('bench', 'Bench', 'bench')")
        anna = await people.create(pool, "Anna", None)
        anna_face = unit(1024)
        await people.add_embeddings(pool, anna.id, [("face", models["face"], anna_face.tolist())], origin="upload")
        recognizer = Recognizer(settings, {}, models)
        present = 0
        for count in counts:
            async with pool.acquire() as conn, conn.transaction():
                for _ in range(count - present):
                    stranger = await people.new_stranger(conn, at)
                    for _ in range(8):
                        image_id = await person_image(conn)
                        [detection_id] = await people.detection_ids(conn, image_id)
                        vectors: list[tuple[EmbeddingSource, str, list[float]]] = [
                            ("face", models["face"], unit(1024).tolist()),
                            ("body", models["body"], unit(1280).tolist()),
                        ]
                        await people.store_detection(conn, detection_id, vectors, Identity("face", stranger=stranger))
            present = count
            # The prefill is one bulk transaction: analysed now, as autovacuum would within its
            # minute in a server that saw these strangers come one by one. Without statistics the
            # planner drives the catch-up's join from every stored vector (10 ms at 500 strangers
            # against 0.1 with them; stops 31-41's figures here were measured so).
            await pool.execute("ANALYZE")
            timings: dict[str, list[float]] = {"unknown": [], "known": []}
            read_before = recognizer.strangers.read
            first = None
            for _ in range(rounds):
                for kind, face in (("unknown", unit(1024)), ("known", anna_face)):
                    async with pool.acquire() as conn:
                        tx = conn.transaction()
                        await tx.start()
                        image_id = await person_image(conn)
                        # The detections as the store's statement returns them (the pipeline's way).
                        seen = await people.detections_seen(conn, image_id)
                        started = time.perf_counter()
                        await recognizer.identify(conn, "bench", image_id, [PersonVectors(face, unit(1280))], seen)
                        timings[kind].append(time.perf_counter() - started)
                        first = timings[kind][0] if first is None else first
                        await tx.rollback()  # the window keeps the strangers it was given
            # Unknown people whose sightings are kept (committed): each next image catches up with
            # the one before, as a stream of images does; the sightings' matrices take one more row.
            read = recognizer.strangers.read - read_before
            timings["unknown_committed"] = []
            for _ in range(rounds):
                async with pool.acquire() as conn, conn.transaction():
                    image_id = await person_image(conn)
                    seen = await people.detections_seen(conn, image_id)
                    started = time.perf_counter()
                    await recognizer.identify(conn, "bench", image_id, [PersonVectors(unit(1024), unit(1280))], seen)
                    timings["unknown_committed"].append(time.perf_counter() - started)
            report[str(count)] = {k: round(1000 * statistics.median(v), 2) for k, v in timings.items()}
            # The first image after the new strangers were committed reads their vectors once.
            report[str(count)]["first_unknown_ms"] = round(1000 * (first or 0.0), 2)
            report[str(count)]["vectors_read"] = read
            print(f"strangers in the window {count}: identify ms (median) {report[str(count)]}", flush=True)
        recognizer.close()
    finally:
        await pool.close()
        if embedded is not None:
            await embedded.stop()
    return report


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
    parser.add_argument("--strangers", action="store_true", help="only the stranger-linking measurement (3.)")
    parser.add_argument("--orders", type=int, default=200, help="random sighting orders of --strangers")
    parser.add_argument("--stranger-cost", action="store_true", help="only the stranger-linking cost (4.)")
    parser.add_argument("--one", choices=("warmup", "off", "on", "off_again"), help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.one is not None:  # a child: one server run, its rate as the last line
        rate = asyncio.run(throughput(args.root, _jpegs(args.images), args.one == "on", args.one))
        print(json.dumps({"rate": rate}))
        return
    if args.stranger_cost:
        with tempfile.TemporaryDirectory(prefix="hsi-bench-strangers-") as tmp:
            cost = asyncio.run(stranger_cost(Path(tmp)))
        if args.json:
            args.json.write_text(json.dumps(cost, indent=2))
        return
    detector = UltralyticsDetector(demo_assets.pose_weights(), device="cpu", confidence=0.4, keep_classes=["person"])
    detector.warmup()
    if args.strangers:
        found = strangers(detector, args.orders)
        print(json.dumps(found, indent=2))
        if args.json:
            args.json.write_text(json.dumps(found, indent=2))
        return
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
