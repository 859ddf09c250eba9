"""GPU telemetry through NVML (nvidia-ml-py). Without an NVIDIA GPU it reports None — never
invented numbers."""

from __future__ import annotations

import logging
from typing import Any, Protocol

from inference_server.schemas import GpuStatus

log = logging.getLogger(__name__)


class GpuReader(Protocol):
    """What reads the GPU: ``GpuProbe``, or a fake of one in tests (no GPU here)."""

    @property
    def available(self) -> bool: ...

    def read(self) -> GpuStatus | None: ...


class GpuProbe:
    def __init__(self, index: int = 0) -> None:
        self._nvml: Any = None
        self._handle: Any = None
        try:
            import pynvml
        except ImportError:
            log.info("gpu telemetry off: nvidia-ml-py not installed")
            return
        try:
            pynvml.nvmlInit()
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        except pynvml.NVMLError as err:
            log.info("gpu telemetry off (no NVIDIA GPU or driver): %s", err)
            return
        self._nvml = pynvml
        status = self.read()
        log.info("gpu telemetry on name=%s", status.name if status else "?")

    @property
    def available(self) -> bool:
        return self._handle is not None

    def read(self) -> GpuStatus | None:
        if self._handle is None:
            return None
        nvml, handle = self._nvml, self._handle
        name = nvml.nvmlDeviceGetName(handle)
        memory = nvml.nvmlDeviceGetMemoryInfo(handle)
        return GpuStatus(
            name=name.decode() if isinstance(name, bytes) else str(name),
            utilization_percent=float(nvml.nvmlDeviceGetUtilizationRates(handle).gpu),
            memory_used_mb=round(memory.used / 2**20, 1),
            memory_total_mb=round(memory.total / 2**20, 1),
            temperature_c=float(nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU)),
        )
