"""Convert the HSE FaceRes face descriptor from npm ``@vladmandic/human@3.3.6`` (MIT; files
``models/faceres.json`` + ``models/faceres.bin``, a TensorFlow.js graph model) to ONNX.

Runs in a throwaway virtual environment with ``tensorflow-cpu==2.21.0`` and ``tf2onnx==1.17.0``
(``scripts/models/fetch`` makes it under ``~/.cache/hsi/convert-venv``); the server never
imports TensorFlow. ``python convert_face_embedder.py faceres.json OUT.onnx``.

A TFJS graph model is a ``GraphDef`` in JSON plus its constants in a binary file (here stored
as float16): the graph is rebuilt as a ``GraphDef`` with the constants filled in, cut at the
1024-d descriptor (``global_pooling/Mean``; the gender and age heads are dropped, and with them
the fused ``_FusedMatMul`` nodes tf2onnx cannot read), and converted by tf2onnx. The result
is checked against TensorFlow on the same input before it is written.

Input ``image``: RGB, 224×224, float 0–255, NHWC (``[N, 224, 224, 3]``), as the TFJS model;
output ``embedding``: ``[N, 1024]``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

# tf2onnx 1.17 still calls np.product, removed in NumPy 2.
if not hasattr(np, "product"):
    np.product = np.prod  # type: ignore[attr-defined]

import tensorflow as tf
import tf2onnx
from google.protobuf import json_format

OUTPUT = "global_pooling/Mean"


def graph_def(model_json: Path) -> tf.compat.v1.GraphDef:
    model = json.loads(model_json.read_text())
    graph = json_format.ParseDict(model["modelTopology"], tf.compat.v1.GraphDef(), ignore_unknown_fields=True)
    consts: dict[str, np.ndarray] = {}
    for group in model["weightsManifest"]:
        blob = b"".join((model_json.parent / p).read_bytes() for p in group["paths"])
        offset = 0
        for spec in group["weights"]:
            count = int(np.prod(spec["shape"])) if spec["shape"] else 1
            stored = np.dtype(spec.get("quantization", {}).get("dtype", spec["dtype"]))
            if stored not in (np.float16, np.float32, np.int32):
                raise SystemExit(f"unsupported stored dtype {stored} for {spec['name']}")
            raw = np.frombuffer(blob, dtype=stored, count=count, offset=offset)
            offset += count * stored.itemsize
            consts[spec["name"]] = raw.astype(np.dtype(spec["dtype"])).reshape(spec["shape"])
        if offset != len(blob):
            raise SystemExit(f"weights use {offset} of {len(blob)} bytes: the manifest does not match")
    for node in graph.node:
        if node.op == "Const":
            node.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(consts.pop(node.name)))
    if consts:
        raise SystemExit(f"weights without a node: {sorted(consts)}")
    return tf.compat.v1.graph_util.extract_sub_graph(graph, [OUTPUT])


def main() -> None:
    model_json, out = Path(sys.argv[1]), Path(sys.argv[2])
    graph = graph_def(model_json)
    proto, _ = tf2onnx.convert.from_graph_def(graph, input_names=["input_1:0"], output_names=[f"{OUTPUT}:0"], opset=17)
    # Name the ends as every HSI embedder does.
    for value in proto.graph.input:
        if value.name == "input_1:0":
            value.name = "image"
    for value in proto.graph.output:
        if value.name == f"{OUTPUT}:0":
            value.name = "embedding"
    for node in proto.graph.node:
        node.input[:] = ["image" if i == "input_1:0" else i for i in node.input]
        node.output[:] = ["embedding" if o == f"{OUTPUT}:0" else o for o in node.output]
    meta = proto.metadata_props.add()
    meta.key, meta.value = "hsi_embedder", "face"

    import onnx
    import onnxruntime as ort

    onnx.checker.check_model(proto)
    rng = np.random.default_rng(0)
    sample = rng.uniform(0, 255, (2, 224, 224, 3)).astype(np.float32)
    with tf.compat.v1.Graph().as_default() as g:
        tf.import_graph_def(graph, name="")
        with tf.compat.v1.Session(graph=g) as session:
            want = session.run(f"{OUTPUT}:0", {"input_1:0": sample})
    got = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"image": sample}
    )[0]
    diff = float(np.abs(got - want).max())
    if got.shape != (2, 1024) or diff > 1e-3 * max(1.0, float(np.abs(want).max())):
        raise SystemExit(f"ONNX differs from TensorFlow: shape {got.shape}, max |diff| {diff}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.onnx")
    onnx.save(proto, str(tmp))
    tmp.replace(out)
    print(f"face embedder: {out} (1024-d, max |onnx - tf| {diff:.2e})")


if __name__ == "__main__":
    main()
