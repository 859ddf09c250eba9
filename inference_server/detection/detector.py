"""The ``Detector`` interface and its registry."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from PIL import Image

from inference_server.domain import Detection
from inference_server.registry import Registry

if TYPE_CHECKING:
    from inference_server.config import Settings


class Detector(Protocol):
    """Finds objects in images. ``detect`` blocks: callers run it off the event loop."""

    name: str

    def prepare(self, image: Image.Image) -> Any:
        """The model's input for ``image``, made on a decode thread (thread-safe, no model state):
        the resizing and conversion ``detect`` would otherwise do on the one inference thread."""
        ...

    def detect(self, images: Sequence[Any]) -> list[list[Detection]]:
        """Return the kept detections of each input (a PIL image or what ``prepare`` made of one),
        in input order (one batched call). Boxes are normalised to the picture, whatever its scale."""
        ...

    def warmup(self) -> None: ...

    def describe(self) -> str:
        """What runs: backend, weights and runtime (format, device, precision, any fallback)."""
        ...


class DetectorModelMissing(FileNotFoundError):
    """The configured model file is absent or not one the backend runs: a set-up problem the user
    fixes (the server keeps ingesting and says so in ``hsi/status``), not a crash."""


DetectorFactory = Callable[["Settings"], Detector]
DETECTORS: Registry[DetectorFactory] = Registry("detector_backend")
#: ``@register_detector("name")`` on a backend's factory.
register_detector = DETECTORS.register


def build_detector(settings: Settings) -> Detector:
    """The backend ``settings.detector_backend`` names, built from the settings.

    Backends register on import, and only the chosen one is imported (``<name>_backend.py``
    beside this module): the ONNX backend runs where torch, ultralytics and OpenCV are not
    installed (the add-on image), so nothing may import them on its path."""
    name = settings.detector_backend
    if name.isidentifier():
        try:
            importlib.import_module(f"inference_server.detection.{name}_backend")
        except ModuleNotFoundError as err:
            if err.name != f"inference_server.detection.{name}_backend":
                raise  # the backend exists, a library it needs does not: say which
    return DETECTORS.get(name)(settings)
