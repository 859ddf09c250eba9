"""ONNX detector: an exported Ultralytics YOLO model run by ONNX Runtime, with NumPy and Pillow only.

The lean path (the add-on image): no torch, no ultralytics, no OpenCV. It reads what
ultralytics' ONNX export writes — class names, task, stride and input size in the model's
metadata; the output in the detect layout ``(batch, 4 + classes, anchors)`` (pose models add
the keypoints after the class scores) or the end-to-end layout ``(batch, detections, 6)`` —
and reproduces ultralytics' pre- and post-processing: the letterbox (grey 114 padding, centred),
confidence filter, class filter and class-aware non-maximum suppression.

``detector_runtime: openvino`` uses ONNX Runtime's OpenVINO execution provider (Intel CPUs and
iGPUs) where ``onnxruntime-openvino`` is installed; otherwise a labelled fallback to the CPU
provider. A CUDA device uses the CUDA provider where ``onnxruntime-gpu`` is installed.
"""

from __future__ import annotations

import ast
import logging
import os
import threading
from collections.abc import Callable, Sequence
from concurrent import futures
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from PIL import Image

from inference_server import buffers
from inference_server.config import Settings
from inference_server.decode_budget import MIB, trim_heap
from inference_server.detection.detector import DetectorModelMissing, RgbPixels, packed, register_detector, rgb_array
from inference_server.domain import Detection

log = logging.getLogger(__name__)

Floats = npt.NDArray[np.float32]
_In = TypeVar("_In")
_Out = TypeVar("_Out")

#: ultralytics' defaults for ``predict``: IoU of the NMS, detections kept per image, the largest
#: box side used to keep classes apart in one class-aware NMS pass.
IOU = 0.7
MAX_DET = 300
_MAX_WH = 7680.0
_PAD = 114


class ModelFormatError(DetectorModelMissing, ValueError):
    """The file is not an ONNX detection model this backend can run (with what to do instead)."""


@dataclass(slots=True)
class Letterboxed:
    """One picture as the model takes it, and what maps its boxes back to the picture."""

    tensor: Floats  # (3, H, W), RGB, 0-1
    width: int
    height: int
    ratio: float
    left: int
    top: int
    #: Inferred, and its tensor given back to the detector's pool: it may hold another picture now.
    spent: bool = False


@dataclass(frozen=True, slots=True)
class ModelInfo:
    names: dict[int, str]
    task: str
    stride: int
    imgsz: tuple[int, int]
    #: The model's input height/width are free (exported with ``dynamic=True``).
    dynamic_size: bool
    dynamic_batch: bool
    end2end: bool


def read_model_info(session: ort.InferenceSession, path: Path) -> ModelInfo:
    """The class names and input geometry from ultralytics' ONNX metadata."""
    meta = session.get_modelmeta().custom_metadata_map
    try:
        names_raw = ast.literal_eval(meta["names"])
    except (KeyError, ValueError, SyntaxError) as err:
        raise ModelFormatError(
            f"{path}: no class names in the ONNX metadata (export it with ultralytics: "
            f"scripts/models/export_yolo_onnx.py): {err!r}"
        ) from None
    if not isinstance(names_raw, dict) or not names_raw:
        raise ModelFormatError(f"{path}: the ONNX metadata's names are not a class table: {meta['names']!r}")
    names = {int(k): str(v) for k, v in names_raw.items()}
    imgsz_raw = ast.literal_eval(meta.get("imgsz", "[640, 640]"))
    imgsz = (int(imgsz_raw[0]), int(imgsz_raw[1])) if isinstance(imgsz_raw, list | tuple) else (640, 640)
    [image_input] = session.get_inputs()
    batch, _, height, width = image_input.shape
    return ModelInfo(
        names=names,
        task=str(meta.get("task", "detect")),
        stride=int(meta.get("stride", "32")),
        imgsz=imgsz,
        dynamic_size=not (isinstance(height, int) and isinstance(width, int)),
        dynamic_batch=not isinstance(batch, int),
        end2end=meta.get("end2end", "False") == "True",
    )


#: The letterbox as an ONNX graph (``scripts/models/make_letterbox_onnx.py`` writes it): a linear
#: ``Resize`` with half-pixel centres and no antialiasing (OpenCV's ``INTER_LINEAR``), the scale to
#: 0-1 and the grey padding, in one call.
LETTERBOX_GRAPH = Path(__file__).with_name("letterbox.onnx")


