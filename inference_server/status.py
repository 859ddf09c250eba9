"""System status: one ``SystemStatus`` for ``GET /system/status``, the retained ``hsi/status``
topic and the Prometheus gauges, computed from the database and the hardware."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import asyncpg
from prometheus_client import Gauge

from inference_server import __version__, event_loop
from inference_server.jobs.queue import THROUGHPUT, THROUGHPUT_WINDOW_S, throughput_of
from inference_server.schemas import ModelStatus, SystemStatus
from inference_server.store import events
from inference_server.telemetry import metrics
from inference_server.telemetry.gpu import GpuProbe, GpuReader

log = logging.getLogger(__name__)


#: The GPU gauges, registered by the first reporter that finds a GPU.
_GPU_GAUGES: dict[str, Gauge] = {}


class StatusReporter:
    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        detector: str | None,
        reasoner: str | None,
        mqtt_connected: Callable[[], bool],
        gpu: GpuReader | None = None,
        models: list[ModelStatus] | None = None,
    ) -> None:
        #: Where each model runs; the list is the VRAM budget's own, so later decisions show too.
        self.models = models if models is not None else []
        self.pool = pool
        self.detector = detector
        self.reasoner = reasoner
        self.mqtt_connected = mqtt_connected
        self.gpu = gpu or GpuProbe()
        self.started = time.monotonic()
        self._gpu_gauges: dict[str, Gauge] = {}
        if self.gpu.available:
            # Registered only when a GPU exists: without one these series are absent, not zero.
            for key, help_text in (
                ("utilization_percent", "GPU utilisation"),
                ("memory_used_mb", "GPU memory used (MiB)"),
                ("memory_total_mb", "GPU memory total (MiB)"),
                ("temperature_c", "GPU temperature (°C)"),
            ):
                # Once per process: a second server started in it (tests, an in-process restart)
                # reuses them, as registering a name twice raises.
                if key not in _GPU_GAUGES:
                    _GPU_GAUGES[key] = Gauge(f"hsi_gpu_{key}", help_text, registry=metrics.REGISTRY)
                self._gpu_gauges[key] = _GPU_GAUGES[key]

    async def current(self) -> SystemStatus:
        # The queue's figures and the latest event in one statement (every 10 s, all day).
        row = await self.pool.fetchrow(f"{THROUGHPUT}, {events.LAST_EVENT_AT}", THROUGHPUT_WINDOW_S)
        assert row is not None
        tp = throughput_of(row)
        # NVML is read off the event loop; without a GPU there is nothing to read (no thread woken).
        gpu = await asyncio.to_thread(self.gpu.read) if self.gpu.available else None
        status = SystemStatus(
            version=__version__,
            uptime_s=round(time.monotonic() - self.started, 1),
            queue={k: v for k, v in tp.counts.items() if k != "dead"},
            dlq_size=tp.counts["dead"],
            images_per_s=tp.images_per_s,
            latency_ms_p50=tp.latency_ms_p50,
            latency_ms_p95=tp.latency_ms_p95,
            last_event_at=row["last_event_at"],
            detector=self.detector,
            reasoner=self.reasoner,
            mqtt_connected=self.mqtt_connected(),
            gpu=gpu,
            models=list(self.models),
            event_loop=event_loop.describe(),
        )
        for state, n in tp.counts.items():
            metrics.QUEUE_DEPTH.labels(state).set(n)
        metrics.DLQ_SIZE.set(tp.counts["dead"])
        metrics.IMAGES_PER_S.set(tp.images_per_s)
        if gpu is not None:
            for key, gauge in self._gpu_gauges.items():
                gauge.set(getattr(gpu, key))
        return status
