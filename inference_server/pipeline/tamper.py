"""Tamper stage: tells a camera that was covered, blinded, pointed elsewhere or put out of focus
from one whose light changed (dusk, clouds, lamps) or whose scene has people moving through it.

Each image of a camera is reduced to a few numbers (``SceneFeatures``): its brightness and
contrast, its layout (a 64x48 grey thumbnail normalised to zero mean and unit variance, so light
that dims or brightens the whole scene leaves it unchanged), its sharpness (the variance of a
Laplacian over the picture's own variance, equally blind to the light level) and how much of it
is blown out. The camera's baseline is the running mean of these over its normal images; it
learns from the first ``tamper_learn_frames`` and then follows slow changes (each normal image
moves it by ``_FOLLOW``). Sharpness is learned and judged only in good light (contrast of at
least ``_LIT`` grey levels): in the dark, sensor noise is most of a picture's fine detail, and a
night's noise would make the next morning look out of focus (``bench/tamper_fp.py`` found it).
An image is judged against the baseline:

- ``blinded``: at least ``_SATURATED`` of the picture blown out, clearly brighter than usual;
- ``covered``: flat (contrast under ``_FLAT`` of the usual) *and* featureless (layout under
  ``_COVER_LAYOUT``, or sharpness gone), or layout gone with hardly any contrast at all
  (``_DARK``) — a dark dusk picture is flat but keeps its layout and edges;
- ``moved``: the layout no longer matches (correlation under ``_LAYOUT``): pointed elsewhere;
- ``blurred``: the layout matches but the sharpness fell under ``_BLUR`` of the usual (good light).

Hysteresis: the tamper state is raised after ``tamper_trigger_frames`` abnormal images in a row
and cleared after ``tamper_clear_frames`` normal ones; abnormal images never teach the baseline.
The baseline, the counters and the state live in ``camera_tamper`` (PostgreSQL) and change in the
transaction that completes the image's job, so a restart keeps them and no image counts twice.
A quiet check (a learned camera, untampered, nothing abnormal pending) only moves the baseline's
running mean: that is written back at most every ``QUIET_SAVE_EVERY_S`` (kept in memory once the
check's transaction commits, in between), so a restart loses at most that much of the following.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Literal

import asyncpg
import numpy as np
import numpy.typing as npt
from PIL import Image

from inference_server.comms.messages import Message
from inference_server.comms.topics import Topics
from inference_server.config import Settings
from inference_server.schemas import TamperKind, TamperState
from inference_server.store import tamper as tamper_store
from inference_server.telemetry import metrics

log = logging.getLogger(__name__)

THUMB = (64, 48)
#: The longer side the tamper check measures a picture at (about: reduced by a whole factor).
_SHARP_SIDE = 320
#: Layout correlation under which the camera no longer sees its scene.
_LAYOUT = 0.5
#: Contrast, as a share of the usual, under which a picture is flat.
_FLAT = 0.35
#: Sharpness, as a share of the usual, under which the picture is out of focus (or featureless).
_BLUR = 0.35
#: Share of blown-out pixels (grey > 245) of a blinded camera.
_SATURATED = 0.4
#: How far each normal image moves the learned baseline (after the learning images).
_FOLLOW = 0.1
#: Contrast (grey levels, thumbnail) from which sharpness is measured above the sensor's noise.
_LIT = 15.0
#: Contrast under which a picture without its layout is covered, whatever the usual contrast.
_DARK = 8.0
#: Layout correlation under which a flat picture is covered: a dark one keeps its layout (over
#: 0.9 at night light), a cloth's soft glow may echo the scene's gross light a little.
_COVER_LAYOUT = 0.75
#: Contrast over noise (thumbnail) under which a picture is too dark to judge at all.
_MIN_SNR = 2.0
#: Cameras whose tamper row this process keeps (a thumbnail of a few kB each).
_ROWS_KEPT = 4096
#: A quiet camera's row (learned, not tampered, nothing abnormal) is written back at most this
#: often: in between, its baseline follows the light in memory. A camera sending a picture a
#: second was a statement a picture for a running mean; a restart loses at most this much of it.
QUIET_SAVE_EVERY_S = 60.0


@dataclass(frozen=True, slots=True)
class SceneFeatures:
    brightness: float
    contrast: float
    sharpness: float
    saturated: float
    #: Zero-mean, unit-variance grey thumbnail (``THUMB``), float32.
    layout: np.ndarray
    #: The thumbnail's contrast over its noise: under ``_MIN_SNR`` the picture is too dark to judge.
    snr: float = float("inf")


def variance(values: npt.NDArray[np.int16]) -> float:
    """The variance of whole numbers, exact: their sum and their sum of squares accumulated in
    64-bit integers (NumPy's buffered passes: no copy of the array; a float32 copy and ``var``'s
    deviations were 1.7 MB of temporaries a check, over the server's mmap threshold, at four
    times the CPU), then one division."""
    flat = values.ravel()
    n = flat.size
    total = int(flat.sum(dtype=np.int64))
    squares = int(np.einsum("i,i->", flat, flat, dtype=np.int64))
    return (n * squares - total * total) / (n * n)


def features(image: Image.Image) -> SceneFeatures:
    """The numbers the tamper check compares (a few milliseconds; run it off the event loop)."""
    # The picture is first reduced by a whole factor, its longer side to about ``_SHARP_SIDE``
    # (the mean of each k x k block, never upscaled: interpolation is no detail), then made grey:
    # 3-4 times cheaper than greying and resizing the whole picture (bench/camera_second.py), and
    # the same mean. The longer side, not the width: a portrait camera (a doorbell, 810x1080 after
    # the model's decode) was measured at 405x540, 3.8 times a landscape camera's pixels (stop 40).
    factor = max(1, max(image.size) // _SHARP_SIDE)
    small = (image.reduce(factor) if factor > 1 else image).convert("L")
    if small.height < 3:
        small = small.resize((small.width, 3), Image.Resampling.BOX)
    thumb = np.asarray(small.resize(THUMB, Image.Resampling.BOX), dtype=np.float32)
    brightness, contrast = float(thumb.mean()), float(thumb.std())
    layout = (thumb - brightness) / max(contrast, 1e-3)
    # The kernels' sums in 16-bit integers (exact: a second difference of grey levels stays within
    # ±2,040), their variances exact in 64-bit integers (``variance``, stop 38): about half the
    # time of the kernels written out in float32 (stop 35; float64 temporaries would be over the
    # server's mmap threshold and fault in every time). Both kernels are built from second
    # differences: the Laplacian (4 at the centre, -1 at the four sides) is minus the horizontal
    # and the vertical one, Immerkaer's (1 -2 1 / -2 4 -2 / 1 -2 1) the vertical second difference
    # of the horizontal one.
    a = np.asarray(small, dtype=np.int16)
    across = a[:, :-2] + a[:, 2:]
    across -= 2 * a[:, 1:-1]
    laplacian = a[:-2, 1:-1] + a[2:, 1:-1]
    laplacian -= 2 * a[1:-1, 1:-1]
    laplacian += across[1:-1]  # the Laplacian's negative: the same variance
    # Sensor noise adds to the Laplacian too (20 sigma^2 for its kernel): estimated with
    # Immerkaer's kernel, which cancels the picture's structure, and taken away.
    mask = across[:-2] + across[2:]
    mask -= 2 * across[1:-1]
    noise = float(np.abs(mask, out=mask).mean(dtype=np.float64)) * math.sqrt(math.pi / 2) / 6
    detail = max(variance(laplacian) - 20 * noise**2, 0.0)
    sharpness = detail / max(variance(a) - noise**2, 1.0)
    # Each thumbnail pixel averages (width / 64)^2 pixels of ``small``: its noise is that much smaller.
    thumb_noise = noise * THUMB[0] / small.width
    snr = contrast / max(thumb_noise, 1e-3)
    return SceneFeatures(brightness, contrast, sharpness, float((thumb > 245).mean()), layout.astype(np.float32), snr)


@dataclass(frozen=True, slots=True)
class Verdict:
    kind: TamperKind | None
    layout: float
    sharpness: float
    contrast: float
    #: False: too dark (noise over structure) to tell anything; the image neither counts nor teaches.
    judgeable: bool = True


def judge(seen: SceneFeatures, base: tamper_store.Baseline) -> Verdict:
    """``seen`` against the camera's learned ``base``: a tamper kind, or None (normal)."""
    layout = float((seen.layout * base.layout).mean())
    if seen.snr < _MIN_SNR and seen.saturated < _SATURATED:
        # A night without light: the picture is its sensor's noise, covered or not.
        return Verdict(None, round(layout, 3), 1.0, round(seen.contrast / max(base.contrast, 1e-6), 3), False)
    # Sharpness against the sharpness learned in good light, in good light only (1: not judged).
    judged = seen.contrast >= _LIT and base.sharpness > 0
    sharp = seen.sharpness / base.sharpness if judged else 1.0
    contrast = seen.contrast / max(base.contrast, 1e-6)
    kind: TamperKind | None = None
    if seen.saturated >= _SATURATED and seen.brightness > base.brightness + 40:
        kind = "blinded"
    elif (layout < _LAYOUT and seen.contrast < _DARK) or (
        contrast < _FLAT and (layout < _COVER_LAYOUT or (judged and sharp < _BLUR))
    ):
        kind = "covered"
    elif layout < _LAYOUT:
        kind = "moved"
    elif sharp < _BLUR:
        kind = "blurred"
    return Verdict(kind, round(layout, 3), round(sharp, 3), round(contrast, 3))


