"""What a camera's picture costs once a second, besides detection: its snapshot and its tamper check.

    YOLO_OFFLINE=1 .venv/bin/python -m bench.camera_second [--rounds 100]

A camera's snapshot is drawn and published when what it shows changes, else at most every
``snapshot_publish_interval_s`` (1 s until stop 34, 5 s now), and its tamper check samples one
picture a second: for a camera sending a picture a second of a changing scene, both run for every
picture. For 1280×720 and 1920×1080 frames (zidane.jpg scaled, JPEG quality 90) and
bus.jpg, decoded as the detect worker decodes them, this prints the CPU and the minor page faults
of ``snapshot.render`` (two people boxed) and of the tamper features, each the mean of
``--rounds`` calls in a fresh process with the server's fixed mmap threshold and malloc arenas.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.report import child_json, say, show, temporary_folder

ROOT = Path(__file__).resolve().parents[1]

_CHILD = r"""
import io, json, resource, sys, time
from pathlib import Path

from PIL import Image

from inference_server import decode_budget, demo_assets
from inference_server.domain import Detection
from inference_server.pipeline import decode as decoding
from inference_server.pipeline.snapshot import render
from inference_server.pipeline.tamper import features

rounds, folder = int(sys.argv[1]), Path(sys.argv[2])
from inference_server.config import Settings
server = Settings()  # the server's malloc settings (a checkout from before the trim threshold: without it)
decode_budget.fix_mmap_threshold(server.malloc_mmap_threshold_kb)
decode_budget.limit_malloc_arenas(server.malloc_arena_max)
if hasattr(decode_budget, "fix_trim_threshold"):
    decode_budget.fix_trim_threshold(server.malloc_trim_threshold_kb)
boxes = [Detection("person", 0.9, (0.1, 0.1, 0.4, 0.9)), Detection("person", 0.8, (0.5, 0.2, 0.7, 0.9))]
source = Image.open(demo_assets.image("zidane.jpg")).convert("RGB")
frames = {}
for size in ((1280, 720), (1920, 1080)):
    path = folder / f"{size[0]}x{size[1]}.jpg"
    source.resize(size).save(path, quality=90)
    frames[f"{size[0]}x{size[1]}"] = path
frames["bus.jpg"] = demo_assets.image("bus.jpg")


def measure(call):
    for _ in range(5):
        call()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    started = time.process_time()
    for _ in range(rounds):
        call()
    cpu = (time.process_time() - started) / rounds * 1000
    return round(cpu, 3), round((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / rounds)


out = {}
for name, path in frames.items():
    if hasattr(decoding, "decode_picture"):
        picture = decoding.decode_picture(path, 640)
        pillow = picture.image
    else:  # a checkout from before decode_picture: the worker's picture was a Pillow image
        picture = decoding.decode(path, 640)
        pillow = lambda: picture
    snapshot_ms, snapshot_faults = measure(lambda: render(picture, boxes))
    tamper_ms, tamper_faults = measure(lambda: features(pillow()))
    out[name] = {
        "snapshot_cpu_ms": snapshot_ms,
        "snapshot_faults": snapshot_faults,
        "tamper_cpu_ms": tamper_ms,
        "tamper_faults": tamper_faults,
    }
print(json.dumps(out))
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    figures = child_json(_CHILD, str(args.rounds), str(temporary_folder()), cwd=ROOT)
    if figures is None:
        return 1
    for name, row in figures.items():
        say(
            f"{name:>10}: snapshot {row['snapshot_cpu_ms']:.2f} ms, {row['snapshot_faults']} page faults;"
            f" tamper features {row['tamper_cpu_ms']:.2f} ms, {row['tamper_faults']} page faults"
        )
    show(figures, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
