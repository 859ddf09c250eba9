"""telemetry/gpu.py: NVML's numbers for the GPU there is, and None without one (never invented)."""

from __future__ import annotations

from inference_server.telemetry.gpu import GpuProbe


def test_the_probe_reads_the_gpu_it_found_and_nothing_without_one() -> None:
    probe = GpuProbe()
    status = probe.read()

    if not probe.available:  # no NVIDIA GPU or driver here (the CI machines): nothing is made up
        assert status is None
        return
    assert status is not None and status.name
    assert status.memory_total_mb > 0 and 0 <= status.memory_used_mb <= status.memory_total_mb
    assert 0 <= status.utilization_percent <= 100