def learn(base: tamper_store.Baseline | None, seen: SceneFeatures, weight: float) -> tamper_store.Baseline:
    """``base`` moved ``weight`` of the way to ``seen`` (the first image: ``seen`` itself)."""
    lit = seen.contrast >= _LIT
    if base is None:
        return tamper_store.Baseline(seen.layout, seen.sharpness if lit else 0.0, seen.contrast, seen.brightness, 1)
    mixed = (1 - weight) * base.layout + weight * seen.layout
    mixed = (mixed - mixed.mean()) / max(float(mixed.std()), 1e-6)
    if not lit:
        sharpness = base.sharpness  # learned in good light only (0: not yet)
    elif base.sharpness <= 0:
        sharpness = seen.sharpness
    else:
        sharpness = (1 - weight) * base.sharpness + weight * seen.sharpness
    return tamper_store.Baseline(
        mixed.astype(np.float32),
        sharpness,
        (1 - weight) * base.contrast + weight * seen.contrast,
        (1 - weight) * base.brightness + weight * seen.brightness,
        base.learned + 1,
    )


Change = Literal["learned", "raised", "rekind", "cleared"]


@dataclass(frozen=True, slots=True)
class Step:
    """One image's effect on a camera: its new baseline and counters, and what changed."""

    baseline: tamper_store.Baseline
    state: tamper_store.Counters
    change: Change | None
    verdict: Verdict | None


