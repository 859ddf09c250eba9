"""Phase two with vision, the server's share: key frames chosen and encoded, bytes sent, and the
reasoner's round trip against the FAKE vision server (tests/support/fake_vlm.py), which answers
at once, so the figure is the server's overhead alone (no model)::

    YOLO_OFFLINE=1 .venv/bin/python -m bench.vision --events 50 [--max-images 3] [--max-px 768]

Per event: the real photos bus.jpg (810x1080), zidane.jpg (1280x720) and astronaut.png
(512x512) are the batch; ``pipeline.frames`` chooses and encodes at most ``max_images`` of them
on the CPU (a worker thread in the server); ``LlmReasoner.refine`` builds the security-v2
prompt with the frames as data URLs, posts it over HTTP to the fake, validates and checks the
reply and settles the score. The real model's time comes on top and is the model's.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path

from inference_server import demo_assets
from inference_server.domain import Detection, Observation
from inference_server.pipeline import frames as key_frames
from inference_server.reasoning.backends.openai import OpenAiBackend
from inference_server.reasoning.llm import LlmReasoner
from inference_server.reasoning.reasoner import LevelThresholds
from inference_server.reasoning.rules import RulesReasoner
from inference_server.store.batches import BatchDetection
from tests.support.fake_vlm import FakeVlm, assessments, image_parts

PHOTOS = ("bus.jpg", "zidane.jpg", "astronaut.png")
WHEN = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


def _rows() -> list[BatchDetection]:
    # One person per photo, the confidences the real yolo11n-pose gives them (bus 0.87, zidane 0.8, astronaut 0.9).
    return [
        BatchDetection(i + 1, "person", conf, (0.2, 0.1, 0.6, 0.95), (), WHEN)
        for i, conf in enumerate((0.87, 0.80, 0.90))
    ]


def _p(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, round(q * (len(values) - 1)))]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=50)
    parser.add_argument("--max-images", type=int, default=3)
    parser.add_argument("--max-px", type=int, default=768)
    args = parser.parse_args()
    paths = {i + 1: str(demo_assets.image(name)) for i, name in enumerate(PHOTOS)}
    rows = _rows()
    observation = Observation(
        "porch", "Porch", WHEN, [Detection("person", r.confidence, r.bbox) for r in rows], first_seen=WHEN
    )
    rules = RulesReasoner(LevelThresholds()).assess_now(observation)
    fake = await FakeVlm().start()
    reasoner = LlmReasoner(OpenAiBackend(fake.base_url, "fake-vlm"), LevelThresholds(), vision=True)
    encode_s: list[float] = []
    encode_cpu_s: list[float] = []
    refine_s: list[float] = []
    total_s: list[float] = []
    sent_bytes: list[int] = []
    chosen: list[int] = []
    try:
        await reasoner.refine(observation, rules, images={1: b"warm-up"})  # opens the HTTP session
        for _ in range(args.events):
            started = time.perf_counter()
            chosen = key_frames.choose(rows, args.max_images)
            frames = await key_frames.load(chosen, paths, args.max_px)
            encoded = time.perf_counter()
            result = await reasoner.refine(observation, rules, images={f.image_id: f.jpeg for f in frames})
            done = time.perf_counter()
            assert result.analysis_source == "llm", result.reasoning
            encode_s.append(encoded - started)
            encode_cpu_s.append(sum(f.encode_cpu_s for f in frames))
            refine_s.append(done - encoded)
            total_s.append(done - started)
        body = assessments(fake)[-1]
        sent_bytes = [len(url) for url in image_parts(body)]
        sizes = [f"{f.width}x{f.height}" for f in frames]
    finally:
        await reasoner.close()
        await fake.close()
    jpeg = [len(f.jpeg) for f in frames]
    print(f"events: {args.events}; max_images {args.max_images}, image_max_px {args.max_px}")
    print(f"frames chosen per event: {len(chosen)} (image ids {chosen}, sizes {', '.join(sizes)})")
    print(f"JPEG bytes per event: {sum(jpeg)} ({', '.join(map(str, jpeg))}); as base64 data URLs: {sum(sent_bytes)}")
    for name, values in (
        ("encode, wall (worker thread)", encode_s),
        ("encode, CPU time of the thread", encode_cpu_s),
        ("refine vs fake (HTTP+checks)", refine_s),
    ):
        print(f"{name}: median {statistics.median(values) * 1000:.1f} ms, p95 {_p(values, 0.95) * 1000:.1f} ms")
    print(
        f"phase-two server overhead per event: median {statistics.median(total_s) * 1000:.1f} ms,"
        f" p95 {_p(total_s, 0.95) * 1000:.1f} ms (goal <= 50 ms)"
    )
    print(f"load average while measured: {' '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")
    print(f"source photos: {', '.join(f'{Path(p).name}' for p in paths.values())}")


if __name__ == "__main__":
    asyncio.run(main())
