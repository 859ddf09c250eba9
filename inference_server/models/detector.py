"""The ``Detector`` interface and its registry."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from PIL import Image

if TYPE_CHECKING:
    from inference_server.config import Settings
    from inference_server.schemas import Category

_VEHICLES = frozenset({"bicycle", "car", "motorcycle", "bus", "truck", "boat", "train", "airplane"})
_ANIMALS = frozenset({"bird", "cat", "dog", "horse", "sheep", "cow", "bear", "elephant", "zebra", "giraffe"})


def category_of(label: str) -> Category:
    """Map a model's class name onto the categories Home Assistant shows as occupancy."""
    name = label.lower()
    if name == "person":
        return "person"
    if name in _VEHICLES:
        return "vehicle"
    if name in _ANIMALS:
        return "animal"
    return "object"


@dataclass(frozen=True, slots=True)
class Detection:
    label: str
    confidence: float
    #: x1, y1, x2, y2 normalised to 0..1 of the image.
    bbox: tuple[float, float, float, float]

    @property
    def category(self) -> Category:
        return category_of(self.label)


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
_DETECTORS: dict[str, DetectorFactory] = {}


def register_detector(name: str) -> Callable[[DetectorFactory], DetectorFactory]:
    def wrap(factory: DetectorFactory) -> DetectorFactory:
        _DETECTORS[name] = factory
        return factory

    return wrap


def build_detector(settings: Settings) -> Detector:
    # Backends register on import; importing here keeps the choice in one place.
    from inference_server.models import ultralytics_backend  # noqa: F401

    try:
        factory = _DETECTORS[settings.detector_backend]
    except KeyError:
        raise ValueError(
            f"unknown detector_backend {settings.detector_backend!r}; known: {sorted(_DETECTORS)}"
        ) from None
    return factory(settings)