@cache
def _letterbox_session() -> ort.InferenceSession:
    """One session for every decode thread (``run`` is thread-safe), each call on the calling
    thread: the decode threads are the parallelism."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(LETTERBOX_GRAPH), sess_options=options, providers=["CPUExecutionProvider"])


def _shrinking() -> ort.RunOptions:
    """A run that gives ONNX Runtime's CPU arena back at its end: every region of it that no tensor
    uses, but the first (the arena otherwise keeps the largest run's intermediates for as long as
    the process runs)."""
    options = ort.RunOptions()
    options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
    return options


def shrink_letterbox_arena() -> None:
    """The letterbox graph's arena given back (``OnnxDetector.release_idle``): one run of a tiny
    picture with arena shrinkage; nothing where no letterbox went through the graph yet."""
    if _letterbox_session.cache_info().currsize == 0:
        return
    tiny = np.zeros((2, 2, 3), dtype=np.uint8)
    _run_letterbox_graph(tiny, (1, 1), [0, 0, 0, 0, 0, 0, 1, 1], np.empty((3, 2, 2), np.float32), _shrinking())


def _run_letterbox_graph(
    rgb: RgbPixels, size: tuple[int, int], pads: list[int], out: Floats, run_options: ort.RunOptions | None = None
) -> None:
    """The letterbox graph on ``rgb`` (RGB or RGBX), scaled to ``size`` (height, width) and
    padded by ``pads`` (its ``Pad`` order), written straight into ``out`` (not into a tensor the
    runtime would allocate); one call at a time (``_LETTERBOX_LOCK``)."""
    session = _letterbox_session()
    binding = session.io_binding()
    binding.bind_cpu_input("image", packed(rgb)[np.newaxis])
    binding.bind_cpu_input("sizes", np.array([1, 3, *size], dtype=np.int64))
    binding.bind_cpu_input("pads", np.array(pads, dtype=np.int64))
    binding.bind_output("tensor", "cpu", 0, np.float32, (1, *out.shape), out.ctypes.data)
    with _LETTERBOX_LOCK:
        session.run_with_iobinding(binding, run_options)


#: One letterbox at a time through the graph. ONNX Runtime's arena keeps the intermediates of the
#: largest calls that ran at once for as long as the process runs: 120 MB with three decode
#: threads on 1-MP pictures, one call's ~36 MB with this lock (tests/server/detection/
#: test_onnx_memory.py). Without the arena every call maps its intermediates afresh (glibc's fixed
#: mmap threshold) and their page faults cost more than the resize (5-9 ms a call, measured).
_LETTERBOX_LOCK = threading.Lock()


def _odd_factor(pixels: RgbPixels, new_w: int, new_h: int) -> RgbPixels | None:
    """OpenCV's ``INTER_LINEAR`` where the picture is an odd whole ``k`` times the new size,
    exactly and without arithmetic: it samples at ``k·x + (k - 1) / 2``, the pixel at each
    block's centre (a 1920×1080 frame decoded whole, or 3840×2160 at 1/2, to 640×360): a view of
    every ``k``-th pixel, nothing copied. ``None`` for any other scale."""
    height, width = pixels.shape[:2]
    factor = width // new_w
    if factor < 3 or factor % 2 == 0 or (width, height) != (factor * new_w, factor * new_h):
        return None
    return pixels[factor // 2 :: factor, factor // 2 :: factor]


def letterbox(image: Image.Image | RgbPixels, shape: tuple[int, int], out: Floats | None = None) -> Letterboxed:
    """Scale the longest side to fit ``shape`` (height, width), pad the rest with grey 114, centred:
    ultralytics' ``LetterBox``, its rounding and its interpolation (OpenCV's ``INTER_LINEAR``).

    ``image``: RGB pixels (the pipeline's decoded picture, read where it is) or a Pillow image
    (copied out first). An odd whole factor is OpenCV's resize exactly and for free
    (``_odd_factor``). Any other scale (1280×720 to 640×360; a 1080p frame decoded at 1/2,
    960×540, to 640×360; bus.jpg's 810×1080 to 480×640) goes through ONNX Runtime's ``Resize``
    (``LETTERBOX_GRAPH``): bilinear sampling at the mapped pixel centres in floating point,
    within one grey level of OpenCV's fixed point (2:1 is the exact mean of each 2×2 block,
    which OpenCV rounds to a whole level), in half the CPU of Pillow's affine bilinear sampling.
    Pillow's ``resize`` filter smooths a downscale, which moved scores by up to 0.04 (measured),
    so it is not used.

    ``out``, a C-contiguous ``float32`` array of shape (3, height, width), receives the tensor
    (every element written; from the detector's pool: no fresh mapping to page-fault in)."""
    rgb = rgb_array(image)
    if out is None:
        out = np.empty((3, shape[0], shape[1]), dtype=np.float32)
    elif out.shape != (3, shape[0], shape[1]) or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError(f"letterbox output must be a contiguous float32 (3, {shape[0]}, {shape[1]}) array")
    height, width = rgb.shape[:2]
    ratio = min(shape[0] / height, shape[1] / width)
    new_w, new_h = round(width * ratio), round(height * ratio)
    dw, dh = (shape[1] - new_w) / 2, (shape[0] - new_h) / 2
    top, left = round(dh - 0.1), round(dw - 0.1)
    if (new_w, new_h) != (width, height):
        scaled = _odd_factor(rgb, new_w, new_h)
        if scaled is None:
            pads = [0, 0, top, left, 0, 0, shape[0] - new_h - top, shape[1] - new_w - left]
            _run_letterbox_graph(rgb, (new_h, new_w), pads, out)
            return Letterboxed(out, width, height, ratio, left, top)
        rgb = scaled
    # Straight into the tensor, in one pass: grey around, the picture scaled to 0-1 (CHW) within.
    tensor = out
    grey = np.float32(_PAD / 255.0)
    tensor[:, :top], tensor[:, top + new_h :] = grey, grey
    tensor[:, :, :left], tensor[:, :, left + new_w :] = grey, grey
    inside = tensor[:, top : top + new_h, left : left + new_w]
    np.multiply(rgb.transpose(2, 0, 1), np.float32(1.0 / 255.0), out=inside, casting="unsafe")
    return Letterboxed(tensor, width, height, ratio, left, top)


def _iou(box: Floats, others: Floats) -> Floats:
    x1 = np.maximum(box[0], others[:, 0])
    y1 = np.maximum(box[1], others[:, 1])
    x2 = np.minimum(box[2], others[:, 2])
    y2 = np.minimum(box[3], others[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    result: Floats = inter / (area + areas - inter + 1e-9)
    return result


def nms(boxes: Floats, scores: Floats, iou: float = IOU, max_det: int = MAX_DET) -> list[int]:
    """Greedy non-maximum suppression: indices of the kept boxes, best first."""
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size and len(keep) < max_det:
        best = int(order[0])
        keep.append(best)
        rest = order[1:]
        order = rest[_iou(boxes[best], boxes[rest]) <= iou]
    return keep


def decode(
    output: Floats,
    num_classes: int,
    *,
    confidence: float,
    keep_ids: Sequence[int] | None,
    end2end: bool,
) -> tuple[Floats, Floats, npt.NDArray[np.int64]]:
    """One image's raw output to (boxes xyxy in input pixels, scores, class ids) after NMS."""
    if end2end:  # (detections, 6): x1, y1, x2, y2, score, class — NMS is in the graph
        boxes, scores, classes = output[:, :4], output[:, 4], output[:, 5].astype(np.int64)
        mask = scores > confidence
    else:  # (4 + classes [+ keypoints], anchors): cx, cy, w, h, class scores
        rows = output.T
        class_scores = rows[:, 4 : 4 + num_classes]
        classes = class_scores.argmax(axis=1).astype(np.int64)
        scores = class_scores[np.arange(len(rows)), classes]
        mask = scores > confidence
        cx, cy, w, h = (rows[:, i] for i in range(4))
        boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    if keep_ids is not None:
        mask &= np.isin(classes, np.asarray(keep_ids, dtype=np.int64))
    boxes, scores, classes = boxes[mask], scores[mask], classes[mask]
    if not end2end and len(scores):
        # Class-aware NMS in one pass: boxes of different classes are moved apart so they never overlap.
        offset = classes.astype(np.float32)[:, None] * np.float32(_MAX_WH)
        kept = nms(boxes + offset, scores)
        boxes, scores, classes = boxes[kept], scores[kept], classes[kept]
    return boxes.astype(np.float32), scores.astype(np.float32), classes


def _providers(runtime: str, device: str) -> tuple[list[str], str | None]:
    """ONNX Runtime execution providers for the request, and why it is not met (None: it is)."""
    available = set(ort.get_available_providers())
    if runtime == "openvino":
        if "OpenVINOExecutionProvider" in available:
            return ["OpenVINOExecutionProvider", "CPUExecutionProvider"], None
        return ["CPUExecutionProvider"], "openvino requested but onnxruntime-openvino is not installed"
    if device.startswith("cuda"):
        if "CUDAExecutionProvider" in available:
            return ["CUDAExecutionProvider", "CPUExecutionProvider"], None
        return ["CPUExecutionProvider"], f"device {device} requested but onnxruntime has no CUDA provider"
    if runtime in ("pytorch", "tensorrt"):
        return ["CPUExecutionProvider"], f"{runtime} is not available in the onnx backend"
    return ["CPUExecutionProvider"], None


class OnnxDetector:
    """An ultralytics-exported ONNX model, run by ONNX Runtime. Thread-safe ``prepare``; one
    ``detect`` at a time (the detect stage's inference thread)."""

    name = "onnx"

    def __init__(
        self,
        weights: Path,
        *,
        confidence: float = 0.4,
        imgsz: int = 640,
        keep_classes: Sequence[str] = (),
        runtime: str = "auto",
        device: str = "auto",
        threads: int = 0,
        spin: bool = False,
        tensor_cache_mb: int = 32,
    ) -> None:
        if not weights.exists():
            raise DetectorModelMissing(
                f"detector weights not found: {weights} (set HSI_DETECTOR_WEIGHTS to an exported .onnx model; "
                "see docs/configuration.md)"
            )
        if weights.suffix.lower() != ".onnx":
            raise ModelFormatError(
                f"{weights}: the onnx backend runs exported .onnx models; export the weights with "
                "scripts/models/export_yolo_onnx.py, or use detector_backend ultralytics"
            )
        self.weights = weights
        self.confidence = confidence
        providers, problem = _providers(runtime, "cpu" if device == "auto" else device)
        # (A GPU's or OpenVINO's threads are their own.)
        options, self.parallel_runs = session_options(threads, spin, cpu=providers[0] == "CPUExecutionProvider")
        self._session = ort.InferenceSession(str(weights), sess_options=options, providers=providers)
        self._runs = RunsAtOnce(self.parallel_runs)
        #: The letterboxed tensors and batches, reused while images flow (``buffers``).
        self._tensors = buffers.ArrayPool(tensor_cache_mb * MIB, np.float32)
        # Building the session optimises the graph on copies of the weights and frees them; glibc
        # keeps freed heap, so the process would hold ~3.5 times the file (122 MB for a 35 MB model,
        # 49 MB after this; tests/server/detection/test_onnx_memory.py). Hand it back.
        trim_heap()
        self._input = self._session.get_inputs()[0].name
        self.info = read_model_info(self._session, weights)
        self.names = self.info.names
        self.imgsz = imgsz if self.info.dynamic_size else self.info.imgsz[0]
        self.fallback = problem
        used = self._session.get_providers()[0]
        how = f", {runs}" if (runs := describe_runs(options, self.parallel_runs)) else ""
        self.runtime = f"onnxruntime {ort.__version__} {used}{how}" + (f" (fallback: {problem})" if problem else "")
        if problem:
            log.warning("detector runtime fallback requested=%s device=%s using=%s", runtime, device, self.runtime)
        wanted = {c.lower() for c in keep_classes}
        kept = [i for i, n in self.names.items() if n.lower() in wanted]
        if wanted and not kept:
            log.warning(
                "detector model has none of detect_classes; keeping all its classes weights=%s classes=%s",
                weights,
                sorted(self.names.values()),
            )
            self.kept_ids: list[int] | None = None
        else:
            self.kept_ids = kept or None
        log.info(
            "detector loaded backend=onnx weights=%s task=%s runtime=%s classes=%s",
            weights,
            self.info.task,
            self.runtime,
            [self.names[i] for i in self.kept_ids] if self.kept_ids is not None else "all",
        )

    def describe(self) -> str:
        return f"onnx:{self.weights.name} {self.runtime}"

    def _shape(self, width: int, height: int) -> tuple[int, int]:
        """The input (height, width): the model's fixed size; for a dynamic model the rectangle
        ultralytics' ``predict`` gives it (the scaled picture, padded to a stride multiple): a 16:9
        camera costs 40 % less than the square."""
        if not self.info.dynamic_size:
            return self.info.imgsz
        ratio = min(self.imgsz / height, self.imgsz / width)
        new_h, new_w = round(height * ratio), round(width * ratio)
        stride = self.info.stride
        return (new_h + (self.imgsz - new_h) % stride, new_w + (self.imgsz - new_w) % stride)

    def prepare(self, image: Image.Image | RgbPixels) -> Letterboxed:
        """The letterboxed tensor, in an array of the detector's pool (given back by ``detect``)."""
        rgb = rgb_array(image)
        shape = self._shape(rgb.shape[1], rgb.shape[0])
        return letterbox(rgb, shape, out=self._tensors.take((3, *shape)))

    def detect(self, images: Sequence[Any]) -> list[list[Detection]]:
        """Detections per input. The tensors of prepared inputs go back to the pool once every
        run has succeeded (a failed batch is retried image by image on the same inputs): a
        prepared input is inferred once, and raises ``ValueError`` if passed again."""
        if any(isinstance(i, Letterboxed) and i.spent for i in images):
            raise ValueError("a prepared input was already inferred: its tensor holds another picture now")
        prepared = [i if isinstance(i, Letterboxed) else self.prepare(i) for i in images]
        out: list[list[Detection]] = [[] for _ in prepared]
        groups: dict[tuple[int, ...], list[int]] = {}
        for index, item in enumerate(prepared):
            groups.setdefault(item.tensor.shape, []).append(index)
        chunks: list[list[int]] = []
        for indices in groups.values():
            # A fixed-batch model takes one picture at a time; a dynamic one the group, in as many
            # runs as go at once.
            parts = min(self.parallel_runs, len(indices)) if self.info.dynamic_batch else len(indices)
            chunks += [part.tolist() for part in np.array_split(indices, parts)]
        # The longest runs first (a run's work follows its pictures' pixels), so that the runs at
        # once end together: the last to start is a short one.
        chunks.sort(key=lambda chunk: len(chunk) * prepared[chunk[0]].tensor.size, reverse=True)
        batches = [self._batch([prepared[i].tensor for i in chunk]) for chunk in chunks]
        try:
            for chunk, raw in zip(chunks, self._run_all(batches), strict=True):
                for row, index in enumerate(chunk):
                    out[index] = self._detections(np.asarray(raw[row], dtype=np.float32), prepared[index])
        finally:
            for batch in batches:
                self._tensors.give(batch)  # a view (one picture) is refused: its tensor goes back below
        for item in prepared:
            if not item.spent:  # the same input twice in one call goes back once
                item.spent = True
                self._tensors.give(item.tensor)
        return out

    def _batch(self, tensors: list[Floats]) -> Floats:
        if len(tensors) == 1:
            return tensors[0][np.newaxis]  # a view: nothing to copy
        return np.stack(tensors, out=self._tensors.take((len(tensors), *tensors[0].shape)))

    def _run_all(self, batches: list[Floats]) -> list[Floats]:
        """The model's first output for each batch: up to ``parallel_runs`` at once, the first
        on this thread (ONNX Runtime's ``run`` is thread-safe)."""
        return self._runs.map(self._run, batches)

    def _run(self, batch: Floats) -> Floats:
        raw: Floats = self._session.run(None, {self._input: batch})[0]
        return raw

    def _detections(self, output: Floats, box: Letterboxed) -> list[Detection]:
        boxes, scores, classes = decode(
            output, len(self.names), confidence=self.confidence, keep_ids=self.kept_ids, end2end=self.info.end2end
        )
        found: list[Detection] = []
        for (x1, y1, x2, y2), score, cls in zip(boxes.tolist(), scores.tolist(), classes.tolist(), strict=True):
            # Back to the picture (undo the padding and the scale), clipped, then normalised.
            nx1, nx2 = ((min(max((x - box.left) / box.ratio, 0.0), box.width) / box.width) for x in (x1, x2))
            ny1, ny2 = ((min(max((y - box.top) / box.ratio, 0.0), box.height) / box.height) for y in (y1, y2))
            found.append(Detection(self.names[int(cls)], round(float(score), 4), (nx1, ny1, nx2, ny2)))
        found.sort(key=lambda d: d.confidence, reverse=True)
        return found

    def warmup(self) -> None:
        self.detect([Image.new("RGB", (self.imgsz, self.imgsz))])

    def release_idle(self) -> None:
        """ONNX Runtime's CPU arenas given back (the model's, 35 MB after batches of 4 of the
        tests' COCO detector, and the letterbox graph's, 18 MB after 1 MP pictures): one run of a
        blank input with arena shrinkage each (a dynamic model's is one stride square, a fixed
        one's its size), then glibc's free heap. A GPU's arena is left as it is."""
        shape = self.info.imgsz if not self.info.dynamic_size else (self.info.stride, self.info.stride)
        blank = np.zeros((1, 3, *shape), dtype=np.float32)
        self._session.run(None, {self._input: blank}, run_options=_shrinking())
        shrink_letterbox_arena()
        trim_heap()


def session_options(threads: int, spin: bool, *, cpu: bool) -> tuple[ort.SessionOptions, int]:
    """A session's options as ``detector_onnx_threads`` and ``detector_onnx_spin`` ask (the onnx
    backend's, and the ultralytics backend's session built again on a CPU), and how many runs of
    one batch go at once (its pictures split between them). On the CPU provider (``cpu``), unless
    ``threads`` asks for the runtime's own pool: one thread a run, and a batch split into runs at
    once, one a CPU, rather than each layer split between the runtime's threads: a lone picture
    costs 10-20 ms of CPU less (the runtime woke its other thread ~225 times a picture, and after a
    second's sleep each wake-up is slow), a batch runs 15-20 % faster (performance.md, stop 45)."""
    options = ort.SessionOptions()
    runs = 1
    if threads > 0:
        options.intra_op_num_threads = threads
    elif cpu:
        options.intra_op_num_threads = 1
        runs = usable_cores()
    if not spin:
        # Idle pool threads sleep at once instead of busy-waiting for the next parallel section:
        # 15-20 ms of CPU per image less on 2 cores, where the other stages need it (performance.md).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return options, runs


def describe_runs(options: ort.SessionOptions, runs: int) -> str:
    """How a session was told to use the CPU ("one thread a run, 2 at once"; empty: the
    runtime's default, said nothing of)."""
    intra = options.intra_op_num_threads
    how = f"{intra} threads a run" if intra > 1 else "one thread a run" if intra == 1 else ""
    return f"{how}, {runs} at once" if runs > 1 else how


class RunsAtOnce:
    """Calls that go at once, up to ``width`` of them, on a pool of ``width`` threads (made when
    first needed), each taking the next call as soon as its last one has ended, in the order given
    (the onnx backend puts the longest first); a lone call runs on the calling thread. They went
    in waves, the calling thread running the first of each, and a wave waited for its slowest
    call: with pictures of several shapes in one batch a CPU sat idle for a tenth of the batch
    (docs/decisions.md, "Runs taken as CPUs free up"). Every call has ended before the results or
    the first error come back, so no call still reads an input its caller is about to reuse. One
    caller at a time (the inference thread)."""

    def __init__(self, width: int) -> None:
        self.width = max(1, width)
        self._pool: ThreadPoolExecutor | None = None

    def map(self, call: Callable[[_In], _Out], items: Sequence[_In]) -> list[_Out]:
        if len(items) == 1 or self.width == 1:
            return [call(item) for item in items]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.width, thread_name_prefix="infer-run")
        runs = [self._pool.submit(call, item) for item in items]
        futures.wait(runs)
        return [run.result() for run in runs]


def usable_cores() -> int:
    """The CPUs this process may run on (its affinity: a container's ``--cpuset-cpus``)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@register_detector("onnx")
def _build(settings: Settings) -> OnnxDetector:
    return OnnxDetector(
        settings.detector_weights,
        confidence=settings.detector_confidence,
        imgsz=settings.detector_imgsz,
        keep_classes=settings.detect_classes,
        runtime=settings.detector_runtime,
        device=settings.detector_device,
        spin=settings.detector_onnx_spin,
        threads=settings.detector_onnx_threads,
        tensor_cache_mb=settings.detector_tensor_cache_mb,
    )
