"""Tamper false positives over a day of real frames with changing light, and the tampering it
still catches.

A day of one image a minute (1,440) per camera, built from real views: the frames of
carphone_pristine.mp4 (a man moving in a car) and of bigbuckbunny.mp4 (animals moving through a
fixed scene) cycled, and bus.jpg / zidane.jpg with sensor noise. The light follows a day: night
at ``--night`` of full light, a 45-minute dawn and dusk (geometric ramps), full light by day,
clouds that dim the scene to 50-80 % for a few minutes at random, and sensor noise that grows as
the light falls. Every image goes through the server's own tamper stage (``TamperStage.step``:
the features, the judgement and the hysteresis; the database is left out). A raised tamper state
on such a day is a false positive. Then, on the same camera at dusk, the camera is covered,
blinded, pointed elsewhere and put out of focus for 10 images each, from its state at noon (in
daylight) and at midnight (at night light): each should be caught, and clear once put right.

    .venv/bin/python -m bench.tamper_fp --days 1
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bench import scenes
from inference_server.comms.topics import Topics
from inference_server.config import Settings
from inference_server.pipeline.tamper import TamperStage, features
from inference_server.store import tamper as tamper_store

START = datetime(2026, 11, 24, tzinfo=UTC)


def light_at(minute: int, night: float) -> float:
    """Share of full light at ``minute`` of the day: night, dawn 06:30-07:15, day, dusk 16:30-17:15."""
    dawn, dusk, ramp = 6 * 60 + 30, 16 * 60 + 30, 45
    if dawn <= minute < dawn + ramp:
        return float(night ** (1 - (minute - dawn) / ramp))
    if dusk <= minute < dusk + ramp:
        return float(night ** ((minute - dusk) / ramp))
    return 1.0 if dawn + ramp <= minute < dusk else night


def day_frames(views: list[Image.Image], days: int, night: float, rng: np.random.Generator) -> Iterator[Image.Image]:
    cloud_until, cloud = -1, 1.0
    for minute in range(days * 24 * 60):
        if minute > cloud_until and rng.random() < 0.02:  # a cloud every ~50 minutes, 3-15 minutes long
            cloud_until, cloud = minute + int(rng.integers(3, 16)), float(rng.uniform(0.5, 0.8))
        light = light_at(minute % (24 * 60), night) * (cloud if minute <= cloud_until else 1.0)
        yield scenes.lit(views[minute % len(views)], light, rng, noise=2.0 + 6.0 * (1 - light))


def run_camera(stage: TamperStage, frames: Iterator[Image.Image]) -> tuple[dict[str, Any], dict[str, tamper_store.Row]]:
    """The day through the stage; the camera's state at noon and at the day's end."""
    row: tamper_store.Row | None = None
    kept: dict[str, tamper_store.Row] = {}
    raised: list[str] = []
    abnormal = 0
    judged = 0
    for i, frame in enumerate(frames):
        step = stage.step(row, features(frame), START + timedelta(minutes=i))
        row = tamper_store.Row(step.baseline, step.state, version=0)
        judged += step.verdict is not None
        abnormal += step.verdict is not None and step.verdict.kind is not None
        if step.change in ("raised", "rekind"):
            raised.append(f"{(START + timedelta(minutes=i)):%H:%M} {step.state.kind}")
        if i % (24 * 60) == 12 * 60:
            kept["noon"] = row
    kept["midnight"] = row
    return {"images": i + 1, "judged": judged, "abnormal_images": abnormal, "raised": raised}, kept


def caught(
    stage: TamperStage, row: tamper_store.Row, view: Image.Image, light: float, rng: np.random.Generator
) -> dict[str, Any]:
    """Each kind of tampering for 10 images at ``light``, from the camera's state ``row``."""
    noise = 2.0 + 6.0 * (1 - light)
    dim = scenes.lit(view, light, rng, noise=noise)
    attacks = {
        "covered": lambda: scenes.covered(view, rng),
        "blinded": lambda: scenes.blinded(view),
        "moved": lambda: scenes.lit(scenes.shifted(view), light, rng, noise=noise),
        "blurred": lambda: scenes.lit(scenes.blurred(view), light, rng, noise=noise),
    }
    out: dict[str, Any] = {}
    for kind, make in attacks.items():
        state = row
        raised_after = None
        for i in range(10):
            step = stage.step(state, features(make()), START)
            state = tamper_store.Row(step.baseline, step.state, version=0)
            if step.change == "raised" and raised_after is None:
                raised_after = (i + 1, step.state.kind)
        for _ in range(5):  # put right again: it must clear
            step = stage.step(state, features(dim), START)
            state = tamper_store.Row(step.baseline, step.state, version=0)
        out[kind] = {"raised_after_images": raised_after, "cleared": not state.state.tampered}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=1)
    parser.add_argument("--night", type=float, default=0.08, help="night light, share of day light")
    parser.add_argument("--seed", type=int, default=19)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    stage = TamperStage(Settings(), Topics())
    cameras = {
        "carphone (clip)": scenes.clip_frames("carphone_pristine.mp4"),
        "bigbuckbunny (clip)": scenes.clip_frames("bigbuckbunny.mp4"),
        "bus.jpg": [scenes.picture("bus.jpg")],
        "zidane.jpg": [scenes.picture("zidane.jpg")],
    }
    report: dict[str, Any] = {"days": args.days, "night_light": args.night, "cameras": {}}
    started = time.perf_counter()
    total_images = 0
    for name, views in cameras.items():
        day, rows = run_camera(stage, day_frames(views, args.days, args.night, rng))
        view = views[len(views) // 2]
        day["caught_at_noon"] = caught(stage, rows["noon"], view, 1.0, rng)
        day["caught_at_night"] = caught(stage, rows["midnight"], view, args.night, rng)
        total_images += day["images"]
        report["cameras"][name] = day
        print(name, json.dumps(day))
    elapsed = time.perf_counter() - started
    report["false_positives"] = sum(len(c["raised"]) for c in report["cameras"].values())
    report["ms_per_image"] = round(elapsed * 1000 / total_images, 2)
    print(json.dumps({k: v for k, v in report.items() if k != "cameras"}))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
