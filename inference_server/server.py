"""Wiring: builds every component from the settings (the one place backends are chosen)."""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
import os
import socket
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncpg
from aiohttp import web

from inference_server import __version__, decode_budget, event_loop
from inference_server.api.app import build_app, build_runner
from inference_server.api.deps import ApiContext, ReadinessCheck
from inference_server.clock import Clock, SystemClock
from inference_server.comms.broker import EmbeddedBroker
from inference_server.comms.messages import camera_states
from inference_server.comms.mqtt import BrokerAddress, MqttPublisher, PublishError
from inference_server.comms.topics import Topics
from inference_server.config import LlmSettings, Settings, redact_url
from inference_server.detection.detector import Detector, DetectorModelMissing, build_detector
from inference_server.detection.vram import VramBudget, detector_need_mb, embedder_need_mb, llm_need_mb
from inference_server.embedding.embedder import Embedder, EmbeddingSource, build_embedder, model_key
from inference_server.event_loop import until_next
from inference_server.ingest.ingestor import Ingestor
from inference_server.ingest.mqtt import MqttIngest
from inference_server.ingest.watcher import FolderWatcher
from inference_server.jobs.queue import JobQueue, QueuePolicy
from inference_server.pipeline.batch import BatchStage
from inference_server.pipeline.detect import DetectWorker
from inference_server.pipeline.identify import PhotoEnroller, Recognizer
from inference_server.pipeline.result import ResultStage
from inference_server.pipeline.tamper import TamperStage
from inference_server.publish.relay import OutboxRelay
from inference_server.reasoning.digest import DigestProseError
from inference_server.reasoning.reasoner import LevelThresholds
from inference_server.reasoning.rules import RulesReasoner
from inference_server.reports.digest import DigestService, ProseFailed, ProseSource
from inference_server.reports.scheduler import DigestScheduler
from inference_server.schemas import DependencyHealth, Discovery, ModelStatus
from inference_server.status import StatusReporter
from inference_server.store import cameras, outbox
from inference_server.store.db import DB_ERRORS, EmbeddedPostgres, create_pool
from inference_server.store.migrate import migrate
from inference_server.store.retention import RetentionWorker
from inference_server.telemetry.gpu import GpuProbe, GpuReader

if TYPE_CHECKING:
    from inference_server.ingest.ftp import FtpReceiver
    from inference_server.reasoning.llm import LlmReasoner

log = logging.getLogger(__name__)

#: After ``stop``, how long the components have to finish their work, then how long cancelled
#: ones are waited for. With the database's close (10 s at most) and PostgreSQL's own shutdown,
#: the add-on's stop timeout (``addon/config.yaml``) must cover them.
STOP_GRACE_S = 10.0
CANCEL_GRACE_S = 5.0

#: What keeps one ``hsi/status`` from being published: the next interval tries again.
_STATUS_ERRORS: tuple[type[BaseException], ...] = (*DB_ERRORS, PublishError)


async def _first(*waits: Coroutine[Any, Any, Any]) -> None:
    """Wait until the first of ``waits`` finishes; cancel the others."""
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


async def open_database(settings: Settings) -> tuple[asyncpg.Pool, EmbeddedPostgres | None]:
    """Connect (starting the embedded PostgreSQL when no URL is set) and migrate."""
    embedded: EmbeddedPostgres | None = None
    dsn = settings.database_url
    if dsn is None:
        embedded = EmbeddedPostgres(settings.postgres_path)
        dsn = await embedded.start()
    pool = await create_pool(dsn, settings.db_pool_size)
    applied = await migrate(pool)
    log.info("database ready migrations_applied=%s", applied or "none")
    return pool, embedded


def digest_prose(reasoner: LlmReasoner, timeout_s: float) -> ProseSource:
    """The digest's prose writer: the events' LLM reasoner, shared with its concurrency limit and
    circuit breaker (``LlmReasoner.write_digest``), behind the digest prompt."""

    async def write(facts: str) -> str:
        try:
            return await reasoner.write_digest(facts, timeout_s)
        except DigestProseError as err:
            raise ProseFailed(err.reason) from err

    return ProseSource(reasoner.backend.model, write)


