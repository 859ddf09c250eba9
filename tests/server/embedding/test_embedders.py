"""The real face and body embedders (ONNX, built by scripts/models/fetch from registry packages)
on real photos: the same person in another view is recognised, a different person is not."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from PIL import Image, ImageOps

from inference_server import demo_assets
from inference_server.config import Settings
from inference_server.detection.ultralytics_backend import UltralyticsDetector
from inference_server.domain import Detection
from inference_server.embedding.crops import body_box, crop, face_box
from inference_server.embedding.embedder import build_embedder
from inference_server.embedding.matching import LINK_THRESHOLD, THRESHOLDS, Gallery, identify, link
from inference_server.embedding.onnx_backend import ModelLayoutError, OnnxEmbedder
from inference_server.pipeline.identify import Recognizer
from inference_server.telemetry import metrics


@pytest.fixture(scope="module")
def face() -> OnnxEmbedder:
    return OnnxEmbedder("face", demo_assets.embedder_model("face"))


@pytest.fixture(scope="module")
def body() -> OnnxEmbedder:
    return OnnxEmbedder("body", demo_assets.embedder_model("body"))


def _people(detector: UltralyticsDetector, image: Image.Image) -> list[Detection]:
    return [d for d in detector.detect([image])[0] if d.category == "person"]


def _embed(
    detector: UltralyticsDetector, face: OnnxEmbedder, body: OnnxEmbedder, image: Image.Image
) -> list[tuple[np.ndarray | None, np.ndarray | None]]:
    pixels = np.asarray(image)
    out = []
    for det in _people(detector, image):
        fb, bb = face_box(det, *image.size), body_box(det, *image.size)
        out.append(
            (
                face.embed([crop(pixels, fb)])[0] if fb else None,
                body.embed([crop(pixels, bb)])[0] if bb else None,
            )
        )
    return out


def test_models_take_rgb_nhwc_and_give_unit_vectors(face: OnnxEmbedder, body: OnnxEmbedder) -> None:
    assert (face.dimensions, face.size) == (1024, (224, 224))
    assert (body.dimensions, body.size) == (1280, (224, 224))
    crops = [np.full((90, 60, 3), 128, np.uint8), np.zeros((30, 40, 3), np.uint8) + 20]
    for embedder in (face, body):
        vectors = embedder.embed(crops)
        assert vectors.shape == (2, embedder.dimensions)
        assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
        assert embedder.embed([]).shape == (0, embedder.dimensions)


def test_registry_builds_the_onnx_backend_and_refuses_unknown_names() -> None:
    built = build_embedder("onnx", "body", demo_assets.embedder_model("body"), "cpu")
    assert built.describe().startswith("onnx body") and built.dimensions == 1280
    with pytest.raises(ValueError, match="unknown embedder_backend 'arcface-rt'"):
        build_embedder("arcface-rt", "face", demo_assets.embedder_model("face"), "cpu")


def test_a_model_of_another_layout_is_refused_with_its_shape(tmp_path: Path) -> None:
    # NCHW input: a classifier exported the PyTorch way, not the layout HSI feeds.
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["x"], ["y"])],
        "nchw",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 224, 224])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3, 1, 1])],
    )
    path = tmp_path / "nchw.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), path)
    with pytest.raises(ModelLayoutError, match=r"expected one input \[N, H, W, 3\]"):
        OnnxEmbedder("face", path)


def test_enrolled_from_one_photo_recognised_in_another_view_and_strangers_rejected(
    pose_detector: UltralyticsDetector, face: OnnxEmbedder, body: OnnxEmbedder
) -> None:
    astronaut = Image.open(demo_assets.image("astronaut.png")).convert("RGB")
    [(enrol_face, enrol_body)] = _embed(pose_detector, face, body, astronaut)
    assert enrol_face is not None and enrol_body is not None
    gallery = Gallery.build([(7, "face", enrol_face.tolist()), (7, "body", enrol_body.tolist())])

    # Another view: mirrored and cropped (the camera sees her from elsewhere, closer).
    view = ImageOps.mirror(astronaut).crop((20, 30, 500, 512))
    [(view_face, view_body)] = _embed(pose_detector, face, body, view)
    match = identify(gallery, view_face, view_body)
    assert match is not None and match.person_id == 7 and match.source == "face"
    assert match.similarity >= THRESHOLDS["face"]

    # Different people: every face in zidane.jpg and bus.jpg is unknown.
    strangers = 0
    for name in ("zidane.jpg", "bus.jpg"):
        image = Image.open(demo_assets.image(name)).convert("RGB")
        for other_face, other_body in _embed(pose_detector, face, body, image):
            if other_face is not None:
                strangers += 1
                assert identify(gallery, other_face, other_body) is None
                best = gallery.best("face", other_face)
                assert best is not None and best.similarity < THRESHOLDS["face"]
    assert strangers >= 2


def test_same_unknown_person_is_linked_across_images_and_another_is_not(
    pose_detector: UltralyticsDetector, body: OnnxEmbedder, face: OnnxEmbedder
) -> None:
    zidane = Image.open(demo_assets.image("zidane.jpg")).convert("RGB")
    first = _embed(pose_detector, face, body, zidane)
    later = _embed(pose_detector, face, body, zidane.point(lambda v: min(255, int(v * 1.2))))
    assert len(first) == len(later) == 2
    earlier = [(101, first[0][1].tolist()), (102, first[1][1].tolist())]  # type: ignore[union-attr]
    assert link(earlier, later[0][1]) == 101  # type: ignore[arg-type]
    assert link(earlier, later[1][1]) == 102  # type: ignore[arg-type]
    astronaut = Image.open(demo_assets.image("astronaut.png")).convert("RGB")
    [(_f, other)] = _embed(pose_detector, face, body, astronaut)
    assert other is not None and link(earlier, other) is None
    assert LINK_THRESHOLD > 0.8


def test_no_face_without_frontal_keypoints() -> None:
    box = (0.2, 0.1, 0.6, 0.9)
    assert face_box(Detection("person", 0.9, box), 640, 480) is None  # a model without keypoints
    back = tuple([(0.4, 0.2, 0.1), (0.38, 0.18, 0.2), (0.42, 0.18, 0.1), (0.35, 0.2, 0.9), (0.45, 0.2, 0.9)])
    assert face_box(Detection("person", 0.9, box, back), 640, 480) is None  # ears seen, not the eyes: a back
    tiny = tuple([(0.4, 0.2, 0.9), (0.399, 0.19, 0.9), (0.401, 0.19, 0.9), (0.0, 0.0, 0.0), (0.0, 0.0, 0.0)])
    assert face_box(Detection("person", 0.9, box, tiny), 640, 480) is None  # a face 3 px across
    assert body_box(Detection("person", 0.9, (0.5, 0.5, 0.51, 0.52)), 640, 480) is None


async def test_recognition_is_skipped_and_counted_while_results_wait_to_be_stored(
    pose_detector: UltralyticsDetector, face: OnnxEmbedder, body: OnnxEmbedder
) -> None:
    recognizer = Recognizer(Settings(embedding_max_people=1), {"face": face, "body": body}, {"face": "f", "body": "b"})
    zidane = Image.open(demo_assets.image("zidane.jpg")).convert("RGB")
    dets = pose_detector.detect([zidane])[0]
    assert len(dets) == 2

    def counted(result: str) -> float:
        return metrics.EMBEDDINGS.labels(result)._value.get()  # type: ignore[no-any-return]

    busy, limited, done = counted("busy"), counted("per_image_limit"), counted("done")
    skipped = await recognizer.embed(zidane, dets, backlog=1)
    assert skipped == [None, None] and counted("busy") == busy + 2
    embedded = await recognizer.embed(zidane, dets)
    # One person per image at most: the larger one is embedded, the other counted as limited.
    larger = max(range(2), key=lambda i: (dets[i].bbox[2] - dets[i].bbox[0]) * (dets[i].bbox[3] - dets[i].bbox[1]))
    assert embedded[larger] is not None and embedded[1 - larger] is None
    assert counted("per_image_limit") == limited + 1 and counted("done") == done + 1
    recognizer.close()
