"""The ``Detector`` interface and its registry."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import numpy.typing as npt
from PIL import Image

from inference_server.domain import Detection
from inference_server.registry import Registry

if TYPE_CHECKING:
    from inference_server.config import Settings


#: A picture's pixels as the pipeline decodes them: RGB, (height, width, 3), ``uint8``.
RgbPixels = npt.NDArray[np.uint8]


def rgb_array(image: Image.Image | RgbPixels) -> RgbPixels:
    """``image``'s RGB pixels, (height, width, 3) ``uint8``: an array as it is (the pipeline's
    decoded pictures), a Pillow image copied out (Pillow keeps 4 bytes a pixel)."""
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"RGB pixels are (height, width, 3) uint8, not {image.shape} {image.dtype}")
        return image
    return np.asarray(image if image.mode == "RGB" else image.convert("RGB"))


def packed(pixels: RgbPixels) -> npt.NDArray[np.uint8]:
    """A contiguous array holding ``pixels`` for a graph that takes 3 or 4 channels (the letterbox
    graph drops a fourth): the array itself, or the RGBX pixels it is the RGB view of (the same
    memory, no copy: an array over the view's base, whose shape may be another, as a pooled
    block's is), else a contiguous copy."""
    if pixels.flags.c_contiguous:
        return pixels
    height, width = pixels.shape[:2]
    base = pixels.base
    if (
        isinstance(base, np.ndarray)
        and base.dtype == np.uint8
        and base.flags.c_contiguous
        and pixels.strides == (4 * width, 4, 1)
        and 0 <= (offset := pixels.ctypes.data - base.ctypes.data) <= base.nbytes - 4 * width * height
    ):
        return np.ndarray((height, width, 4), np.uint8, buffer=base, offset=offset)
    return np.ascontiguousarray(pixels)


class Detector(Protocol):
    """Finds objects in images. ``detect`` blocks: callers run it off the event loop."""

    name: str

    def prepare(self, image: Image.Image | RgbPixels) -> Any:
        """The model's input for ``image`` (a Pillow image or RGB pixels), made on a decode thread
        (thread-safe, no model state): the resizing and conversion ``detect`` would otherwise do on
        the one inference thread."""
        ...

    def detect(self, images: Sequence[Any]) -> list[list[Detection]]:
        """Return the kept detections of each input (a PIL image or what ``prepare`` made of one),
        in input order (one batched call). Boxes are normalised to the picture, whatever its scale."""
        ...

    def warmup(self) -> None: ...

    def release_idle(self) -> None:
        """Give back the memory the runtime keeps for the next batch (the job queue has been dry
        for ``buffers_idle_s``, the detect worker's pools are let go with it). Blocks: called off
        the event loop. The next batch pays for taking it again, once."""
        ...

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
