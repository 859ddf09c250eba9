"""Choosing the detector's runtime from the settings and the hardware, and caching exports."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from PIL import Image

from inference_server import demo_assets
from inference_server.detection.runtime import Hardware, artifact_path, plan_runtime
from inference_server.detection.ultralytics_backend import UltralyticsDetector

CPU_ONLY = Hardware(cuda=False, gpu_name=None, tensorrt=None, onnxruntime=True, openvino=False)
BARE_CPU = Hardware(cuda=False, gpu_name=None, tensorrt=None, onnxruntime=False, openvino=False)
# Fakes of GPU machines (no GPU here): only their description is used, nothing runs on them.
FAKE_H100 = Hardware(cuda=True, gpu_name="NVIDIA H100 80GB HBM3", tensorrt="10.13.0", onnxruntime=True, openvino=False)
FAKE_GPU_NO_TRT = Hardware(cuda=True, gpu_name="NVIDIA RTX 3060", tensorrt=None, onnxruntime=True, openvino=False)


@pytest.mark.parametrize(
    ("requested", "device", "half", "hw", "expected"),
    [
        ("auto", "auto", None, FAKE_H100, ("tensorrt", "cuda:0", True, False)),
        ("auto", "auto", None, FAKE_GPU_NO_TRT, ("pytorch", "cuda:0", True, False)),
        ("auto", "auto", None, CPU_ONLY, ("onnx", "cpu", False, False)),
        ("auto", "auto", None, BARE_CPU, ("pytorch", "cpu", False, False)),
        ("auto", "auto", False, FAKE_H100, ("tensorrt", "cuda:0", False, False)),
        ("tensorrt", "auto", None, CPU_ONLY, ("pytorch", "cpu", False, True)),
        ("tensorrt", "auto", None, FAKE_GPU_NO_TRT, ("pytorch", "cuda:0", True, True)),
        ("tensorrt", "cuda:0", None, CPU_ONLY, ("pytorch", "cpu", False, True)),
        ("onnx", "cpu", None, BARE_CPU, ("pytorch", "cpu", False, True)),
        ("openvino", "cpu", None, CPU_ONLY, ("onnx", "cpu", False, True)),
        ("pytorch", "cpu", True, CPU_ONLY, ("pytorch", "cpu", False, True)),
        ("pytorch", "cuda", None, FAKE_H100, ("pytorch", "cuda", True, False)),
    ],
)
def test_runtime_plan_follows_settings_and_hardware(
    requested: str, device: str, half: bool | None, hw: Hardware, expected: tuple[str, str, bool, bool]
) -> None:
    plan = plan_runtime(requested, device, half, hw)  # type: ignore[arg-type]
    assert (plan.format, plan.device, plan.half, plan.fallback) == expected
    if plan.fallback:
        # A fallback always says why, in the text that reaches the log and hsi/status.
        assert "fallback: " in plan.describe() and plan.reason


def test_tensorrt_without_gpu_names_the_reason() -> None:
    plan = plan_runtime("tensorrt", "auto", None, CPU_ONLY)
    assert plan.describe() == "pytorch cpu fp32 (fallback: TensorRT needs an NVIDIA GPU)"


def test_engine_cache_key_changes_with_gpu_tensorrt_and_weights(tmp_path: Path) -> None:
    weights = tmp_path / "yolo.pt"
    weights.write_bytes(b"weights v1")
    plan = plan_runtime("tensorrt", "auto", None, FAKE_H100)
    path = artifact_path(tmp_path, weights, plan, FAKE_H100, imgsz=640, batch=32)
    assert path is not None and path.parent == tmp_path / "tensorrt" and path.name.endswith(".engine")
    same = artifact_path(tmp_path, weights, plan, FAKE_H100, imgsz=640, batch=32)
    other_gpu = Hardware(True, "NVIDIA L4", "10.13.0", True, False)
    other_trt = Hardware(True, "NVIDIA H100 80GB HBM3", "10.14.1", True, False)
    variants = {
        artifact_path(tmp_path, weights, plan, other_gpu, imgsz=640, batch=32),
        artifact_path(tmp_path, weights, plan, other_trt, imgsz=640, batch=32),
        artifact_path(tmp_path, weights, plan, FAKE_H100, imgsz=960, batch=32),
        artifact_path(tmp_path, weights, plan, FAKE_H100, imgsz=640, batch=8),
    }
    assert same == path and path not in variants and len(variants) == 4
    weights.write_bytes(b"weights v2")
    assert artifact_path(tmp_path, weights, plan, FAKE_H100, imgsz=640, batch=32) != path
    # ONNX does not depend on the GPU; a .pt model needs no export at all.
    onnx = plan_runtime("onnx", "cpu", None, CPU_ONLY)
    assert artifact_path(tmp_path, weights, onnx, FAKE_H100, imgsz=640, batch=8) == artifact_path(
        tmp_path, weights, onnx, CPU_ONLY, imgsz=640, batch=8
    )
    torch_plan = plan_runtime("pytorch", "cpu", None, CPU_ONLY)
    assert artifact_path(tmp_path, weights, torch_plan, CPU_ONLY, imgsz=640, batch=8) is None


def _pictures() -> list[Image.Image]:
    out = []
    for name in ("bus.jpg", "zidane.jpg"):
        with Image.open(demo_assets.image(name)) as img:
            out.append(img.convert("RGB"))
    return out


def test_onnx_export_runs_the_real_weights_like_pytorch_and_is_cached(
    tmp_path: Path, pose_detector: UltralyticsDetector
) -> None:
    cache = tmp_path / "models"
    onnx = UltralyticsDetector(
        demo_assets.pose_weights(), device="cpu", keep_classes=["person"], runtime="onnx", cache_dir=cache
    )
    assert onnx.runtime.format == "onnx" and not onnx.runtime.fallback
    exported = list((cache / "onnx").glob("*.onnx"))
    assert len(exported) == 1 and exported[0].stat().st_size > 1_000_000
    assert onnx.describe().startswith("ultralytics:yolo11n-pose.pt onnx cpu fp32")

    pictures = _pictures()
    by_onnx, by_torch = onnx.detect(pictures), pose_detector.detect(pictures)
    assert [len(found) for found in by_torch] == [4, 2]
    for got, want in zip(by_onnx, by_torch, strict=True):
        assert [d.label for d in got] == [d.label for d in want]
        for a, b in zip(got, want, strict=True):
            assert abs(a.confidence - b.confidence) < 0.02
            assert all(abs(x - y) < 0.01 for x, y in zip(a.bbox, b.bbox, strict=True))

    mtime = exported[0].stat().st_mtime_ns
    again = UltralyticsDetector(demo_assets.pose_weights(), device="cpu", runtime="onnx", cache_dir=cache)
    assert again.runtime.format == "onnx" and exported[0].stat().st_mtime_ns == mtime


def test_tensorrt_requested_without_a_gpu_runs_pytorch_and_says_so(tmp_path: Path) -> None:
    detector = UltralyticsDetector(
        demo_assets.pose_weights(), device="auto", keep_classes=["person"], runtime="tensorrt", cache_dir=tmp_path
    )
    assert detector.runtime.format == "pytorch" and detector.runtime.fallback
    assert "TensorRT needs an NVIDIA GPU" in detector.describe()
    assert [len(found) for found in detector.detect(_pictures())] == [4, 2]
    assert not any(tmp_path.iterdir())


def test_a_failed_export_falls_back_to_the_weights(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # Hardware that claims OpenVINO although the package is absent here: the export fails inside
    # ultralytics (its auto-install is off), and the detector must still come up on the .pt model.
    claims_openvino = Hardware(cuda=False, gpu_name=None, tensorrt=None, onnxruntime=True, openvino=True)
    weights = tmp_path / "pose.pt"
    shutil.copy(demo_assets.pose_weights(), weights)
    with caplog.at_level("WARNING"):
        detector = UltralyticsDetector(
            weights,
            device="cpu",
            keep_classes=["person"],
            runtime="openvino",
            cache_dir=tmp_path / "m",
            hardware=claims_openvino,
        )
    assert detector.runtime.format == "pytorch" and detector.runtime.fallback
    assert detector.runtime.reason.startswith("openvino failed")
    assert any("falling back to pytorch" in r.getMessage() for r in caplog.records)
    assert [len(found) for found in detector.detect(_pictures())] == [4, 2]
