"""The ``Detector`` interface and its registry."""

from __future__ import annotations

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


DetectorFactory = Callable[["Settings"], Detector]
DETECTORS: Registry[DetectorFactory] = Registry("detector_backend")
#: ``@register_detector("name")`` on a backend's factory.
register_detector = DETECTORS.register


def build_detector(settings: Settings) -> Detector:
    # Backends register on import; importing here keeps the choice in one place.
    from inference_server.detection import ultralytics_backend  # noqa: F401

    return DETECTORS.get(settings.detector_backend)(settings)
