"""Detect worker: claims jobs in batches, decodes, runs one batched inference, hands on.

Three coroutines joined by small bounded queues overlap the stages: while the model
runs on batch k (in its own thread), batch k+1 is claimed and decoded and batch k-1
is stored. The bounds keep at most a few batches leased at once.

Dynamic batching: a claim that finds fewer jobs than ``detector_batch_size`` waits at most
``detector_batch_wait_ms`` for more (woken by the queue's NOTIFY), so a GPU sees full batches
under load while a lone image waits only milliseconds.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from inference_server import buffers, decode_budget
from inference_server.buffers import Lent
from inference_server.config import Settings
from inference_server.detection.detector import Detector
from inference_server.domain import Detection
from inference_server.event_loop import until_next
from inference_server.jobs.queue import ClaimedJob, JobQueue
from inference_server.pipeline.decode import DecodeError, Picture, decode_picture, rgbx_shape
from inference_server.pipeline.result import ResultStage
from inference_server.pipeline.tamper import SceneFeatures, features
from inference_server.store import quarantine
from inference_server.store.db import is_unavailable
from inference_server.telemetry import metrics

log = logging.getLogger(__name__)

_STOP = None


@dataclass(slots=True)
class _Item:
    job: ClaimedJob
    #: The decoded picture (snapshots are drawn on it); released when the item is done with.
    image: Picture
    detections: list[Detection]
    #: What the detector runs on (``Detector.prepare``, made on a decode thread); unset, it is made
    #: on the inference thread right before the model runs (``DetectWorker._infer``).
    model_input: Any = None
    #: Whether the picture gets a tamper check (``ResultStage.scene_wanted``, asked when the job
    #: is taken), and its scene's features, measured where its model input is made.
    scene_wanted: bool = False
    scene: SceneFeatures | None = None


class DetectWorker:
    def __init__(self, settings: Settings, queue: JobQueue, detector: Detector, result: ResultStage) -> None:
        self.settings = settings
        self.queue = queue
        self.detector = detector
        self.result = result
        self.batch_size = settings.detector_batch_size
        self._db_backoff_s = 0.0
        # One thread owns the model: frameworks are not re-entrant and a GPU runs one batch at a time.
        self._infer_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="infer")
        self.batch_wait_s = settings.detector_batch_wait_ms / 1000
        # Decoding runs in Pillow's C code without the GIL: one thread per core keeps a GPU fed.
        threads = settings.detector_decode_threads or min(8, os.cpu_count() or 2)
        self._decode_pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="decode")
        #: The decoded pictures' arrays, reused (JPEG decoded straight into them): pipeline/decode.py.
        self._pictures = buffers.ArrayPool(settings.decode_picture_cache_mb * decode_budget.MIB, np.uint8)
        self._store_slots = asyncio.Semaphore(settings.store_concurrency)
        #: Jobs claimed and not yet completed, failed or released (``run`` gives back those it
        #: holds when it ends); ``_started``: those among them in the decoder or the model, or past
        #: the model (what was tried), not those decoded and waiting for it.
        self._held: dict[int, ClaimedJob] = {}
        self._started: set[int] = set()
        #: Jobs the queue inserted claimed for this worker (``take_job``), not yet in a batch.
        self._handed: list[ClaimedJob] = []
        #: The pictures the ingest door decoded for handed jobs (``picture_buffer``), by job id;
        #: ``_door_ahead``: those and the ones being decoded at the door, at most a batch (so a
        #: crowd of uploads at an idle worker holds a batch's pictures decoded ahead, not one each).
        self._door_pictures: dict[int, Picture] = {}
        self._door_ahead = 0
        self._door_lock = threading.Lock()
        #: The claim loop waits for work with nothing in hand: a known camera's next image is for it.
        self._waiting = False
        #: The inference loop has a batch in hand (in the model, or waiting to hand it on).
        self._model_busy = False
        self._running = False
        queue.taker = self

    async def run(self, stop: asyncio.Event) -> None:
        """Until ``stop``: then the batch in the model is finished and stored with what was
        inferred before it, and the jobs claimed but not yet handed to the model go back to the
        queue at once (their attempt returned), so a stop takes one batch's inference, not the
        queued batches'. Cancelled (a stop that overran its grace), every job still held goes back
        without waiting for its lease; the one cut off in the model keeps its attempt."""
        decoded: asyncio.Queue[list[_Item] | None] = asyncio.Queue(maxsize=2)
        inferred: asyncio.Queue[list[_Item] | None] = asyncio.Queue(maxsize=2)
        # Recognition (known people) skips images while inferred results wait to be stored.
        self.result.backlog = inferred.qsize
        self._running = True
        tasks = [
            asyncio.create_task(self._claim_loop(stop, decoded), name="detect-claim"),
            asyncio.create_task(self._infer_loop(decoded, inferred, stop), name="detect-infer"),
            asyncio.create_task(self._finish_loop(inferred), name="detect-finish"),
            asyncio.create_task(self._reap_loop(stop), name="detect-reap"),
        ]
        try:
            await asyncio.gather(*tasks)
        finally:
            self._running = self._waiting = False
            # The loops hand the end on only when they return: a cancelled one waits on no queue.
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self._release_held()
            for job_id in list(self._door_pictures):
                if (picture := self._door_picture(job_id)) is not None:
                    picture.release()
            # The model's thread ends its batch without holding up the event loop meanwhile.
            await asyncio.to_thread(self._infer_pool.shutdown, wait=True, cancel_futures=True)
            self._decode_pool.shutdown(wait=False, cancel_futures=True)

    async def _claim_loop(self, stop: asyncio.Event, out: asyncio.Queue[list[_Item] | None]) -> None:
        loop = asyncio.get_running_loop()
        # A claim that filled its batch may have left ready jobs behind: claim again at once.
        # One that did not found the queue empty of ready jobs: a new job wakes the worker
        # (LISTEN/NOTIFY), and so do a retry's delay running out and a reaped lease (jobs/queue.py).
        more = True
        worked_at = loop.time()
        released = False
        while not stop.is_set():
            started = metrics.now()
            jobs = self._take_handed(self.batch_size)
            if not jobs:
                jobs = await self._claim(self.batch_size) if more else []
            if not jobs:
                # No work for a while: the memory kept for reuse goes back to the system, once.
                if not released and loop.time() - worked_at >= self.settings.buffers_idle_s:
                    released = True
                    buffers.release_idle()
                    try:
                        await asyncio.to_thread(self.detector.release_idle)
                    except Exception:  # memory kept is no reason to stop detecting: logged, tried next time
                        log.exception("the detector's idle memory could not be given back")
                self._waiting = True
                try:
                    await self._wait_for_work(stop)
                finally:
                    self._waiting = False
                more = True
                continue
            jobs += await self._top_up(len(jobs))
            more = len(jobs) >= self.batch_size
            worked_at, released = loop.time(), False
            metrics.STAGE.labels("claim").observe((metrics.now() - started) / len(jobs))
            started = metrics.now()
            door = [self._door_picture(j.id) for j in jobs]
            if len(jobs) == 1 and (picture := door[0]) is not None and out.empty() and not self._model_busy:
                # A lone picture decoded at the door, and the model idle: it is prepared on the
                # inference thread right before the model runs (``_infer``), one hand-over
                # instead of two (docs/decisions.md, "A lone picture in one hop").
                await out.put([_Item(jobs[0], picture, [], scene_wanted=self.result.scene_wanted(jobs[0]))])
                continue
            self._started.update(j.id for j in jobs)
            wanted = [self.result.scene_wanted(j) for j in jobs]
            results = await asyncio.gather(
                *(
                    loop.run_in_executor(self._decode_pool, self._load, Path(j.image_path), picture, scene)
                    for j, picture, scene in zip(jobs, door, wanted, strict=True)
                ),
                return_exceptions=True,
            )
            metrics.STAGE.labels("decode").observe((metrics.now() - started) / len(jobs))
            items: list[_Item] = []
            for job, scene_wanted, result in zip(jobs, wanted, results, strict=True):
                if isinstance(result, BaseException):
                    await self._decode_failed(job, result)
                else:
                    image, model_input, scene = result
                    items.append(_Item(job, image, [], model_input, scene_wanted, scene))
                    self._started.discard(job.id)  # decoded: it waits, untried, for the model
            if items:
                await out.put(items)
        await out.put(_STOP)

    async def _wait_for_work(self, stop: asyncio.Event) -> None:
        """Until a job is announced, the poll interval has passed, or the worker is stopped (a
        long ``job_poll_interval_s`` must not hold up a stop)."""
        poll_s = self.settings.job_poll_interval_s
        waits = [asyncio.ensure_future(self.queue.wait_for_work(until_next(poll_s, at_least_s=poll_s / 2)))]
        waits.append(asyncio.ensure_future(stop.wait()))
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()

    def wants_job(self) -> bool:
        """``JobTaker``: the claim loop waits for work with nothing in hand (then no job is queued
        for it either: its last claim found none, and no notification has come since)."""
        return self._running and self._waiting and not self._handed

    def picture_buffer(self, size: tuple[int, int]) -> Lent | None:
        """``JobTaker``: an array of this worker's picture pool for a JPEG of ``size`` decoded as
        ``decode_picture`` decodes it here (the scale ``decode_fit`` allows); None while a batch
        of pictures is decoded ahead already (at the door, or handed over and not yet taken)."""
        with self._door_lock:
            if self._door_ahead >= self.batch_size:
                return None
            self._door_ahead += 1
        shape = rgbx_shape(size, self.settings.detector_imgsz, self.result.decode_fit)
        return Lent(self._pictures, shape, returned=self._door_done)

    def _door_done(self) -> None:
        """A picture decoded ahead is off the count (given back at the door, or taken in a batch)."""
        with self._door_lock:
            self._door_ahead -= 1

    def _door_picture(self, job_id: int) -> Picture | None:
        """The picture the door decoded for the handed job ``job_id``, now the caller's."""
        picture = self._door_pictures.pop(job_id, None)
        if picture is not None:
            self._door_done()
        return picture

    async def take_job(self, job: ClaimedJob, picture: Lent | None = None) -> None:
        """``JobTaker``: a committed job claimed for this worker (by the ingest statement), which
        the claim loop takes as if it had claimed it; with ``picture``, the picture the ingest
        door decoded into ``picture_buffer``'s array, which the claim loop uses instead of
        decoding the file again. A worker that has stopped meanwhile gives the job back at once
        (else its lease would have to run out) and leaves the picture to its holder."""
        if not self._running:
            await self._release([job], tried=False)
            return
        self._held[job.id] = job
        self._handed.append(job)
        if picture is not None:
            self._door_pictures[job.id] = Picture(picture.take(), self._pictures)
        self.queue.wake()

    def _load(
        self, path: Path, door: Picture | None = None, scene_wanted: bool = False
    ) -> tuple[Picture, Any, SceneFeatures | None]:
        """On a decode thread: decode (unless the ingest door did: ``door``), then the detector's
        own preparation (resize, colour order), so the single inference thread only runs the model;
        and the scene's tamper features when its check is due (``scene_wanted``)."""
        budget = decode_budget.shared(self.settings.decode_memory_mb)
        if (picture := door) is None:
            picture = decode_picture(
                path, self.settings.detector_imgsz, budget, fit=self.result.decode_fit, pool=self._pictures
            )
        try:
            model_input = self.detector.prepare(picture.pixels)
            return picture, model_input, features(picture.image()) if scene_wanted else None
        except BaseException:
            picture.release()
            raise

    async def _top_up(self, have: int) -> list[ClaimedJob]:
        """More jobs for a short batch, waiting at most ``batch_wait_s`` in all."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.batch_wait_s
        more: list[ClaimedJob] = []
        while have + len(more) < self.batch_size and (left := deadline - loop.time()) > 0:
            if self._handed:
                # Handed over meanwhile (ingests that found the worker waiting, racing the one
                # that woke it): they join the batch as claimed ones do.
                more += self._take_handed(self.batch_size - have - len(more))
                continue
            if not await self.queue.wait_for_work(left):
                break  # no job arrived meanwhile: claiming again would find none
            # (Woken by a hand-over alone, this claim finds nothing; but a notification that
            # came with it is taken by the same wake-up.)
            more += await self._claim(self.batch_size - have - len(more))
        return more

    def _take_handed(self, limit: int) -> list[ClaimedJob]:
        """Up to ``limit`` of the jobs handed over, oldest first (more can come at once: ingests
        that all found the worker waiting); the rest wait for the next batch."""
        taken = self._handed[:limit]
        del self._handed[:limit]
        return taken

    async def _claim(self, limit: int) -> list[ClaimedJob]:
        """Claim jobs; while the database is unreachable, wait (growing to 10 s) and claim nothing."""
        try:
            jobs = await self.queue.claim(limit)
        except Exception as err:
            if not is_unavailable(err):
                raise
            self._db_backoff_s = min(10.0, max(0.5, self._db_backoff_s * 2))
            log.error("claiming jobs failed, database unavailable; retry in %.1fs error=%r", self._db_backoff_s, err)
            await asyncio.sleep(self._db_backoff_s)
            return []
        self._db_backoff_s = 0.0
        self._held.update((job.id, job) for job in jobs)
        return jobs

    async def _decode_failed(self, job: ClaimedJob, err: BaseException) -> None:
        if not isinstance(err, DecodeError):
            log.error("decoding failed camera_id=%s job_id=%s error=%r", job.camera_id, job.id, err)
            await self._fail_job(job, f"decode: {err!r}", retryable=True)
            return
        try:
            await quarantine.record(
                self.queue.pool,
                source="decode",
                camera_id=job.camera_id,
                original_path=job.image_path,
                stored_path=job.image_path,
                reason="corrupt_image",
                detail=str(err),
                size_bytes=None,
            )
        except Exception as failure:
            # The dead letter below still records the image; the quarantine row is a courtesy.
            if not is_unavailable(failure):
                log.exception("quarantine row not written camera_id=%s job_id=%s", job.camera_id, job.id)
            log.warning("image undecodable camera_id=%s job_id=%s error=%s", job.camera_id, job.id, err)
        await self._fail_job(job, f"corrupt_image: {err}", retryable=False)

    async def _fail_job(self, job: ClaimedJob, error: str, *, retryable: bool) -> None:
        """Record one job's failed attempt (retried after the queue's backoff, then dead-lettered).
        While the database is unreachable nothing can be recorded: the lease expires and the
        reaper requeues the job. Any other error here is not about one job and propagates."""
        try:
            outcome = await self.queue.fail(job, error, retryable=retryable)
        except Exception as err:
            if not is_unavailable(err):
                raise
            log.error(
                "job failure not recorded, database unavailable job_id=%s camera_id=%s error=%r",
                job.id,
                job.camera_id,
                err,
            )
            outcome = "lease_will_expire"
        else:
            self._forget([job])
        metrics.JOBS_FAILED.labels(outcome).inc()

    def _forget(self, jobs: list[ClaimedJob]) -> None:
        """These jobs are off this worker's hands (completed, failed or released)."""
        for job in jobs:
            self._held.pop(job.id, None)
            self._started.discard(job.id)

    async def _release(self, jobs: list[ClaimedJob], *, tried: bool) -> None:
        """Give jobs back to the queue (``JobQueue.release``). While the database is unreachable
        they cannot be: their leases expire and the reaper requeues them, as after a crash."""
        try:
            released = await self.queue.release(jobs, tried=tried)
        except Exception as err:
            if not is_unavailable(err):
                raise
            log.error("jobs not given back, database unavailable jobs=%d error=%r", len(jobs), err)
            return
        self._forget(jobs)
        if released:
            log.info("jobs given back to the queue jobs=%d tried=%s", len(released), tried)

    async def _release_held(self) -> None:
        """On the way out: every job still held goes back (bounded: a stop must end)."""
        held = list(self._held.values())
        if not held:
            return
        # A job cut off in the decoder or the model may be what hangs it: it keeps its attempt.
        tried = [job for job in held if job.id in self._started]
        untried = [job for job in held if job.id not in self._started]
        try:
            async with asyncio.timeout(5):
                await self._release(untried, tried=False)
                await self._release(tried, tried=True)
        except Exception as err:
            log.error("jobs not given back; their leases will expire jobs=%d error=%r", len(self._held), err)

    async def _infer_loop(
        self,
        source: asyncio.Queue[list[_Item] | None],
        out: asyncio.Queue[list[_Item] | None],
        stop: asyncio.Event,
    ) -> None:
        while (items := await source.get()) is not _STOP:
            if stop.is_set():
                # Stopping: what is not in the model yet goes back to the queue, not through it.
                await self._release([i.job for i in items], tried=False)
                _let_go(items)
                continue
            started = metrics.now()
            self._started.update(i.job.id for i in items)
            self._model_busy = True
            try:
                items, prepared_s = await self._run_model(items)
                if items:
                    if prepared_s:  # the picture's own work on the inference thread: the decode stage's
                        metrics.STAGE.labels("decode").observe(prepared_s / len(items))
                    metrics.STAGE.labels("infer").observe((metrics.now() - started - prepared_s) / len(items))
                    await out.put(items)
            finally:
                self._model_busy = False
        await out.put(_STOP)

    async def _run_model(self, items: list[_Item]) -> tuple[list[_Item], float]:
        """The batch through the model (``_detect``); if it fails, each image alone, so only the
        one that breaks it fails its job. The items inferred, and the seconds the inference thread
        spent on the pictures' own work (``_infer``)."""
        try:
            return items, await self._detect(items)
        except Exception as err:
            if len(items) == 1:
                await self._inference_failed(items[0], err)
                _let_go(items)
                return [], 0.0
            log.error("inference failed batch=%d, trying its images one by one error=%r", len(items), err)
        done: list[_Item] = []
        prepared_s = 0.0
        for item in items:
            try:
                prepared_s += await self._detect([item])
            except Exception as single:
                await self._inference_failed(item, single)
                _let_go([item])
            else:
                done.append(item)
        return done, prepared_s

    async def _detect(self, items: list[_Item]) -> float:
        """One batched inference on the model's thread; each item gets its detections. An item
        without its model input (a lone picture that found the model idle) has it made there,
        first, and its scene measured after (``_infer``); the seconds those took are returned."""
        found, prepared_s = await asyncio.get_running_loop().run_in_executor(self._infer_pool, self._infer, items)
        if len(found) != len(items):
            raise RuntimeError(f"detector returned {len(found)} results for {len(items)} images")
        for item, dets in zip(items, found, strict=True):
            item.detections = list(dets)
            # The model's input (a float tensor, 2-5 MB an image) is not needed past inference:
            # let it go, not hold it while the batch waits to be stored (issue 20, RSS when busy).
            item.model_input = None
        return prepared_s

    def _infer(self, items: list[_Item]) -> tuple[list[list[Detection]], float]:
        """On the inference thread: the inputs not made yet made (``Detector.prepare`` of the
        picture), one batched inference, then the tamper features of the pictures whose check is
        due and not yet measured (a lone picture's: no hand-over to a thread of their own); with
        the seconds the pictures' own work took (0: none)."""
        started = metrics.now()
        ready = [self.detector.prepare(i.image.pixels) if i.model_input is None else i.model_input for i in items]
        own_s = metrics.now() - started
        found = self.detector.detect(ready)
        if measure := [i for i in items if i.scene_wanted and i.scene is None]:
            started = metrics.now()
            for item in measure:
                item.scene = features(item.image.image())
            own_s += metrics.now() - started
        return found, own_s

    async def _inference_failed(self, item: _Item, err: Exception) -> None:
        log.error("inference failed job_id=%s camera_id=%s error=%r", item.job.id, item.job.camera_id, err)
        await self._fail_job(item.job, f"inference: {err!r}", retryable=True)

    async def _finish_loop(self, source: asyncio.Queue[list[_Item] | None]) -> None:
        """Store each batch's results: cameras side by side (``store_concurrency`` transactions at
        once), each camera's images together in one transaction, in arrival order, as its
        activity batch and its MQTT messages need (pipeline/result.py)."""
        while (items := await source.get()) is not _STOP:
            by_camera: dict[str, list[_Item]] = {}
            for item in items:
                by_camera.setdefault(item.job.camera_id, []).append(item)
            await asyncio.gather(*(self._finish_camera(group) for group in by_camera.values()))

    async def _finish_camera(self, items: list[_Item]) -> None:
        try:
            await self._store_camera(items)
        finally:
            _let_go(items)  # stored or failed: nothing reads the pictures any more

    async def _store_camera(self, items: list[_Item]) -> None:
        async with self._store_slots:
            try:
                lost = await self.result.finish_many([(i.job, i.image, i.detections) for i in items], _scenes(items))
            except Exception as err:
                if len(items) == 1 or is_unavailable(err):
                    await self._store_failed(items, err)
                    return
                # One image's data may be what breaks the transaction (a bug or a value it
                # triggers): store each alone, so only its own job loses the attempt.
                log.error(
                    "storing results failed camera_id=%s images=%d, storing them one by one error=%r",
                    items[0].job.camera_id,
                    len(items),
                    err,
                )
                metrics.STORE_GROUPS_SPLIT.inc()
                lost = []
                for item in items:
                    try:
                        alone = [(item.job, item.image, item.detections)]
                        lost += await self.result.finish_many(alone, _scenes([item]))
                    except Exception as single:
                        await self._store_failed([item], single)
                    else:
                        self._forget([item.job])
            else:
                self._forget([i.job for i in items])
            for job in lost:
                log.warning(
                    "result discarded: job %s attempt %s is no longer held by this worker", job.id, job.attempts
                )
                metrics.JOBS_FAILED.labels("lease_lost").inc()

    async def _store_failed(self, items: list[_Item], err: Exception) -> None:
        """Whatever storing met (a database error, or a bug or a value its data triggers, as a
        capture time near year 1 or 9999 did) fails these jobs, never this stage: nothing was
        committed; each job is retried after the queue's backoff and dead-lettered with this
        error once its attempts are used up."""
        for item in items:
            if is_unavailable(err):
                log.error(
                    "storing result failed, database unavailable job_id=%s camera_id=%s error=%r",
                    item.job.id,
                    item.job.camera_id,
                    err,
                )
            else:
                log.error(
                    "storing result failed job_id=%s camera_id=%s",
                    item.job.id,
                    item.job.camera_id,
                    exc_info=(type(err), err, err.__traceback__),
                )
            await self._fail_job(item.job, f"store: {err!r}", retryable=True)

    async def _reap_loop(self, stop: asyncio.Event) -> None:
        interval = max(1.0, min(30.0, self.settings.job_lease_s / 4))
        while not stop.is_set():
            try:
                await self.queue.reap_expired()
            except Exception as err:
                if not is_unavailable(err):
                    raise
                log.error("reaping expired leases failed, database unavailable error=%r", err)
            try:
                await asyncio.wait_for(stop.wait(), until_next(interval))
            except TimeoutError:
                continue


def _scenes(items: list[_Item]) -> dict[int, SceneFeatures | None]:
    """The items' tamper checks as the worker decided and measured them, by job id."""
    return {i.job.id: i.scene for i in items}


def _let_go(items: list[_Item]) -> None:
    """The items' pictures go back to the worker's pool (their batch is done with)."""
    for item in items:
        item.image.release()