def ingest_client_id(settings: Settings) -> str:
    """MQTT ingest's client id: stable across restarts (its persistent session is what makes the
    broker hand back messages that arrived while the server was down), distinct per installation."""
    if settings.mqtt_client_id:
        return f"{settings.mqtt_client_id}-ingest"
    digest = hashlib.sha256(str(settings.data_dir.resolve()).encode()).hexdigest()[:8]
    return f"hsi-{socket.gethostname()}-{digest}-ingest"


@dataclass
class Server:
    """The whole inference server in one process (roles: all, api, worker)."""

    settings: Settings
    detector: Detector | None = None
    clock: Clock = field(default_factory=SystemClock)
    worker_id: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")
    #: NVML by default; tests pass a fake (there is no GPU in CI).
    gpu: GpuReader | None = None

    pool: asyncpg.Pool = field(init=False)
    api_url: str = field(init=False, default="")
    mqtt_url: str = field(init=False, default="")
    mqtt_ingest: MqttIngest | None = field(init=False, default=None)
    topics: Topics = field(init=False)
    watcher: FolderWatcher | None = field(init=False, default=None)
    ftp: FtpReceiver | None = field(init=False, default=None)
    ingestor: Ingestor = field(init=False)
    batches: BatchStage = field(init=False)
    #: None in a process without the detect role.
    detect_worker: DetectWorker | None = field(init=False, default=None)
    digests: DigestService = field(init=False)
    #: Known people: None when no embedding model is configured.
    recognizer: Recognizer | None = field(init=False, default=None)
    enroller: PhotoEnroller | None = field(init=False, default=None)
    status: StatusReporter = field(init=False)
    vram: VramBudget = field(init=False)
    _embedded_pg: EmbeddedPostgres | None = field(init=False, default=None)
    _broker: EmbeddedBroker | None = field(init=False, default=None)
    _publisher: MqttPublisher | None = field(init=False, default=None)
    _relay: OutboxRelay | None = field(init=False, default=None)
    _queue: JobQueue | None = field(init=False, default=None)
    _runner: web.AppRunner | None = field(init=False, default=None)
    _tasks: list[asyncio.Task[Any]] = field(init=False, default_factory=list)
    _stop: asyncio.Event = field(init=False, default_factory=asyncio.Event)
    #: Set on every MQTT (re)connection: the cameras' retained states are to be queued again.
    _states_wanted: asyncio.Event = field(init=False, default_factory=asyncio.Event)
    #: Why the server stopped on its own (a component crashed); None while running or after a requested stop.
    failure: str | None = field(init=False, default=None)

    async def start(self) -> None:
        """Start what ``settings.role`` runs, each part after those it uses: the database, the MQTT
        broker, the job queue, the detector, the API, the publisher and background tasks, ingest,
        then the pipeline's workers."""
        s = self.settings
        log.info(
            "malloc arenas=%s mmap_threshold=%s trim_threshold=%s",
            decode_budget.limit_malloc_arenas(s.malloc_arena_max),
            decode_budget.fix_mmap_threshold(s.malloc_mmap_threshold_kb),
            decode_budget.fix_trim_threshold(s.malloc_trim_threshold_kb),
        )
        s.data_dir.mkdir(parents=True, exist_ok=True)
        self.topics = Topics(s.mqtt_prefix)
        self.pool, self._embedded_pg = await open_database(s)
        self.mqtt_url = await self._start_broker()
        self._queue = queue = await self._open_queue()
        runs_worker = s.role in ("all", "worker")
        runs_api = s.role in ("all", "api")

        gpu = self.gpu or GpuProbe()
        self.vram = VramBudget(gpu, s.vram_budget_mb)
        if runs_worker and self.detector is None:
            try:
                self.detector = await self._load_detector(s)
            except DetectorModelMissing as err:
                # A first start without its model (no internet for the download, a wrong path) is
                # no crash loop: images are still taken in and queued, the status says what to do.
                log.error("detector model missing, detection is off until it is fixed: %s", err)
                self.vram.models.append(
                    ModelStatus(name="detector", device="none", state="missing", vram_mb=None, detail=str(err))
                )

        self.ingestor = Ingestor(s, self.pool, queue)
        self.status = StatusReporter(
            self.pool,
            detector=self.detector.describe() if self.detector is not None else None,
            reasoner=(f"rules+llm:{s.llm.backend}" if s.llm else "rules") if runs_worker else None,
            gpu=gpu,
            models=self.vram.models,
            mqtt_connected=lambda: self._publisher is not None and self._publisher.connected.is_set(),
        )
        self.digests = DigestService(self.pool, self.topics, s.camera_timezone)
        await self._load_recognition(s)
        await self._start_api(runs_api)
        publisher = await self._start_publisher()
        self._relay = OutboxRelay(self.pool, publisher, gather_s=s.outbox_gather_ms / 1000)
        self._spawn(self._relay.run(self._stop), "relay")
        self._spawn(self._republish_states(), "camera-states")
        self._spawn(self._publish_status(), "status")
        self._spawn(RetentionWorker(self.pool, s).run(self._stop), "retention")
        # With an LLM for its prose the scheduled digest is made where the LLM is (a worker): an
        # api-only process would send the rules text first and the period would be taken.
        if s.digest_enabled and (runs_worker or s.llm is None or not s.digest_llm):
            scheduler = DigestScheduler(self.digests, self.clock, s.digest_from, s.digest_at)
            self._spawn(scheduler.run(self._stop), "digest")
        elif s.digest_enabled:
            log.info("scheduled digest left to the worker processes (their LLM writes its prose) role=%s", s.role)
        if runs_api:
            await self._start_ingest()
        if runs_worker and self.detector is not None:
            self._start_workers(queue)
        log.info(
            "server started role=%s api=%s mqtt=%s worker_id=%s event_loop=%r",
            s.role,
            self.api_url,
            redact_url(self.mqtt_url),
            self.worker_id,
            event_loop.describe(),
        )

    async def _start_broker(self) -> str:
        """The MQTT broker's URL: the configured one, else an embedded broker started here."""
        if self.settings.mqtt_url is not None:
            return self.settings.mqtt_url
        port = self.settings.mqtt_embedded_port or _free_port()
        self._broker = EmbeddedBroker("127.0.0.1", port)
        await self._broker.start()
        return self._broker.url

    async def _open_queue(self) -> JobQueue:
        s = self.settings
        queue = JobQueue(
            self.pool,
            QueuePolicy(s.job_lease_s, s.job_max_attempts, s.job_backoff_base_s, s.job_backoff_max_s),
            self.worker_id,
        )
        await queue.listen()
        return queue

    async def _start_publisher(self) -> MqttPublisher:
        """The MQTT connection for everything the server sends, announcing it on ``hsi/discovery``."""
        s = self.settings
        discovery = Discovery(
            id=s.mqtt_prefix,
            name="Home Security Intelligence",
            version=__version__,
            url=s.public_url or self.api_url,
        )
        self._publisher = MqttPublisher(
            BrokerAddress.parse(self.mqtt_url),
            self.topics,
            s.mqtt_client_id or f"hsi-{self.worker_id}".replace(":", "-"),
            [(self.topics.discovery, discovery.model_dump_json().encode())],
            on_connected=self._states_wanted.set,
        )
        await self._publisher.start()
        return self._publisher

    async def _start_ingest(self) -> None:
        """MQTT ingest (when enabled), the folder watcher (ready before this returns) and FTP."""
        s = self.settings
        if s.mqtt_ingest_enabled:
            self.mqtt_ingest = MqttIngest(
                BrokerAddress.parse(self.mqtt_url),
                self.topics,
                ingest_client_id(s),
                self.ingestor,
                s.mqtt_ingest_queue,
            )
            self._spawn(self.mqtt_ingest.run(self._stop), "mqtt-ingest")
        self.watcher = FolderWatcher(
            s.cameras_path,
            self.ingestor,
            stable_s=s.file_stable_s,
            polling=s.watch_polling,
            poll_interval_s=s.watch_poll_interval_s,
        )
        self._spawn(self.watcher.run(self._stop), "watcher")
        await asyncio.wait_for(self.watcher.ready.wait(), 30)
        if s.ftp_enabled and not s.ftp_users:
            # Every login would be refused: no port open to the network for nothing, and
            # pyftpdlib with the pyOpenSSL it loads (~11 MB of the process's memory) not loaded.
            log.warning("ftp receiver not started: ftp_enabled but no ftp_users (add a login for each camera)")
        elif s.ftp_enabled:
            from inference_server.ingest.ftp import FtpReceiver

            self.ftp = FtpReceiver(s, self.ingestor.ingest_file, asyncio.get_running_loop())
            self.ftp.start()

    def _start_workers(self, queue: JobQueue) -> None:
        """The pipeline: detect → result → batch, and the LLM stage when an LLM is configured."""
        s = self.settings
        assert self.detector is not None
        # The one place the reasoners are chosen: rules always (phase one), an LLM when configured.
        rules = RulesReasoner(LevelThresholds(s.risk_medium, s.risk_high, s.risk_critical))
        llm = None
        llm_settings = self._place_llm(s.llm) if s.llm is not None else None
        if llm_settings is not None:
            from inference_server.pipeline.llm import LlmStage
            from inference_server.reasoning.llm import LlmReasoner

            llm = LlmReasoner.from_settings(llm_settings, rules.thresholds)
            if s.digest_llm:
                self.digests.prose = digest_prose(llm, s.digest_llm_timeout_s)
        self.batches = BatchStage(s, self.pool, rules, self.topics, self.clock, llm_enabled=llm is not None)
        tamper = TamperStage(s, self.topics) if s.tamper_enabled else None
        result = ResultStage(s, self.pool, queue, self.batches, self.recognizer, tamper=tamper)
        if self._relay is not None:
            # What the stores and closings commit goes to this process's relay in hand.
            result.offer = self.batches.offer = self._relay.offer
            result.marks = self._relay.marks  # and the stores write the marks of what it sent
        self.detect_worker = DetectWorker(s, queue, self.detector, result)
        self._spawn(self.detect_worker.run(self._stop), "detect")
        self._spawn(self.batches.run(self._stop), "batches")
        if llm is not None and llm_settings is not None:
            lease = max(60.0, llm_settings.timeout_s * 4)
            stage = LlmStage(
                self.pool,
                self.batches,
                llm,
                self.topics,
                lease_s=lease,
                max_adjust=llm_settings.max_adjust,
                max_images=llm_settings.max_images,
                image_max_px=llm_settings.image_max_px,
            )
            self._spawn(stage.run(self._stop), "llm")

    async def _load_detector(self, s: Settings) -> Detector:
        """The detector first (VRAM priority): on the GPU if it fits the budget, else on the CPU."""
        on_gpu = s.detector_device.startswith("cuda") or (s.detector_device == "auto" and self.vram.gpu_present)
        estimate = detector_need_mb(s.detector_weights, s.detector_batch_size, s.detector_imgsz) if on_gpu else None
        if estimate is not None and (refusal := self.vram.admit("detector", estimate)) is not None:
            self.vram.refused("detector", refusal, fallback_device="cpu")
            s = s.model_copy(update={"detector_device": "cpu"})
            on_gpu = False
        before = self.vram.used_mb()
        detector = await asyncio.to_thread(build_detector, s)
        await asyncio.to_thread(detector.warmup)
        if on_gpu:
            device = "cuda:0" if s.detector_device == "auto" else s.detector_device
            self.vram.loaded("detector", device, before_mb=before, estimate_mb=estimate)
        elif estimate is None:  # never asked for the GPU (a refusal is recorded already)
            self.vram.loaded("detector", "cpu", before_mb=None, estimate_mb=None)
        return detector

    def _place_llm(self, llm: LlmSettings) -> LlmSettings:
        """The LLM second: all layers on the GPU if they fit what the detector left, else on the CPU."""
        if llm.backend != "llamacpp" or llm.model_path is None:
            self.vram.models.append(
                ModelStatus(name="llm", device="remote", state="loaded", vram_mb=None, detail=llm.base_url)
            )
            return llm
        from inference_server.reasoning.backends.llamacpp import resolve_gpu_layers

        if not self.vram.gpu_present or resolve_gpu_layers(llm.n_gpu_layers) == 0 or not llm.model_path.exists():
            self.vram.loaded("llm", "cpu", before_mb=None, estimate_mb=None)
            return llm
        need = llm_need_mb(llm.model_path, llm.n_ctx, llm.kv_cache_type)
        if (refusal := self.vram.admit("llm", need)) is not None:
            self.vram.refused("llm", refusal, fallback_device="cpu")
            return llm.model_copy(update={"n_gpu_layers": 0})
        # llama.cpp loads the model when the LLM stage starts: the figure stays an estimate.
        self.vram.loaded("llm", "cuda:0", before_mb=None, estimate_mb=need)
        return llm

    async def _load_recognition(self, s: Settings) -> None:
        """The embedders of the configured face and body models (none configured: recognition off)."""
        configured: tuple[tuple[EmbeddingSource, Path | None], ...] = (
            ("face", s.face_embedder_model),
            ("body", s.body_embedder_model),
        )
        paths = {src: p for src, p in configured if p is not None}
        if not paths:
            return

        # On a GPU each embedder is admitted to the VRAM budget after the detector, before the LLM
        # (detection/vram.py), one after the other; one that does not fit runs on the CPU, shown in
        # the status.
        def load() -> tuple[dict[EmbeddingSource, Embedder], dict[str, str]]:
            embedders: dict[EmbeddingSource, Embedder] = {}
            for src, path in paths.items():
                name, device, estimate = f"{src}_embedder", s.embedding_device, None
                if device.startswith("cuda"):
                    need = embedder_need_mb(path, s.embedding_max_people)
                    if (refusal := self.vram.admit(name, need)) is not None:
                        self.vram.refused(name, refusal, fallback_device="cpu")
                        device = "cpu"
                    else:
                        estimate = need
                before = self.vram.used_mb() if estimate is not None else None
                embedders[src] = build_embedder(s.embedder_backend, src, path, device)
                runs_on = getattr(embedders[src], "device", device)
                if estimate is not None and not runs_on.startswith("cuda"):
                    # Admitted, but its runtime has no GPU (onnxruntime without the CUDA provider).
                    self.vram.release(name)
                    reason = f"{s.embedder_backend} has no CUDA provider here (pip install onnxruntime-gpu)"
                    self.vram.refused(name, reason, fallback_device=runs_on)
                elif estimate is not None or device == s.embedding_device:
                    self.vram.loaded(name, runs_on, before_mb=before, estimate_mb=estimate)
            return embedders, {src: model_key(p) for src, p in paths.items()}

        embedders, models = await asyncio.to_thread(load)
        self.recognizer = Recognizer(s, embedders, models)
        if s.role != "api":  # where images are identified: hear household changes (pipeline/identify.py)
            await self.recognizer.watch(self.pool)
        self.enroller = PhotoEnroller(self.recognizer, lambda: build_detector(s), s.detector_imgsz)
        for embedder in embedders.values():
            log.info("recognition model loaded %s", embedder.describe())

    async def _start_api(self, enabled: bool) -> None:
        if not enabled:
            return
        checks: dict[str, ReadinessCheck] = {"database": self._check_db, "mqtt": self._check_mqtt}
        api = build_app(
            ApiContext(
                self.pool, self.settings, self.ingestor, self.status, self.topics, checks, self.digests, self.enroller
            )
        )
        self._runner = build_runner(api)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.settings.api_host, self.settings.api_port)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.api_url = f"http://{host}:{port}"

    async def _publish_status(self) -> None:
        """Retained ``hsi/status`` every ``status_interval_s`` (live state: not via the outbox)."""
        while not self._stop.is_set():
            publisher = self._publisher
            if publisher is not None and publisher.connected.is_set():
                try:
                    status = await self.status.current()
                    await publisher.publish(self.topics.status, status.model_dump_json().encode(), retain=True)
                except _STATUS_ERRORS as err:
                    log.warning("status not published: %r", err)
            try:
                await asyncio.wait_for(self._stop.wait(), until_next(self.settings.status_interval_s))
            except TimeoutError:
                continue

    async def _republish_states(self) -> None:
        """After every MQTT (re)connection, queue each camera's retained state (and its object
        counts) as the database has it then: a broker restarted without persistence, or a server
        that restarted, would otherwise leave the cameras unavailable until their next image.
        Through the outbox, so they go out after, never before, the messages queued earlier."""
        delay = 1.0
        while not self._stop.is_set():
            await _first(self._states_wanted.wait(), self._stop.wait())
            if self._stop.is_set():
                return
            self._states_wanted.clear()
            try:
                async with self.pool.acquire() as conn, conn.transaction():
                    states = await cameras.states_to_queue(conn)
                    await outbox.add_many(conn, camera_states(self.topics, states))
            except DB_ERRORS as err:
                log.error("queueing the camera states failed, retry_in_s=%.0f error=%r", delay, err)
                self._states_wanted.set()
                await _first(asyncio.sleep(delay), self._stop.wait())
                delay = min(30.0, delay * 2)
            else:
                log.info("camera states queued cameras=%d", len(states))
                delay = 1.0

    async def _check_db(self) -> DependencyHealth:
        try:
            await self.pool.fetchval("SELECT 1")
        except DB_ERRORS as err:
            return DependencyHealth(ok=False, detail=repr(err))
        return DependencyHealth(ok=True, detail="connected")

    async def _check_mqtt(self) -> DependencyHealth:
        ok = self._publisher is not None and self._publisher.connected.is_set()
        return DependencyHealth(ok=ok, detail="connected" if ok else "not connected")

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        task.add_done_callback(self._task_done)
        self._tasks.append(task)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        """A component ended while the server was running: that is a failure (each one runs
        until ``stop``; errors about one job or one file are handled inside it). The server stops,
        and ``failure`` makes ``serve`` exit non-zero so a supervisor restarts it."""
        if task.cancelled() or self._stop.is_set():
            return
        err = task.exception()
        if err is not None:
            log.critical("component crashed, stopping task=%s", task.get_name(), exc_info=err)
            self.failure = f"component {task.get_name()} crashed: {err!r}"
        else:
            log.critical("component ended unexpectedly, stopping task=%s", task.get_name())
            self.failure = f"component {task.get_name()} ended unexpectedly"
        self._stop.set()

    @property
    def exit_status(self) -> int:
        """The process exit status for this server's run: 0 after a requested stop, 1 if it
        stopped because a component failed (``failure``)."""
        return 0 if self.failure is None else 1

    @property
    def queue(self) -> JobQueue:
        assert self._queue is not None, "start() first"
        return self._queue

    async def wait_stopped(self) -> None:
        await self._stop.wait()

    async def stop(self) -> None:
        self._stop.set()
        if self.ftp is not None:
            await asyncio.to_thread(self.ftp.stop)
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=STOP_GRACE_S)
            for task in pending:
                log.warning("component did not stop in %.0f s, cancelling it task=%s", STOP_GRACE_S, task.get_name())
                task.cancel()
            if pending:
                # Bounded too: one that ignores its cancellation must not keep the rest open.
                _, stuck = await asyncio.wait(pending, timeout=CANCEL_GRACE_S)
                for task in stuck:
                    where = io.StringIO()
                    task.print_stack(file=where)
                    log.error("component did not end when cancelled task=%s %s", task.get_name(), where.getvalue())
            for task in self._tasks:
                # What a component raised on its way out is said once here (stop set, _task_done
                # leaves it), not left to asyncio's "exception was never retrieved".
                if task.done() and not task.cancelled() and (err := task.exception()) is not None:
                    log.error("component failed while stopping task=%s", task.get_name(), exc_info=err)
        if self._runner is not None:
            await self._runner.cleanup()
        if self._publisher is not None:
            await self._publisher.stop()
        if self._queue is not None:
            await self._queue.close()
        if self.recognizer is not None:
            await self.recognizer.aclose()
        try:
            await asyncio.wait_for(self.pool.close(), 10)
        except TimeoutError:
            log.error("database connections did not close in 10 s; terminating them")
            self.pool.terminate()
        if self._broker is not None:
            await self._broker.stop()
        if self._embedded_pg is not None:
            await self._embedded_pg.stop()
        log.info("server stopped")
