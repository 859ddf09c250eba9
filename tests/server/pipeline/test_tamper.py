"""Tampering: real views made dark, blurred, shifted, covered and blinded; dusk and people moving
through the scene are not tampering; the state survives a restart and reaches MQTT."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from fractions import Fraction

import aiohttp
import asyncpg
import numpy as np
import pytest
from PIL import Image

from bench import scenes
from bench.roundtrips import RoundTrips
from inference_server.comms.topics import Topics
from inference_server.config import Settings
from inference_server.detection.ultralytics_backend import UltralyticsDetector
from inference_server.pipeline import tamper
from inference_server.pipeline.tamper import TamperStage, features, judge, learn
from inference_server.schemas import CameraCreate, TamperState
from inference_server.store import cameras
from inference_server.store import tamper as tamper_store
from inference_server.store.db import create_pool
from inference_server.store.migrate import migrate
from tests.support.mqtt import Subscriber
from tests.support.waiting import wait_until

from ..conftest import auth_headers, running

T0 = datetime(2026, 11, 24, 15, 0, tzinfo=UTC)


def _baseline(frames: list[Image.Image]) -> tamper_store.Baseline:
    base = None
    for i, frame in enumerate(frames):
        base = learn(base, features(frame), 1 / (i + 1))
    assert base is not None
    return base


@pytest.mark.parametrize("name", ["bus.jpg", "zidane.jpg"])
def test_each_kind_of_tampering_is_told_from_dusk(name: str) -> None:
    rng = np.random.default_rng(1)
    view = scenes.picture(name)
    base = _baseline([scenes.lit(view, 1.0, rng) for _ in range(8)])
    kinds = {
        "blurred": judge(features(scenes.blurred(view)), base).kind,
        "shifted": judge(features(scenes.shifted(view)), base).kind,
        "covered": judge(features(scenes.covered(view, rng)), base).kind,
        "blinded": judge(features(scenes.blinded(view)), base).kind,
    }
    assert kinds == {"blurred": "blurred", "shifted": "moved", "covered": "covered", "blinded": "blinded"}
    # Dark as deep dusk, noisy as a sensor at low light: the same scene, no tampering.
    for light in (0.6, 0.3, 0.15, 0.08):
        assert judge(features(scenes.lit(view, light, rng, noise=6)), base).kind is None, light


@pytest.mark.parametrize("name", ["bus.jpg", "zidane.jpg"])
def test_a_noisy_dusk_does_not_make_the_morning_look_out_of_focus(name: str) -> None:
    """Sensor noise is fine detail too: a scene learned in noisy low light must not make the clean
    daylight picture look blurred (bench/tamper_fp.py found this: a 'blurred' every dawn)."""
    rng = np.random.default_rng(5)
    view = scenes.picture(name)
    base = _baseline([scenes.lit(view, 0.12, rng, noise=8) for _ in range(8)])
    for _ in range(3):
        morning = features(scenes.lit(view, 1.0, rng, noise=1))
        assert judge(morning, base).kind is None
        base = learn(base, morning, 0.1)  # as the stage does with a normal image
    assert judge(features(scenes.blurred(view)), base).kind == "blurred"  # real blur still is


def _convolved(grey: np.ndarray, kernel: list[list[int]]) -> np.ndarray:
    """``grey`` (float64) through a 3x3 ``kernel``, the valid part: the plain definition."""
    h, w = grey.shape
    return sum(kernel[i][j] * grey[i : h - 2 + i, j : w - 2 + j] for i in range(3) for j in range(3))


@pytest.mark.parametrize("light, noise", [(1.0, 1.0), (0.3, 6.0), (0.05, 8.0)])
def test_sharpness_and_noise_are_those_of_the_plain_kernels(light: float, noise: float) -> None:
    """``features`` computes the Laplacian and Immerkaer's noise kernel from second differences in
    16-bit integers (stop 35: about half the time of float32 kernels); its figures are those of the
    kernels applied as written, in float64, on real pictures from daylight to noisy night."""
    rng = np.random.default_rng(7)
    for name in ("bus.jpg", "zidane.jpg"):
        picture = scenes.lit(scenes.picture(name, width=810), light, rng, noise=noise)
        seen = features(picture)
        grey = np.asarray(picture.reduce(max(picture.size) // tamper._SHARP_SIDE).convert("L"), dtype=np.float64)
        laplacian = _convolved(grey, [[0, -1, 0], [-1, 4, -1], [0, -1, 0]])
        sigma = np.abs(_convolved(grey, [[1, -2, 1], [-2, 4, -2], [1, -2, 1]])).mean() * np.sqrt(np.pi / 2) / 6
        sharpness = max(laplacian.var() - 20 * sigma**2, 0.0) / max(grey.var() - sigma**2, 1.0)
        assert seen.sharpness == pytest.approx(sharpness, rel=1e-5, abs=1e-9)
        assert seen.snr == pytest.approx(seen.contrast / max(sigma * tamper.THUMB[0] / grey.shape[1], 1e-3), rel=1e-5)


def test_a_picture_too_dark_to_see_anything_is_not_judged() -> None:
    """A night without light (the picture is its sensor's noise) says nothing: not covered, not moved."""
    rng = np.random.default_rng(6)
    frames = scenes.clip_frames()
    base = _baseline(frames[:8])
    verdicts = [judge(features(scenes.lit(f, 0.03, rng, noise=8)), base) for f in frames[8:20]]
    assert {(v.kind, v.judgeable) for v in verdicts} == {(None, False)}
    # A covered lens is no such noise: it is judged, and covered.
    assert judge(features(scenes.covered(frames[0], rng)), base).kind == "covered"


def test_people_moving_through_a_real_clip_are_not_tampering() -> None:
    frames = scenes.clip_frames()
    base = _baseline(frames[:8])
    verdicts = [judge(features(f), base) for f in frames[8:]]
    assert [v.kind for v in verdicts if v.kind is not None] == []
    assert min(v.layout for v in verdicts) > 0.6


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(database_url, 2)
    await migrate(pool)
    await cameras.create(pool, CameraCreate(id="drive", name="Drive"))
    try:
        yield pool
    finally:
        await pool.close()


async def _feed(pool: asyncpg.Pool, stage: TamperStage, images: list[Image.Image], start: int = 0) -> list[TamperState]:
    """Each image through the stage as the result stage does (one transaction each): the states published."""
    published: list[TamperState] = []
    for i, image in enumerate(images, start):
        async with pool.acquire() as conn, conn.transaction():
            for topic, payload, retain in await stage.observe(
                conn, "drive", i + 1, T0 + timedelta(minutes=i), features(image)
            ):
                assert topic == "hsi/cameras/drive/tamper" and retain
                published.append(TamperState.model_validate_json(payload))
    return published


async def test_tampering_is_raised_with_hysteresis_kept_over_a_restart_and_cleared(
    pool: asyncpg.Pool, make_settings: Callable[..., Settings]
) -> None:
    rng = np.random.default_rng(2)
    view = scenes.picture("bus.jpg")
    normal = [scenes.lit(view, 1.0, rng) for _ in range(12)]
    settings = make_settings(tamper_learn_frames=8, tamper_trigger_frames=3, tamper_clear_frames=3)
    stage = TamperStage(settings, Topics())
    await pool.execute(
        "INSERT INTO images (camera_id, sha256, path, source, media_type, width, height,"
        " size_bytes, captured_at, captured_at_source) SELECT 'drive', int8send(g), 'x', 'upload',"
        " 'image/jpeg', 1, 1, 1, now(), 'client' FROM generate_series(1, 40) g"
    )

    learned = await _feed(pool, stage, normal[:8])
    assert learned == [TamperState(tampered=False, kind=None, since=None, learned_images=8)]
    # Two covered images (a hand passing the lens) are not enough.
    assert await _feed(pool, stage, [scenes.covered(view, rng)] * 2, start=8) == []
    assert await _feed(pool, stage, normal[8:9], start=10) == []

    # A restart: a new stage over the same database keeps the baseline and the counters.
    stage = TamperStage(settings, Topics())
    raised = await _feed(pool, stage, [scenes.covered(view, rng)] * 3, start=11)
    assert raised == [TamperState(tampered=True, kind="covered", since=T0 + timedelta(minutes=13), learned_images=9)]
    # Still covered: nothing new. Then the camera is pointed elsewhere: the kind changes.
    assert await _feed(pool, stage, [scenes.covered(view, rng)], start=14) == []
    moved = await _feed(pool, stage, [scenes.shifted(view)], start=15)
    assert [(s.tampered, s.kind) for s in moved] == [(True, "moved")]
    # Put right: cleared after three normal images, not before.
    assert await _feed(pool, stage, normal[9:11], start=16) == []
    cleared = await _feed(pool, stage, normal[11:12], start=18)
    assert cleared == [TamperState(tampered=False, kind=None, since=None, learned_images=12)]

    episodes = await tamper_store.episodes(pool, "drive")
    assert [(e["kind"], e["started_at"], e["ended_at"], e["image_id"]) for e in episodes] == [
        ("moved", T0 + timedelta(minutes=13), T0 + timedelta(minutes=18), 14)
    ]


async def test_a_normal_view_is_checked_once_a_second_a_suspicious_one_every_image(
    pool: asyncpg.Pool, make_settings: Callable[..., Settings]
) -> None:
    """Issue 20: at 5 images a second, a camera whose view looks normal is checked once a second of
    capture time (the features and two statements per image otherwise); while it is learned, and
    from its first tampered-looking check on, every image is."""
    rng = np.random.default_rng(5)
    view = scenes.picture("zidane.jpg")
    settings = make_settings(tamper_learn_frames=4, tamper_trigger_frames=3, tamper_check_interval_s=1.0)
    stage = TamperStage(settings, Topics())
    await pool.execute(
        "INSERT INTO images (camera_id, sha256, path, source, media_type, width, height,"
        " size_bytes, captured_at, captured_at_source) SELECT 'drive', int8send(g), 'x', 'upload',"
        " 'image/jpeg', 1, 1, 1, now(), 'client' FROM generate_series(1, 40) g"
    )
    frames = [scenes.lit(view, 1.0, rng) for _ in range(14)] + [scenes.covered(view, rng) for _ in range(8)]
    checked: list[int] = []
    raised_at: int | None = None
    for i, frame in enumerate(frames):
        at = T0 + timedelta(seconds=0.2 * i)
        if not stage.wants("drive", at):
            continue
        checked.append(i)
        async with pool.acquire() as conn, conn.transaction():
            published = await stage.observe(conn, "drive", i + 1, at, features(frame))
            if any(TamperState.model_validate_json(p).tampered for _, p, _ in published):
                raised_at = i
    # Learning: 0-3; then one a second (every fifth image); covered from 14: first seen at 18 (a
    # second after 13), then every image, so three in a row raise it at 20.
    assert checked == [0, 1, 2, 3, 8, 13, 18, 19, 20, 21], checked
    assert raised_at == 20


async def test_a_dusk_over_a_real_clip_never_raises_tampering(
    pool: asyncpg.Pool, make_settings: Callable[..., Settings]
) -> None:
    rng = np.random.default_rng(3)
    frames = scenes.clip_frames()
    stage = TamperStage(make_settings(), Topics())
    published = await _feed(pool, stage, list(scenes.dusk(frames, 60, rng)))
    assert [(s.tampered, s.learned_images) for s in published] == [(False, 8)]
    assert await tamper_store.episodes(pool, "drive") == []


async def _done(pool: asyncpg.Pool, job_id: int) -> bool:
    return bool(await pool.fetchval("SELECT state = 'done' FROM jobs WHERE id = $1", job_id))


def _jpeg(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90)
    return out.getvalue()


async def test_a_covered_camera_turns_its_tamper_state_on_over_mqtt(
    make_settings: Callable[..., Settings], pose_detector: UltralyticsDetector, mosquitto_url: str
) -> None:
    rng = np.random.default_rng(4)
    view = scenes.picture("zidane.jpg")
    settings = make_settings(mqtt_url=mosquitto_url, tamper_learn_frames=4, tamper_trigger_frames=2)
    subscriber = await Subscriber(mosquitto_url, "hsi/cameras/porch/tamper").ready()
    try:
        async with running(settings, pose_detector) as server:
            headers = await auth_headers(server)
            async with aiohttp.ClientSession(base_url=server.api_url, headers=headers) as http:
                async with http.post("/api/v1/cameras", json={"id": "porch", "name": "Porch"}) as resp:
                    assert resp.status == 201
                pictures = [scenes.lit(view, 1.0, rng) for _ in range(4)] + [scenes.covered(view, rng)] * 2
                for i, picture in enumerate(pictures):
                    # Distinct bytes each (noise), one after another, as a camera sends them.
                    data = _jpeg(picture) if i < 4 else _jpeg(scenes.covered(view, rng))
                    async with http.post(
                        "/api/v1/cameras/porch/images",
                        data=data,
                        params={"captured_at": (T0 + timedelta(minutes=i)).isoformat()},
                        headers={"Content-Type": "image/jpeg"},
                    ) as resp:
                        assert resp.status == 202
                        job = (await resp.json())["job_id"]
                    await wait_until(lambda j=job: _done(server.pool, j), 30, what=f"job {job} done")
                message = await subscriber.wait_for(lambda m: json.loads(m.payload)["tampered"], 30)
                state = TamperState.model_validate_json(message.payload)
                assert (state.kind, state.since, state.learned_images) == ("covered", T0 + timedelta(minutes=5), 4)
                late = await Subscriber(mosquitto_url, "hsi/cameras/porch/tamper").ready()
                try:
                    retained = await late.wait_for(lambda m: m.retain, 10)
                    assert TamperState.model_validate_json(retained.payload) == state
                finally:
                    late.close()
                async with http.get("/api/v1/cameras/porch/tamper") as resp:
                    assert TamperState.model_validate(await resp.json()) == state

                # Re-aimed on purpose: the learned scene is forgotten, the retained state cleared.
                async with http.delete("/api/v1/cameras/porch/tamper") as resp:
                    assert resp.status == 204
                async with http.get("/api/v1/cameras/porch/tamper") as resp:
                    assert resp.status == 404
                await subscriber.wait_for(lambda m: m.payload == b"", 10)
                episodes = await tamper_store.episodes(server.pool, "porch")
                assert [(e["kind"], e["ended_at"] is not None) for e in episodes] == [("covered", True)]
                async with http.get("/api/v1/cameras/nowhere/tamper") as resp:
                    assert resp.status == 404
    finally:
        subscriber.close()


async def _check(pool: asyncpg.Pool, stage: TamperStage, image: Image.Image, i: int) -> None:
    """One check in a transaction of its own, committed (and settled, as the result stage does)."""
    async with pool.acquire() as conn, conn.transaction():
        await stage.observe(conn, "drive", i + 1, T0 + timedelta(minutes=i), features(image))
    stage.settle("drive", committed=True)


async def _stored(pool: asyncpg.Pool) -> tamper_store.Row | None:
    async with pool.acquire() as conn:
        return await tamper_store.lock(conn, "drive")


async def _learned(pool: asyncpg.Pool) -> int | None:
    state = await tamper_store.state(pool, "drive")
    return None if state is None else state.learned_images


async def test_a_check_that_changes_nothing_is_one_statement_and_sees_what_others_wrote(
    pool: asyncpg.Pool, make_settings: Callable[..., Settings]
) -> None:
    """Issue 20: a check of a camera this process judged before is one statement (its row written
    back if nobody changed it since), not a locking read and a write. Another worker's checks, a
    ``forget`` and a check rolled back are seen all the same: nothing is counted twice or lost."""
    rng = np.random.default_rng(7)
    view = scenes.picture("bus.jpg")
    frames = [scenes.lit(view, 1.0, rng) for _ in range(12)]
    settings = make_settings(tamper_learn_frames=50)  # every check teaches: each is counted
    ours, theirs = TamperStage(settings, Topics()), TamperStage(settings, Topics())
    await _check(pool, ours, frames[0], 0)  # the first: nothing known, read under a lock, written
    with RoundTrips() as trips:
        await _check(pool, ours, frames[1], 1)
    # BEGIN, the write, COMMIT.
    assert trips.count == 3, trips.by_statement
    assert await _learned(pool) == 2

    await _check(pool, theirs, frames[2], 2)  # a second worker
    await _check(pool, ours, frames[3], 3)  # ours is out of date: read again, not overwritten
    assert await _learned(pool) == 4

    with pytest.raises(RuntimeError, match="rolled back"):
        async with pool.acquire() as conn, conn.transaction():
            await ours.observe(conn, "drive", 5, T0 + timedelta(minutes=4), features(frames[4]))
            raise RuntimeError("rolled back: a lost lease")
    await _check(pool, ours, frames[5], 5)
    assert await _learned(pool) == 5  # the rolled-back check did not count

    assert await tamper_store.forget(pool, "drive")
    await _check(pool, ours, frames[6], 6)
    assert await _learned(pool) == 1  # learning anew, not from what this process remembered


async def test_a_cameras_first_check_inserts_its_row_in_one_statement_and_a_restart_reads_it(
    pool: asyncpg.Pool, make_settings: Callable[..., Settings]
) -> None:
    """Stop 50: the first check of a camera with no row is one statement (it was a locking read
    that found nothing, then the insert); a process that has not read the row yet (a restart)
    finds it with that same statement and judges from it, and a second worker's first check
    that meets a row inserted meanwhile is counted on top of it, not lost."""
    rng = np.random.default_rng(5)
    view = scenes.picture("bus.jpg")
    frames = [scenes.lit(view, 1.0, rng) for _ in range(4)]
    settings = make_settings(tamper_learn_frames=50)  # every check teaches: each is counted
    with RoundTrips() as trips:
        await _check(pool, TamperStage(settings, Topics()), frames[0], 0)
    assert trips.count == 3, trips.by_statement  # BEGIN, the statement, COMMIT
    assert await _learned(pool) == 1

    with RoundTrips() as trips:
        await _check(pool, TamperStage(settings, Topics()), frames[1], 1)  # a restart
    assert trips.count == 4, trips.by_statement  # BEGIN, the statement that found it, the write, COMMIT
    assert await _learned(pool) == 2

    # Two workers' first checks at once: the second waits on the first's insert, then reads it.
    assert await tamper_store.forget(pool, "drive")
    first, second = TamperStage(settings, Topics()), TamperStage(settings, Topics())
    async with pool.acquire() as conn, conn.transaction():
        await first.observe(conn, "drive", 3, T0 + timedelta(minutes=2), features(frames[2]))
        waiting = asyncio.ensure_future(_check(pool, second, frames[3], 3))
        await asyncio.sleep(0.3)
        assert not waiting.done()  # held by the insert this transaction has not committed
    await waiting
    assert await _learned(pool) == 2


async def test_a_quiet_camera_is_written_back_once_a_minute_and_anything_abnormal_at_once(
    pool: asyncpg.Pool, make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stop 33: a learned camera whose checks change nothing but the baseline's running mean is
    written back at most every ``QUIET_SAVE_EVERY_S`` (it was a statement for every picture of a
    camera sending one a second); its baseline follows in memory meanwhile, a rolled-back check
    is forgotten, and an abnormal picture is written at once."""
    rng = np.random.default_rng(11)
    view = scenes.picture("bus.jpg")
    frames = [scenes.lit(view, 1.0, rng) for _ in range(8)]
    settings = make_settings(tamper_learn_frames=3, tamper_trigger_frames=3)
    ours = TamperStage(settings, Topics())
    for i in range(3):
        await _check(pool, ours, frames[i], i)  # learning: every check written
    stored = await _stored(pool)
    assert stored is not None and stored.baseline.learned == 3
    with RoundTrips() as trips:
        for i in range(3, 6):
            await _check(pool, ours, frames[i], i)
    assert not any("camera_tamper" in text for text in trips.by_statement), trips.by_statement
    in_memory = ours._rows["drive"]
    assert in_memory.version == stored.version  # the stored row is untouched...
    assert not np.array_equal(in_memory.baseline.layout, stored.baseline.layout)  # ...the mean moved

    with pytest.raises(RuntimeError, match="rolled back"):
        async with pool.acquire() as conn, conn.transaction():
            await ours.observe(conn, "drive", 7, T0 + timedelta(minutes=7), features(frames[6]))
            raise RuntimeError("rolled back: a lost lease")
    ours.settle("drive", committed=False)
    assert ours._rows["drive"] is in_memory

    monkeypatch.setattr(tamper, "QUIET_SAVE_EVERY_S", 0.0)  # a minute later
    await _check(pool, ours, frames[7], 7)
    written = await _stored(pool)
    assert written is not None and written.version != stored.version
    assert np.array_equal(written.baseline.layout, ours._rows["drive"].baseline.layout)

    monkeypatch.setattr(tamper, "QUIET_SAVE_EVERY_S", 3600.0)
    with RoundTrips() as trips:
        await _check(pool, ours, scenes.covered(view, rng), 8)
    assert any(text.startswith("UPDATE camera_tamper") for text in trips.by_statement), trips.by_statement
    row = await _stored(pool)
    assert row is not None and row.state.abnormal_run == 1


def test_the_variance_of_whole_numbers_is_exact_at_the_kernels_extremes() -> None:
    # A Laplacian of grey levels lies within ±2,040; over 960×540 values the sum of squares
    # (2.2e12) is far past 32 bits and past float32's exact integers.
    rng = np.random.default_rng(3)
    for values in (
        rng.integers(-2040, 2041, size=(540, 960)).astype(np.int16),
        np.full((540, 960), 2040, dtype=np.int16),
        np.array([[-2040, 2040]], dtype=np.int16),
        rng.integers(0, 256, size=(540, 405)).astype(np.int16),
    ):
        flat = [int(v) for v in values.ravel()]
        n = len(flat)
        exact = Fraction(n * sum(v * v for v in flat) - sum(flat) ** 2, n * n)
        assert tamper.variance(values) == float(exact)