@dataclass(frozen=True, slots=True)
class Deferral:
    """A check ``observe`` would take without a statement, judged (``TamperStage.deferrable``):
    the camera's row it was judged on, and the step."""

    camera_id: str
    known: tamper_store.Row
    done: Step


class TamperStage:
    def __init__(self, settings: Settings, topics: Topics) -> None:
        self.learn_frames = settings.tamper_learn_frames
        self.trigger = settings.tamper_trigger_frames
        self.clear = settings.tamper_clear_frames
        self.topics = topics
        self.interval = timedelta(seconds=settings.tamper_check_interval_s)
        #: Per camera: the capture time of the last image chosen for a check (this process).
        self._checked: dict[str, datetime] = {}
        #: Per camera: still learning, or its last check looked tampered (every image is checked).
        self._watchful: dict[str, bool] = {}
        #: Per camera: its row as this process last read or wrote it (``observe``), or as a quiet
        #: check left it unwritten (the version is then the stored row's).
        self._rows: dict[str, tamper_store.Row] = {}
        #: Per camera: a quiet check's row not written, kept once its transaction commits (``settle``).
        self._unsaved: dict[str, tamper_store.Row] = {}
        #: Per camera: when this process last wrote its row (monotonic seconds).
        self._saved_at: dict[str, float] = {}

    def wants(self, camera_id: str, captured_at: datetime) -> bool:
        """Whether this image is checked: every image while the camera's scene is being learned
        or its last check looked tampered; otherwise one image per ``tamper_check_interval_s`` of
        capture time (a covered lens stays covered: checking 20 frames a second adds nothing)."""
        last = self._checked.get(camera_id)
        if self._watchful.get(camera_id, True) or last is None or abs(captured_at - last) >= self.interval:
            self._checked[camera_id] = captured_at
            return True
        metrics.TAMPER_CHECKS_SKIPPED.inc()
        return False

    def step(self, row: tamper_store.Row | None, seen: SceneFeatures, captured_at: datetime) -> Step:
        """The hysteresis, without side effects: what one image does to the camera's ``row``."""
        if row is not None and row.baseline.learned < self.learn_frames and seen.snr < _MIN_SNR:
            return Step(row.baseline, row.state, None, None)  # too dark to learn the scene from
        if row is None or row.baseline.learned < self.learn_frames:
            learned = row.baseline.learned if row else 0
            base = learn(row.baseline if row else None, seen, 1 / (learned + 1))
            state = row.state if row else tamper_store.Counters()
            return Step(base, state, "learned" if base.learned == self.learn_frames else None, None)
        verdict = judge(seen, row.baseline)
        state, base = row.state, row.baseline
        if not verdict.judgeable:
            return Step(base, state, None, verdict)
        if verdict.kind is None:
            base = learn(base, seen, _FOLLOW)
            state = replace(state, abnormal_run=0, normal_run=state.normal_run + 1, pending_kind=None)
            if state.tampered and state.normal_run >= self.clear:
                return Step(base, tamper_store.Counters(normal_run=state.normal_run), "cleared", verdict)
            return Step(base, state, None, verdict)
        state = replace(state, abnormal_run=state.abnormal_run + 1, normal_run=0, pending_kind=verdict.kind)
        if not state.tampered and state.abnormal_run >= self.trigger:
            return Step(base, replace(state, tampered=True, kind=verdict.kind, since=captured_at), "raised", verdict)
        if state.tampered and verdict.kind != state.kind:
            return Step(base, replace(state, kind=verdict.kind), "rekind", verdict)
        return Step(base, state, None, verdict)

    async def observe(
        self, conn: asyncpg.Connection, camera_id: str, image_id: int, captured_at: datetime, seen: SceneFeatures
    ) -> list[Message]:
        """Judge one image in the caller's transaction; the messages announce a changed state.

        The camera's row as this process last wrote it is judged first and written back in one
        statement if nobody changed it since (``save_if_current``) and nothing is announced (most
        checks); otherwise it is read again under a lock and judged from that. A row this process
        has not read is looked for by a statement that inserts it if there is none (``lock_or_add``)."""
        known = self._unsaved.pop(camera_id, None) or self._rows.get(camera_id)
        if known is not None:
            done = self.step(known, seen, captured_at)
            if done.change is None:
                if self._can_wait(camera_id, known, done):
                    self._defer(camera_id, known, done)
                    return []
                version = await tamper_store.save_if_current(conn, camera_id, done.baseline, done.state, known.version)
                if version is not None:
                    return self._written(camera_id, done, done.state, version)
                log.debug("tamper row changed elsewhere, read again camera_id=%s", camera_id)
            old = await tamper_store.lock(conn, camera_id)
        else:
            # Not read by this process yet: a new camera's first check inserts its row in the
            # statement that looks for it (one statement where the read and the save were two).
            first = self.step(None, seen, captured_at)
            old, added = await tamper_store.lock_or_add(conn, camera_id, first.baseline, first.state)
            if added is not None:
                return self._written(camera_id, first, first.state, added)
            if old is None:  # inserted by another transaction meanwhile
                old = await tamper_store.lock(conn, camera_id)
        done = self.step(old, seen, captured_at)
        state = done.state
        if done.change == "raised" and (v := done.verdict) is not None and (kind := v.kind) is not None:
            detail = {"layout": v.layout, "sharpness": v.sharpness, "contrast": v.contrast}
            episode = await tamper_store.start_episode(conn, camera_id, kind, captured_at, image_id, detail)
            state = replace(state, episode_id=episode)
            log.warning(
                "camera tampered camera_id=%s kind=%s image_id=%s layout=%.2f sharpness=%.2f contrast=%.2f",
                camera_id,
                kind,
                image_id,
                v.layout,
                v.sharpness,
                v.contrast,
            )
        elif done.change == "rekind" and state.kind is not None:
            await tamper_store.rekind_episode(conn, state.episode_id, state.kind)
            log.warning("camera tampered camera_id=%s kind=%s image_id=%s", camera_id, state.kind, image_id)
        elif done.change == "cleared" and old is not None:
            await tamper_store.end_episode(conn, old.state.episode_id, captured_at)
            log.info("tamper cleared camera_id=%s kind=%s image_id=%s", camera_id, old.state.kind, image_id)
        version = await tamper_store.save(conn, camera_id, done.baseline, state)
        return self._written(camera_id, done, state, version)

    def _written(self, camera_id: str, done: Step, state: tamper_store.Counters, version: int) -> list[Message]:
        """After ``observe`` wrote the camera's row (``state``: ``done``'s, with its episode): kept
        as this process's, and the message announcing a change."""
        if done.change == "learned":
            log.info("tamper baseline learned camera_id=%s images=%d", camera_id, done.baseline.learned)
        self._keep(camera_id, tamper_store.Row(done.baseline, state, version))
        self._saved_at[camera_id] = time.monotonic()
        return [] if done.change is None else [self._message(camera_id, state, done.baseline.learned)]

    def deferrable(self, camera_id: str, seen: SceneFeatures, captured_at: datetime) -> Deferral | None:
        """The check, judged, when ``observe`` of it would neither write nor announce anything now
        (a quiet check whose save can wait, most checks of a quiet camera): then ``defer`` takes
        it without a statement. None: it needs ``observe``. Changes nothing."""
        known = self._unsaved.get(camera_id) or self._rows.get(camera_id)
        if known is None:
            return None
        done = self.step(known, seen, captured_at)
        if done.change is None and self._can_wait(camera_id, known, done):
            return Deferral(camera_id, known, done)
        return None

    def defer(self, deferral: Deferral) -> bool:
        """``observe`` of a ``deferrable`` check, outside a transaction: kept as ``observe`` keeps
        it, until ``settle``; only while the camera's row is still the one it was judged on and
        its save can still wait. False (nothing done): ``observe`` it."""
        camera_id, known, done = deferral.camera_id, deferral.known, deferral.done
        if (self._unsaved.get(camera_id) or self._rows.get(camera_id)) is not known:
            return False
        if not self._can_wait(camera_id, known, done):
            return False
        self._defer(camera_id, known, done)
        return True

    def _can_wait(self, camera_id: str, known: tamper_store.Row, done: Step) -> bool:
        """A quiet check, whose row was written less than ``QUIET_SAVE_EVERY_S`` ago."""
        recently = time.monotonic() - self._saved_at.get(camera_id, -math.inf) < QUIET_SAVE_EVERY_S
        return recently and self._quiet(known.state, done)

    def _defer(self, camera_id: str, known: tamper_store.Row, done: Step) -> None:
        self._unsaved[camera_id] = tamper_store.Row(done.baseline, done.state, known.version)
        metrics.TAMPER_SAVES_DEFERRED.inc()

    def _quiet(self, before: tamper_store.Counters, done: Step) -> bool:
        """A check that leaves a learned camera as it was, untampered with nothing abnormal
        pending: only its baseline's running mean moved."""
        state = done.state
        return (
            done.baseline.learned >= self.learn_frames
            and not state.tampered
            and not before.tampered
            and state.abnormal_run == 0
            and before.abnormal_run == 0
            and state.pending_kind is None
        )

    def settle(self, camera_id: str, *, committed: bool) -> None:
        """After the transaction ``observe`` ran in: a quiet check's unwritten row is kept if it
        committed, forgotten if it rolled back (the image is checked again: nothing counts twice)."""
        row = self._unsaved.pop(camera_id, None)
        if row is not None and committed:
            self._keep(camera_id, row)

    def _keep(self, camera_id: str, row: tamper_store.Row) -> None:
        if camera_id not in self._rows and len(self._rows) >= _ROWS_KEPT:
            self._rows.clear()  # cameras by the thousand only from a hostile uploader: read again
        self._rows[camera_id] = row
        self._watchful[camera_id] = (
            row.baseline.learned < self.learn_frames or row.state.tampered or row.state.abnormal_run > 0
        )

    def _message(self, camera_id: str, state: tamper_store.Counters, learned: int) -> Message:
        payload = TamperState(tampered=state.tampered, kind=state.kind, since=state.since, learned_images=learned)
        return (self.topics.camera_tamper(camera_id), payload.model_dump_json().encode(), True)
