"""Prometheus metrics, one registry for the process (served on ``GET /api/v1/metrics``)."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

_STAGE_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30)

STAGE = Histogram(
    "hsi_stage_seconds",
    "Time spent per image in each pipeline stage",
    ["stage"],
    buckets=_STAGE_BUCKETS,
    registry=REGISTRY,
)
END_TO_END = Histogram(
    "hsi_end_to_end_seconds",
    "Image accepted (file seen complete or upload received) to its result committed",
    buckets=_STAGE_BUCKETS,
    registry=REGISTRY,
)
INGESTED = Counter("hsi_images_ingested_total", "Images accepted", ["camera_id", "source", "result"], registry=REGISTRY)
QUARANTINED = Counter("hsi_quarantined_total", "Inputs refused, by reason", ["reason"], registry=REGISTRY)
EVENTS = Counter("hsi_events_total", "Events created", ["risk_level", "analysis_source"], registry=REGISTRY)
JOBS_FAILED = Counter("hsi_job_failures_total", "Failed job attempts", ["outcome"], registry=REGISTRY)
PUBLISHED = Counter("hsi_mqtt_published_total", "Outbox messages acknowledged by the broker", registry=REGISTRY)
EMBEDDINGS = Counter(
    "hsi_person_embeddings_total",
    "Person detections embedded (result: done) or not (busy: skipped under load; per_image_limit; failed)",
    ["result"],
    registry=REGISTRY,
)
STORE_GROUPS_SPLIT = Counter(
    "hsi_store_groups_split_total",
    "One camera's results that failed to store together and were stored one by one",
    registry=REGISTRY,
)
TAMPER_SAVES_DEFERRED = Counter(
    "hsi_tamper_saves_deferred_total",
    "Quiet tamper checks whose baseline was kept in memory, not written (pipeline/tamper.py, QUIET_SAVE_EVERY_S)",
    registry=REGISTRY,
)
TAMPER_CHECKS_SKIPPED = Counter(
    "hsi_tamper_checks_skipped_total",
    "Images not checked for tampering: their camera was checked less than tamper_check_interval_s before",
    registry=REGISTRY,
)
STATES_UNCHANGED = Counter(
    "hsi_camera_states_unchanged_total",
    "Camera state messages not queued: the same as the last its open batch queued (the broker retains those)",
    registry=REGISTRY,
)
SNAPSHOTS_SKIPPED = Counter(
    "hsi_snapshots_not_published_total",
    "Camera snapshots kept off MQTT: the same objects as the last, within snapshot_publish_interval_s (not drawn)",
    registry=REGISTRY,
)


def now() -> float:
    return time.perf_counter()


def stage_means_ms() -> dict[str, tuple[int, float]]:
    """(count, mean milliseconds) per stage, read from the histogram."""
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for metric in STAGE.collect():
        for sample in metric.samples:
            stage = sample.labels.get("stage", "")
            if sample.name.endswith("_sum"):
                sums[stage] = sample.value
            elif sample.name.endswith("_count"):
                counts[stage] = int(sample.value)
    return {s: (counts[s], 1000 * sums[s] / counts[s]) for s in counts if counts[s]}


QUEUE_DEPTH = Gauge("hsi_queue_jobs", "Jobs by state", ["state"], registry=REGISTRY)
DLQ_SIZE = Gauge("hsi_dlq_size", "Jobs in the dead letters", registry=REGISTRY)
IMAGES_PER_S = Gauge("hsi_images_per_second", "Images finished per second over the last minute", registry=REGISTRY)
AUTH_FAILURES = Counter("hsi_auth_failures_total", "Requests refused for a missing or wrong key", registry=REGISTRY)
LLM_CALLS = Counter(
    "hsi_llm_calls_total",
    "LLM phase outcomes: ok, or the fallback reason (timeout, unreachable, invalid output, circuit open...)",
    ["outcome"],
    registry=REGISTRY,
)
