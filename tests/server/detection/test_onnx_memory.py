"""The ONNX detector's resident memory (issue 20: the ONNX path at or under 500 MB idle).

Building an ONNX Runtime session optimises the graph on copies of the weights and frees them;
glibc keeps the freed heap in its arenas, so without a trim the process holds about three and a
half times the model file (measured: 122 MB for the 35 MB YOLOv3-tiny) for as long as it runs.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.support.models import COCO_IMGSZ, coco_onnx

ROOT = Path(__file__).resolve().parents[3]

_RSS = """
from pathlib import Path

def rss():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")
"""


def _figures(script: str, *args: str) -> dict[str, Any]:
    """Run ``script`` in a fresh interpreter; the JSON it printed last."""
    result = subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=120, cwd=ROOT, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    figures: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return figures


_LOAD = (
    _RSS
    + """
import json, sys

import onnxruntime  # its own pages before the first figure: only the model's cost is measured
from inference_server.detection.onnx_backend import OnnxDetector

before = rss()
detector = OnnxDetector(Path(sys.argv[1]), imgsz=int(sys.argv[2]))
loaded = rss()
detector.warmup()
print(json.dumps({"load": loaded - before, "warm": rss() - before}))
"""
)


def test_a_loaded_model_keeps_no_freed_copies_of_its_weights() -> None:
    model = coco_onnx()
    figures = _figures(_LOAD, str(model), str(COCO_IMGSZ))
    size = model.stat().st_size
    # The weights once (35 MB) plus ONNX Runtime's pre-packed kernels: 49 MB measured with the
    # heap trimmed after loading, 122 MB without.
    assert figures["load"] < 2 * size, f"loading a {size / 2**20:.0f} MB model kept {figures['load'] / 2**20:.0f} MB"
    # Warm-up (one 416x416 picture) adds the arena of one inference, a few MB.
    assert figures["warm"] < 2 * size + 32 * 2**20, figures


_LETTERBOX = (
    _RSS
    + """
import json, threading

import numpy as np
from PIL import Image

from inference_server.decode_budget import fix_mmap_threshold
from inference_server.detection.onnx_backend import letterbox

fix_mmap_threshold(1024)  # the server's default
sizes = [(810, 1080), (1296, 972), (960, 540)]
pictures = [Image.fromarray(np.full((h, w, 3), 90, dtype=np.uint8)) for w, h in sizes]
letterbox(pictures[2], (384, 640))
before = rss()

def work():
    for k in range(30):
        picture = pictures[k % 3]
        letterbox(picture, (640, 480) if picture.height > picture.width else (480, 640))

threads = [threading.Thread(target=work) for _ in range(3)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(json.dumps({"growth": rss() - before}))
"""
)


def test_the_letterbox_keeps_one_calls_memory_however_many_threads_call_it() -> None:
    """Three decode threads letterboxing 1-MP pictures through ONNX Runtime's ``Resize``: the
    runtime's arena keeps the intermediates of the largest calls that ran at once for as long as
    the process runs (84 MB here with three at once); one call at a time, one call's (36 MB)."""
    growth = _figures(_LETTERBOX)["growth"]
    assert growth < 48 * 2**20, f"the letterbox kept {growth / 2**20:.0f} MB"


_IDLE = (
    _RSS
    + """
import json, sys

import numpy as np
from PIL import Image

from inference_server import demo_assets
from inference_server.decode_budget import fix_mmap_threshold
from inference_server.detection.onnx_backend import OnnxDetector

fix_mmap_threshold(1024)  # the server's default
detector = OnnxDetector(Path(sys.argv[1]), imgsz=int(sys.argv[2]), keep_classes=["person"])
detector.warmup()  # as the server starts it: the arena's first region is one small picture's
warm = rss()
pictures = [np.asarray(Image.open(demo_assets.image(n)).convert("RGB")) for n in ("bus.jpg", "zidane.jpg")] * 2
found = [[d.bbox for d in f] for f in detector.detect([detector.prepare(p) for p in pictures])]
busy = rss()
detector.release_idle()
idle = rss()
again = [[d.bbox for d in f] for f in detector.detect([detector.prepare(p) for p in pictures])]
print(json.dumps({"warm": warm, "busy": busy, "idle": idle, "same": again == found, "people": sum(map(len, found))}))
"""
)


def test_an_idle_detector_gives_its_arenas_back_and_detects_the_same() -> None:
    """After batches of 4 (1 MP pictures through the letterbox graph), ONNX Runtime's arenas keep
    the largest run's intermediates: ``release_idle`` (the detect worker, once the queue has been
    dry for ``buffers_idle_s``) gives back all but each arena's first region (53 MB measured: 35
    the model's, 18 the letterbox's), and the next batch finds the same people. How much the
    batches grew depends on how their runs met on the runtime's threads (35-43 MB, and 28-31 MB
    given back, with another process busy: stop 50), so the test holds the process to about where
    the warm-up left it (3-10 MB above, measured) rather than to an amount given back."""
    figures = _figures(_IDLE, str(coco_onnx()), str(COCO_IMGSZ))
    assert figures["same"] and figures["people"] > 0, figures
    mib = 2**20
    grown, kept = figures["busy"] - figures["warm"], figures["idle"] - figures["warm"]
    assert grown > 24 * mib, f"the batches grew the process by {grown / mib:.0f} MB only"
    assert kept < 16 * mib, f"release_idle kept {kept / mib:.0f} MB of the batches' {grown / mib:.0f} MB"
