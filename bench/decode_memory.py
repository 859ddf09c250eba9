"""The decode threads' work per image, by how their memory is reused: CPU and minor page faults.

    YOLO_OFFLINE=1 .venv/bin/python -m bench.decode_memory [--images 96] [--cache-mb 0 32 0 32]

What the detect worker does for each image, on its decode threads (``detector_decode_threads``,
one per core here): decode the stored JPEG (``pipeline.decode.decode_picture``, into the worker's
picture pool; ``decode``, a Pillow image, in a checkout from before it) and the onnx backend's
``prepare`` (the letterbox into the model's tensor); then the inference thread's batch of 4 and
its ``detect`` (the model runs: its tensors go back to the pool), the pictures held until their
batch is "stored" (two batches later, as the worker's queues allow) and then given back to their
pool; one image in four also gets
the tamper check's grey copy and thumbnail (sampled once a second per camera at 4 frames a second). The pictures are the
pipeline bench's four (bus.jpg, zidane.jpg, astronaut.png and chelsea.png as JPEGs: three of them
letterboxed by the runtime's ``Resize``), in turn, or with ``--frames cameras`` 1080p and 1440p
frames (the whole factors 3 and 2, the common cameras' path).
Each ``--cache-mb`` (``detector_tensor_cache_mb`` and ``decode_picture_cache_mb``: both pools)
runs in a fresh process with the server's fixed mmap threshold and malloc arenas; CPU is the
decode threads' (thread CPU time), faults the whole process's less the model's own run.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.report import child_json, say, show, temporary_folder

ROOT = Path(__file__).resolve().parents[1]

_CHILD = r"""
import io, json, resource, sys, threading, time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image

from bench.pipeline_cpu import source_jpegs
from inference_server import decode_budget
from inference_server.detection.onnx_backend import OnnxDetector
from inference_server.pipeline.decode import decode

model, cache_mb, images = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
folder, frames = Path(sys.argv[4]), sys.argv[5]
from inference_server.config import Settings
server = Settings()  # the server's malloc settings (a checkout from before the trim threshold: without it)
decode_budget.fix_mmap_threshold(server.malloc_mmap_threshold_kb)
decode_budget.limit_malloc_arenas(server.malloc_arena_max)
if hasattr(decode_budget, "fix_trim_threshold"):
    decode_budget.fix_trim_threshold(server.malloc_trim_threshold_kb)
import inspect
if "tensor_cache_mb" in inspect.signature(OnnxDetector).parameters:
    detector = OnnxDetector(model, tensor_cache_mb=cache_mb)
else:  # a checkout from before the pool (an A/B run from a git worktree)
    detector = OnnxDetector(model)
paths = []
if frames == "pipeline":
    sources = source_jpegs()
else:  # cameras' frames: zidane.jpg scaled to 1920x1080 and 2560x1440 (the letterbox's whole factors 3 and 2)
    with Image.open(io.BytesIO(dict(source_jpegs())["zidane.jpg"])) as zidane:
        sources = []
        for size in ((1920, 1080), (2560, 1440)):
            out = io.BytesIO()
            zidane.convert("RGB").resize(size).save(out, format="JPEG", quality=90)
            sources.append((f"zidane_{size[1]}p.jpg", out.getvalue()))
for name, data in sources:
    path = folder / (name.rsplit(".", 1)[0] + ".jpg")
    path.write_bytes(data)
    paths.append(path)

cpu = {"decode": 0.0}
lock = threading.Lock()
try:
    import numpy as np
    from inference_server.buffers import ArrayPool
    from inference_server.pipeline.decode import decode_picture
    pictures = ArrayPool(cache_mb << 20, np.uint8)

    def decode_one(path):
        picture = decode_picture(path, 640, pool=pictures)
        return picture, picture.pixels, picture.image
except ImportError:  # a checkout from before decode_picture: a Pillow image
    def decode_one(path):
        picture = decode(path, 640)
        return picture, picture, lambda: picture

def load(item):
    index, path = item
    start = time.thread_time()
    picture, pixels, pillow = decode_one(path)
    prepared = detector.prepare(pixels)
    if index % 4 == 0:  # the tamper check's grey picture and thumbnails, sampled (pipeline/tamper.py)
        pillow().convert("L").resize((64, 48), Image.Resampling.BOX)
    with lock:
        cpu["decode"] += time.thread_time() - start
    return picture, prepared

def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt

def run(count):
    held = deque()  # pictures waiting to be stored: two batches
    model_faults = 0
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="decode") as pool:
        for start in range(0, count, 4):
            batch = list(pool.map(load, [(i, paths[i % len(paths)]) for i in range(start, start + 4)]))
            before = faults()
            detector.detect([prepared for _, prepared in batch])
            model_faults += faults() - before
            held.append([picture for picture, _ in batch])
            if len(held) > 2:
                for picture in held.popleft():  # stored: the worker gives it back
                    if hasattr(picture, "release"):
                        picture.release()
    return model_faults

run(16)  # warm: the runtime's arena, the first pictures
cpu["decode"] = 0.0
before = faults()
model_faults = run(images)
print(json.dumps({
    "decode_cpu_ms": 1000 * cpu["decode"] / images,
    "faults": (faults() - before - model_faults) / images,
}))
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--cache-mb", type=int, nargs="+", default=[0, 32, 0, 32])
    parser.add_argument(
        "--frames",
        choices=["pipeline", "cameras"],
        default="pipeline",
        help="the pipeline bench's four pictures, or 1080p and 1440p camera frames (whole-factor letterboxes)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    from tests.server.detection.test_onnx_backend import pose_onnx

    model = pose_onnx()
    rows = []
    for cache_mb in args.cache_mb:
        figures = child_json(
            _CHILD, str(model), str(cache_mb), str(args.images), str(temporary_folder()), args.frames, cwd=ROOT
        )
        if figures is None:
            return 1
        rows.append({"cache_mb": cache_mb, **figures})
        say(
            f"cache {cache_mb:>3} MB: decode threads {figures['decode_cpu_ms']:.2f} ms/image,"
            f" {figures['faults']:.0f} page faults/image"
        )
    show({"runs": rows}, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
