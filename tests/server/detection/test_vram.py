"""The VRAM budget: models take the GPU in priority order while they fit; the rest run on the
CPU, logged and listed in the status. There is no GPU here: ``FakeGpu`` stands in for NVML."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
import pytest

from inference_server import demo_assets
from inference_server.config import LlmSettings, Settings
from inference_server.detection.vram import VramBudget, detector_need_mb, llm_need_mb
from inference_server.schemas import GpuStatus, SystemStatus

from ..conftest import auth_headers, running


@dataclass
class FakeGpu:
    """A fake NVML reading (no GPU in CI): a card of ``total_mb`` with ``used_mb`` taken."""

    total_mb: float
    used_mb: float

    @property
    def available(self) -> bool:
        return True

    def read(self) -> GpuStatus:
        return GpuStatus(
            name="Fake GPU (test)",
            utilization_percent=0.0,
            memory_used_mb=self.used_mb,
            memory_total_mb=self.total_mb,
            temperature_c=40.0,
        )


def test_models_are_admitted_while_they_fit_the_budget() -> None:
    budget = VramBudget(FakeGpu(total_mb=80_000, used_mb=1_000), budget_mb=3_000)
    assert budget.admit("detector", 1_200) is None
    assert budget.admit("llm", 2_500) == "needs ~2500 MB, 1800 MB of the 3000 MB budget left"
    assert budget.admit("enrichment", 1_500) is None


def test_without_a_budget_the_free_memory_is_the_limit() -> None:
    gpu = FakeGpu(total_mb=8_000, used_mb=7_000)
    budget = VramBudget(gpu, budget_mb=None)
    assert budget.admit("detector", 1_500) == "needs ~1500 MB, the GPU has 1000 MB free"
    assert budget.admit("llm", 900) is None


def test_no_gpu_admits_nothing() -> None:
    assert VramBudget(None, budget_mb=4_000).admit("detector", 10) == "no GPU"


def test_a_model_loaded_on_the_gpu_is_measured_and_its_measure_replaces_the_estimate() -> None:
    gpu = FakeGpu(total_mb=24_000, used_mb=2_000)
    budget = VramBudget(gpu, budget_mb=4_000)
    assert budget.admit("detector", 3_000) is None
    before = budget.used_mb()
    gpu.used_mb += 700  # what the load really took
    budget.loaded("detector", "cuda:0", before_mb=before, estimate_mb=3_000)
    assert [(m.name, m.state, m.vram_mb, m.detail) for m in budget.models] == [("detector", "loaded", 700, "measured")]
    # The measured 700 MB, not the 3000 MB estimate, counts against the budget now.
    assert budget.admit("llm", 3_000) is None


def test_need_estimates_grow_with_what_they_load() -> None:
    weights = demo_assets.pose_weights()
    assert 500 < detector_need_mb(weights, 1, 640) < detector_need_mb(weights, 32, 640)
    gguf = demo_assets.smollm2_gguf()
    assert llm_need_mb(gguf, 512) < llm_need_mb(gguf, 8192)
    assert llm_need_mb(gguf, 512) > gguf.stat().st_size / 2**20


@pytest.mark.slow
async def test_refusals_run_the_models_on_the_cpu_and_show_in_the_status(
    make_settings: Callable[..., Settings],
) -> None:
    llm = LlmSettings(backend="llamacpp", model_path=demo_assets.smollm2_gguf(), n_gpu_layers=-1, n_ctx=2048)
    settings = make_settings(llm=llm, vram_budget_mb=300, detector_device="auto")
    gpu = FakeGpu(total_mb=16_000, used_mb=500)
    async with running(settings, gpu=gpu) as server:
        headers = await auth_headers(server)
        async with (
            aiohttp.ClientSession(headers=headers) as http,
            http.get(server.api_url + "/api/v1/system/status") as resp,
        ):
            assert resp.status == 200
            status = SystemStatus.model_validate(await resp.json())
    models = {m.name: m for m in status.models}
    # The detector (~584 MB estimated) does not fit 300 MB: it runs on the CPU, and so on.
    assert models["detector"].state == "cpu_fallback" and models["detector"].device == "cpu"
    assert status.detector is not None and " cpu " in status.detector
    assert models["llm"].state == "cpu_fallback" and models["llm"].device == "cpu"
    need = llm_need_mb(demo_assets.smollm2_gguf(), 2048)
    assert models["llm"].detail == f"needs ~{need:.0f} MB, 300 MB of the 300 MB budget left"
    assert status.gpu is not None and status.gpu.name == "Fake GPU (test)"
