"""The onnx backend's letterbox on the decode threads: CPU ms per picture, by camera size.

    YOLO_OFFLINE=1 .venv/bin/python -m bench.letterbox [--repeat 40]

For each decoded size the pipeline hands the detector (``detector_decode_fit`` ``cover``, the
default, at ``detector_imgsz`` 640), the letterbox into the model's rectangle as the detect worker
runs it (the picture's pixels where they were decoded, the RGB view of an RGBX array, into a
reused tensor), timed in one run (thread CPU time, with the server's fixed mmap threshold) against
two references on the same picture: Pillow's affine bilinear sampling then the float tensor (the
letterbox before stop 28), and OpenCV's ``resize`` (``INTER_LINEAR``, ultralytics' letterbox) then
the same, where OpenCV is installed (the dev venv; not the add-on).
The last column is the largest difference from OpenCV's picture, in grey levels.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from functools import partial

import numpy as np
from PIL import Image

from inference_server.config import Settings
from inference_server.decode_budget import fix_mmap_threshold
from inference_server.detection.onnx_backend import letterbox

#: (what, decoded width, height): a camera's frame as ``pipeline.decode`` gives it at ``cover`` 640.
SIZES = (
    ("1280×720, or 2560×1440 decoded at 1/2 (2:1)", 1280, 720),
    ("1920×1080 decoded whole, or 3840×2160 at 1/2 (3:1)", 1920, 1080),
    ("1920×1080 decoded at 1/2 (letterbox fit; 3:2)", 960, 540),
    ("2592×1944 (5 MP) decoded at 1/2", 1296, 972),
    ("bus.jpg, 810×1080 portrait", 810, 1080),
)


def _shape(width: int, height: int, imgsz: int = 640, stride: int = 32) -> tuple[int, int]:
    ratio = min(imgsz / height, imgsz / width)
    new_h, new_w = round(height * ratio), round(width * ratio)
    return (new_h + (imgsz - new_h) % stride, new_w + (imgsz - new_w) % stride)


def _cpu_ms(work: Callable[[], object], repeat: int) -> float:
    work()
    start = time.thread_time()
    for _ in range(repeat):
        work()
    return (time.thread_time() - start) / repeat * 1000


def _tensor(scaled: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The canvas, grey padded, as the model's float tensor (what followed the resize before)."""
    new_h, new_w = scaled.shape[:2]
    top, left = round((shape[0] - new_h) / 2 - 0.1), round((shape[1] - new_w) / 2 - 0.1)
    canvas = np.full((shape[0], shape[1], 3), 114, dtype=np.uint8)
    canvas[top : top + new_h, left : left + new_w] = scaled
    return np.ascontiguousarray(canvas.transpose(2, 0, 1), dtype=np.float32) / np.float32(255.0)


def _affine(picture: Image.Image, size: tuple[int, int], shape: tuple[int, int]) -> np.ndarray:
    """Pillow's affine bilinear sampling, then the tensor: the letterbox before stop 28."""
    scale = (picture.width / size[0], 0, 0, 0, picture.height / size[1], 0)
    scaled = picture.transform(size, Image.Transform.AFFINE, scale, resample=Image.Resampling.BILINEAR)
    return _tensor(np.asarray(scaled), shape)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=40)
    args = parser.parse_args()
    print(f"glibc's mmap threshold: {fix_mmap_threshold(Settings().malloc_mmap_threshold_kb)} (the server's)")
    try:
        import cv2
    except ImportError:
        cv2 = None
    print(f"{'picture':52} {'server':>8} {'Pillow affine':>14} {'OpenCV':>8} {'grey levels':>12}")
    for what, width, height in SIZES:
        pixels = np.random.default_rng(width).integers(0, 256, (height, width, 3), dtype=np.uint8)
        picture = Image.fromarray(pixels)
        rgbx = np.full((height, width, 4), 255, dtype=np.uint8)  # as pipeline.decode.decode_picture holds it
        rgbx[:, :, :3] = pixels
        shape = _shape(width, height)
        out = np.empty((3, *shape), dtype=np.float32)  # a tensor from the detector's pool
        boxed = letterbox(rgbx[:, :, :3], shape, out)
        size = (round(width * boxed.ratio), round(height * boxed.ratio))
        ours = _cpu_ms(partial(letterbox, rgbx[:, :, :3], shape, out), args.repeat)
        before = _cpu_ms(partial(_affine, picture, size, shape), args.repeat)
        if cv2 is None:
            print(f"{what:52} {ours:8.2f} {before:14.2f} {'-':>8} {'-':>12}")
            continue

        resize = partial(cv2.resize, pixels, size, interpolation=cv2.INTER_LINEAR)
        theirs = _cpu_ms(lambda resize=resize, shape=shape: _tensor(resize(), shape), args.repeat)
        reference = resize()
        part = boxed.tensor[:, boxed.top : boxed.top + size[1], boxed.left : boxed.left + size[0]]
        apart = float(np.abs(part.transpose(1, 2, 0) * 255.0 - reference).max())
        print(f"{what:52} {ours:8.2f} {before:14.2f} {theirs:8.2f} {apart:12.2f}")


if __name__ == "__main__":
    main()
