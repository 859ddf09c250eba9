"""The VRAM budget: models take the GPU in priority order while they fit; the rest run on the
CPU, logged and listed in the status. There is no GPU here: ``FakeGpu`` stands in for NVML."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
import pytest

from inference_server import demo_assets
from inference_server.config import LlmSettings, Settings
from inference_server.detection.vram import VramBudget, detector_need_mb, embedder_need_mb, llm_need_mb
from inference_server.schemas import GpuStatus, ModelStatus, SystemStatus

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
    assert llm_need_mb(gguf, 512, "f16") < llm_need_mb(gguf, 8192, "f16")
    assert llm_need_mb(gguf, 512, "q8_0") > gguf.stat().st_size / 2**20
    # A q8_0 KV cache (the default) holds the context in a little over half of f16's memory.
    kv_f16 = llm_need_mb(gguf, 8192, "f16") - llm_need_mb(gguf, 0, "f16")
    kv_q8 = llm_need_mb(gguf, 8192, "q8_0") - llm_need_mb(gguf, 0, "q8_0")
    assert kv_q8 == pytest.approx(kv_f16 * 8.5 / 16, abs=0.2)


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
    need = llm_need_mb(demo_assets.smollm2_gguf(), 2048, llm.kv_cache_type)
    assert models["llm"].detail == f"needs ~{need:.0f} MB, 300 MB of the 300 MB budget left"
    assert status.gpu is not None and status.gpu.name == "Fake GPU (test)"


def test_embedder_needs_grow_with_the_crops_of_a_batch_and_exceed_the_weights() -> None:
    for source in ("face", "body"):
        model = demo_assets.embedder_model(source)
        assert model.stat().st_size / 2**20 < embedder_need_mb(model, 1) < embedder_need_mb(model, 8)


def test_a_model_admitted_that_runs_on_the_cpu_gives_its_share_back() -> None:
    budget = VramBudget(FakeGpu(total_mb=16_000, used_mb=500), budget_mb=400)
    assert budget.admit("face_embedder", 300) is None
    assert budget.admit("body_embedder", 300) is not None  # the face embedder holds 300 of 400
    budget.loaded("face_embedder", "cpu", before_mb=None, estimate_mb=None)
    assert budget.admit("body_embedder", 300) is None


@pytest.mark.slow
async def test_embedders_on_a_gpu_take_their_place_in_the_budget_after_the_detector(
    make_settings: Callable[..., Settings],
) -> None:
    """Recognition on ``embedding_device: cuda`` with a fake GPU (there is none here, and this
    onnxruntime has no CUDA provider): each embedder is admitted to the budget or refused, and
    one admitted whose runtime has no GPU is a labelled CPU fallback that holds no VRAM."""
    face, body = demo_assets.embedder_model("face"), demo_assets.embedder_model("body")
    face_need, body_need = embedder_need_mb(face, 4), embedder_need_mb(body, 4)

    async def models(budget_mb: float) -> dict[str, ModelStatus]:
        settings = make_settings(
            face_embedder_model=face,
            body_embedder_model=body,
            embedding_device="cuda",
            embedding_max_people=4,
            vram_budget_mb=budget_mb,
        )
        async with running(settings, gpu=FakeGpu(total_mb=16_000, used_mb=500)) as server:
            headers = await auth_headers(server, f"budget {budget_mb}")  # one database, a key per start
            async with (
                aiohttp.ClientSession(headers=headers) as http,
                http.get(server.api_url + "/api/v1/system/status") as resp,
            ):
                assert resp.status == 200
                status = SystemStatus.model_validate(await resp.json())
        return {m.name: m for m in status.models}

    # Room for one at a time only: both are admitted in turn, because the face embedder (loaded
    # first), on the CPU after all, gave its share back.
    both = await models(max(face_need, body_need) + 1)
    for name in ("face_embedder", "body_embedder"):
        assert (both[name].state, both[name].device) == ("cpu_fallback", "cpu"), both[name]
        assert "no CUDA provider" in (both[name].detail or "")
    # A budget too small for either: refused, with the need and what is left.
    small = min(face_need, body_need) - 1
    refused = await models(small)
    assert refused["face_embedder"].state == "cpu_fallback"
    assert (
        refused["face_embedder"].detail
        == f"needs ~{face_need:.0f} MB, {small:.0f} MB of the {small:.0f} MB budget left"
    )
    assert refused["body_embedder"].detail is not None and refused["body_embedder"].detail.startswith("needs ~")
