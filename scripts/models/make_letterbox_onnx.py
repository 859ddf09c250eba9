"""Write ``inference_server/detection/letterbox.onnx``: the onnx backend's letterbox as a graph.

The graph takes a picture as it is decoded (``uint8``, 1×H×W×C: RGB, or RGBX whose fourth byte it
drops, as the detect worker decodes JPEGs), the size to scale it to
(``sizes``: 1, 3, new height, new width) and the padding (``pads``: ONNX ``Pad``'s begin and end
per axis), and gives the model's input: 1×3×H'×W' ``float32``, 0–1, padded with grey 114.
Its ``Resize`` is linear with half-pixel centres and no antialiasing: OpenCV's ``INTER_LINEAR``,
the resize ultralytics' letterbox does, computed in floating point (within one grey level of
OpenCV's fixed point). ONNX Runtime runs it at about half the CPU of Pillow's affine bilinear
sampling (docs/performance.md, "Stop 28"), and the onnx backend already depends on it; the
``onnx`` package that builds the graph does not belong in the lean image, so the 400-byte file
is committed and ``tests/server/detection/test_onnx_backend.py`` checks it is this script's.

``python scripts/models/make_letterbox_onnx.py [--check]``
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TARGET = REPO / "inference_server" / "detection" / "letterbox.onnx"
PAD = 114


def build() -> bytes:
    """The graph's bytes (deterministic: the same ``onnx`` version writes the same bytes)."""
    from onnx import TensorProto, checker, helper

    nodes = [
        # NCHW before the resize: ONNX Runtime's linear Resize is 1.5 times faster on it than on NHWC.
        helper.make_node("Transpose", ["image"], ["chw"], perm=[0, 3, 1, 2]),
        # The first three channels (RGB of RGB or RGBX): after the transpose, whole planes (a
        # slice of the interleaved NHWC picture first costs twice the graph's CPU, measured).
        helper.make_node("Slice", ["chw", "first", "three", "channel_axis"], ["rgb"]),
        helper.make_node("Cast", ["rgb"], ["float"], to=TensorProto.FLOAT),
        helper.make_node(
            "Resize",
            ["float", "", "", "sizes"],
            ["scaled"],
            mode="linear",
            coordinate_transformation_mode="half_pixel",
            antialias=0,
        ),
        helper.make_node("Mul", ["scaled", "inverse_255"], ["unit"]),
        helper.make_node("Pad", ["unit", "pads", "grey"], ["tensor"], mode="constant"),
    ]
    graph = helper.make_graph(
        nodes,
        "hsi_letterbox",
        [
            helper.make_tensor_value_info("image", TensorProto.UINT8, [1, "height", "width", "channels"]),
            helper.make_tensor_value_info("sizes", TensorProto.INT64, [4]),
            helper.make_tensor_value_info("pads", TensorProto.INT64, [8]),
        ],
        [helper.make_tensor_value_info("tensor", TensorProto.FLOAT, [1, 3, "input_height", "input_width"])],
        initializer=[
            helper.make_tensor("inverse_255", TensorProto.FLOAT, [], [1.0 / 255.0]),
            helper.make_tensor("grey", TensorProto.FLOAT, [], [PAD / 255.0]),
            helper.make_tensor("first", TensorProto.INT64, [1], [0]),
            helper.make_tensor("three", TensorProto.INT64, [1], [3]),
            helper.make_tensor("channel_axis", TensorProto.INT64, [1], [1]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], producer_name="hsi")
    model.ir_version = 8  # readable by every ONNX Runtime the server allows (>= 1.20)
    checker.check_model(model, full_check=True)
    data: bytes = model.SerializeToString()
    return data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed file differs")
    args = parser.parse_args(argv)
    data = build()
    if args.check:
        same = TARGET.exists() and TARGET.read_bytes() == data
        print(f"{TARGET}: {'up to date' if same else 'differs from this script'}")
        return 0 if same else 1
    TARGET.write_bytes(data)
    print(f"{TARGET}: {len(data)} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
