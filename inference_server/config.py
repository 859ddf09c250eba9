"""One typed settings object for the whole server.

Sources, highest priority first: explicit keyword arguments, environment variables
(``HSI_<NAME>``; ``DATABASE_URL`` and ``MQTT_URL`` also without the prefix), the
add-on's options file (``/data/options.json``, or ``HSI_OPTIONS_FILE``), defaults.
Every field is documented in ``docs/configuration.md``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

#: Classes a security camera cares about, in COCO naming. Other classes of a COCO model are dropped.
SECURITY_CLASSES: tuple[str, ...] = (
    "person",
    "bicycle",
    "car",
    "motorcycle",
    "bus",
    "truck",
    "boat",
    "bird",
    "cat",
    "dog",
    "horse",
    "sheep",
    "cow",
    "bear",
    "backpack",
    "handbag",
    "suitcase",
    "knife",
)

DEFAULT_OPTIONS_FILE = Path("/data/options.json")


class OptionsFileSource(PydanticBaseSettingsSource):
    """Reads the Home Assistant add-on options (a flat JSON object keyed by field name)."""

    def __init__(self, settings_cls: type[BaseSettings]) -> None:
        super().__init__(settings_cls)
        path = Path(os.environ.get("HSI_OPTIONS_FILE", str(DEFAULT_OPTIONS_FILE)))
        self._values: dict[str, Any] = {}
        if path.is_file():
            loaded = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(loaded, dict):
                raise ValueError(f"{path} must hold a JSON object, got {type(loaded).__name__}")
            known = set(settings_cls.model_fields)
            # The add-on's schema leaves optional values empty ("", {}): empty means "not set".
            self._values = {k: v for k, v in loaded.items() if k in known and v not in (None, "", {}, [])}

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self._values.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._values)


class FtpUser(BaseModel):
    """One login of the built-in FTP receiver."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    username: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")
    password: SecretStr = Field(min_length=8, description="At least 8 characters.")
    camera: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9._ -]+$",
        description="Camera folder this user is jailed in; unset: the cameras folder, one subfolder per camera.",
    )


class LlmSettings(BaseModel):
    """Settings of the LLM phase (``HSI_LLM__BACKEND``, ``HSI_LLM__MODEL_PATH``, ... or ``llm`` in options.json)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    backend: str = Field(default="llamacpp", description="llamacpp (in process) or openai (HTTP server).")
    model_path: Path | None = Field(default=None, description="GGUF file (llamacpp).")
    base_url: str | None = Field(
        default=None, description="OpenAI-compatible server root, e.g. http://127.0.0.1:8080 (a /v1 suffix is fine)."
    )
    model: str | None = Field(
        default=None, description="Model name sent to the server (openai) and recorded on events; llamacpp: file stem."
    )
    api_key: SecretStr | None = Field(
        default=None, description="Bearer token for the server (openai), if it wants one."
    )
    timeout_s: float = Field(default=30.0, gt=0, description="Limit of one LLM request.")
    max_concurrency: int = Field(default=1, ge=1, le=64, description="LLM requests in flight at once.")
    circuit_failures: int = Field(default=3, ge=1, description="Consecutive failures that open the circuit.")
    circuit_reset_s: float = Field(default=60.0, gt=0, description="Open circuit: wait this long, then try once.")
    response_format: Literal["json_schema", "json_object"] = Field(
        default="json_schema",
        description="How the schema is sent (openai): json_schema for llama.cpp's llama-server, vLLM and Ollama;"
        " json_object for llama-cpp-python's server (python -m llama_cpp.server).",
    )
    n_ctx: int = Field(default=4096, ge=512, description="Context window in tokens (llamacpp).")
    kv_cache_type: Literal["f16", "q8_0"] = Field(
        default="q8_0",
        description="Precision of the KV cache (llamacpp): q8_0 holds the context in about half the memory of"
        " f16 (-42 MB at n_ctx 4096 for SmolLM2-135M, far more for a 3-8 B model) at the same speed, with"
        " flash attention on; f16 for a build whose flash attention is missing.",
    )
    n_threads: int | None = Field(default=None, ge=1, description="CPU threads (llamacpp); unset: half the cores.")
    n_gpu_layers: Literal["auto"] | int = Field(
        default="auto",
        description="Layers offloaded to the GPU (llamacpp): auto = all if the build can, else 0; -1 = all.",
    )
    max_tokens: int = Field(default=512, ge=64, description="Most tokens the LLM may generate per answer.")
    temperature: float = Field(default=0.2, ge=0, le=2)
    max_adjust: int = Field(
        default=25,
        ge=0,
        le=100,
        description="Most points the LLM may raise the rules score (lowering needs a reason the server can"
        " check, none yet): a confused model cannot silence a critical alert nor invent one.",
    )
    vision: Literal["auto"] | bool = Field(
        default="auto",
        description="Send the event's key frames to the model: auto = when the backend says the model can see"
        " (llama-server's /props, an mmproj_path in process), true = always, false = text only.",
    )
    max_images: int = Field(default=3, ge=1, le=8, description="Most key frames sent per event (vision).")
    image_max_px: int = Field(
        default=768, ge=128, le=4096, description="Long side of a key frame sent to the model, in pixels (vision)."
    )
    mmproj_path: Path | None = Field(
        default=None,
        description="Multimodal projector GGUF (llamacpp): with it the in-process model sees the key frames.",
    )
    chat_handler: Literal["mtmd", "qwen25vl", "gemma4", "llava15", "llava16", "minicpmv26", "moondream"] = Field(
        default="mtmd",
        description="llama-cpp-python multimodal chat handler used with mmproj_path (mtmd: the model's own"
        " chat template).",
    )


_URL_FIELDS = frozenset({"database_url", "mqtt_url"})


def redact_url(url: str) -> str:
    """``scheme://user:***@host/...``: a URL fit for logs (the password, if any, masked)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


class Settings(BaseSettings):
    """All settings of the inference server."""

    model_config = SettingsConfigDict(
        env_prefix="HSI_", extra="ignore", populate_by_name=True, env_nested_delimiter="__"
    )

    # --- paths -------------------------------------------------------------------------
    data_dir: Path = Field(default=Path("hsi-data"), description="Root for database, images, snapshots.")
    cameras_dir: Path | None = Field(
        default=None, description="Folder with one sub-folder per camera (default <data_dir>/cameras)."
    )

    # --- backing services ----------------------------------------------------------------
    database_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("database_url", "HSI_DATABASE_URL", "DATABASE_URL"),
        description="External PostgreSQL; unset starts the embedded PostgreSQL under <data_dir>/postgres.",
    )
    db_pool_size: int = Field(
        default=12,
        ge=2,
        le=100,
        description="Up to 3 held LISTEN connections, store_concurrency stores, and room for claims, the relay, "
        "the batch closer and the API.",
    )
    mqtt_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("mqtt_url", "HSI_MQTT_URL", "MQTT_URL"),
        description="mqtt://user:pass@host:port; unset starts an in-process broker on 127.0.0.1.",
    )
    mqtt_embedded_port: int = Field(default=1883, ge=0, le=65535)
    mqtt_prefix: str = Field(default="hsi", pattern=r"^[A-Za-z0-9_\-/]+$")
    mqtt_client_id: str | None = None

    # --- API ----------------------------------------------------------------------------
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8765, ge=0, le=65535)
    public_url: str | None = Field(default=None, description="URL announced on hsi/discovery.")

    # --- ingest -------------------------------------------------------------------------
    watch_polling: bool = Field(default=False, description="Poll the cameras folder (network shares).")
    watch_poll_interval_s: float = Field(default=1.0, gt=0)
    mqtt_ingest_enabled: bool = Field(default=True, description="Subscribe to <prefix>/ingest/+.")
    mqtt_ingest_queue: int = Field(
        default=16,
        ge=1,
        le=1024,
        description="Images waiting for validation; when full, reading from the broker pauses.",
    )

    # --- FTP receiver (cameras upload here directly) ----------------------------------------
    ftp_enabled: bool = False
    ftp_host: str = "0.0.0.0"
    ftp_port: int = Field(default=2121, ge=0, le=65535, description="0: any free port (tests).")
    ftp_passive_ports: str = Field(default="30000-30009", pattern=r"^\d{1,5}(-\d{1,5})?$")
    ftp_users: list[FtpUser] = Field(default_factory=list)
    ftp_tls_cert: Path | None = Field(default=None, description="PEM certificate: FTPS (explicit AUTH TLS) required.")
    ftp_tls_key: Path | None = Field(default=None, description="PEM key, if not inside the certificate file.")
    ftp_max_connections: int = Field(
        default=256, ge=8, le=4096, description="Open sockets of the FTP receiver in all (control and data)."
    )
    ftp_max_connections_per_ip: int = Field(
        default=8, ge=1, le=1024, description="Control connections from one source address."
    )
    ftp_login_timeout_s: float = Field(
        default=15, gt=0, le=300, description="A connection that has not logged in by then is closed."
    )
    ftp_idle_timeout_s: float = Field(
        default=300, gt=0, le=3600, description="A logged-in session that sends no command for this long is closed."
    )
    file_stable_s: float = Field(
        default=0.5, ge=0, description="A file is complete once its size and mtime hold for this long."
    )
    camera_timezone: str = Field(
        default_factory=lambda: os.environ.get("TZ") or "UTC",
        description="Time zone of the timestamps cameras put in file names.",
    )
    max_image_bytes: int = Field(default=20 * 1024 * 1024, gt=0)
    max_image_pixels: int = Field(default=40_000_000, gt=0)
    min_image_side: int = Field(default=32, gt=0)
    max_image_aspect_ratio: float = Field(
        default=20.0, ge=1, description="Longest side over shortest: a longer strip is refused (bad_aspect_ratio)."
    )
    decode_memory_mb: int = Field(
        default=512,
        ge=64,
        description="Decoded pixels held at once by all image decodes (ingest checks and detection); "
        "a decode waits for its share. One image larger than this decodes alone.",
    )
    decode_picture_cache_mb: int = Field(
        default=32,
        ge=0,
        le=8192,
        description="The detect worker's decoded pictures kept for reuse while images flow: a JPEG is decoded"
        " straight into one (with the fixed mmap threshold each was otherwise a fresh mapping whose pages are"
        " faulted in again: docs/performance.md). Given back once the queue has been dry for"
        " ``buffers_idle_s``; 0: off. Large batches of large frames want a batch's pictures in it (batch size x"
        " 6 MB a 1080p frame).",
    )
    buffers_idle_s: float = Field(
        default=10.0,
        ge=0,
        le=3600,
        description="Seconds the job queue stays dry before the detect worker gives back the memory it reuses"
        " (decoded pictures, model inputs, snapshot canvases, ONNX Runtime's arenas: one blank run of the model"
        " each time). A camera sending a picture a second keeps it; given back after every picture, each would"
        " fault its pages in afresh (docs/performance.md).",
    )
    # --- video clips (.mp4 .mkv .avi .mov) and tampering (issue 19) -----------------------
    clip_max_bytes: int = Field(default=64 * 1024 * 1024, gt=0, description="Largest clip accepted (file or upload).")
    clip_max_duration_s: float = Field(
        default=120, gt=0, description="Longest clip, declared or decoded: a longer (or endless) one is refused."
    )
    clip_max_frames: int = Field(default=8, ge=1, le=64, description="Most frames sampled from one clip.")
    clip_decode_timeout_s: float = Field(default=30, gt=0, description="A clip still decoding after this is refused.")
    clip_analysis_fps: float = Field(
        default=5, gt=0, le=60, description="Frames a second compared for motion when sampling a clip."
    )
    clip_motion_threshold: float = Field(
        default=2.0,
        ge=0,
        description="Mean grey difference (0-255) to the frame compared before it from which a frame counts as motion.",
    )
    tamper_enabled: bool = Field(
        default=True, description="Watch each camera's view for covering, blinding, moving, blur."
    )
    tamper_learn_frames: int = Field(
        default=8, ge=1, description="Images a camera's scene is learned from before tampering is judged."
    )
    tamper_trigger_frames: int = Field(
        default=3, ge=1, description="Consecutive tampered-looking images that raise the tamper state."
    )
    tamper_clear_frames: int = Field(
        default=3, ge=1, description="Consecutive normal-looking images that clear it again."
    )
    tamper_check_interval_s: float = Field(
        default=1.0,
        ge=0,
        description="Capture seconds between a camera's tamper checks while its view looks normal (0: every"
        " image); every image is checked while the scene is learned or looks tampered.",
    )

    # --- recognition (known people, docs/privacy.md) ------------------------------------
    embedder_backend: str = Field(default="onnx", description="Embedder backend for face and body models.")
    face_embedder_model: Path | None = Field(
        default=None, description="ONNX face descriptor (RGB NHWC 0-255 in, [N, D] out); unset: no face recognition."
    )
    body_embedder_model: Path | None = Field(
        default=None, description="ONNX body appearance model (same layout); unset: no body re-identification."
    )
    embedding_device: str = Field(default="cpu", description="cpu, or cuda (ONNX Runtime's CUDA provider if present).")
    embedding_max_people: int = Field(
        default=4, ge=1, le=64, description="People embedded per image at most (the largest first)."
    )
    embedding_max_pending: int = Field(
        default=2, ge=1, le=64, description="Images waiting for recognition beyond which an image is not embedded."
    )
    stranger_window_h: float = Field(
        default=12,
        gt=0,
        le=168,
        description="An unknown person seen again within this many hours keeps one stranger id (docs/privacy.md).",
    )
    stranger_visit_gap_s: float = Field(
        default=300, gt=0, description="Sightings of a stranger further apart than this count as separate visits."
    )

    # --- jobs ---------------------------------------------------------------------------
    job_lease_s: float = Field(default=60.0, gt=0)
    job_max_attempts: int = Field(default=5, ge=1)
    job_backoff_base_s: float = Field(default=2.0, gt=0)
    job_backoff_max_s: float = Field(default=300.0, gt=0)
    job_poll_interval_s: float = Field(
        default=10.0,
        gt=0,
        description="The detect worker's look for claimable jobs nobody announced (a notification missed, "
        "another process's retry). New jobs, retries of this process (when their delay runs out), "
        "reaped leases and a LISTEN connection made again wake it at once. Was 1 s: a statement a second all day.",
    )
    role: Literal["all", "api", "worker"] = "all"

    # --- detection ----------------------------------------------------------------------
    detector_backend: str = "ultralytics"
    detector_weights: Path = Field(default=Path("yolo11n.pt"))
    detector_device: str = Field(default="auto", description="auto, cpu, cuda, cuda:0, mps")
    detector_confidence: float = Field(default=0.40, gt=0, lt=1)
    detector_imgsz: int = Field(default=640, ge=32)
    detector_decode_fit: Literal["cover", "letterbox"] = Field(
        default="cover",
        description="cover: decode pictures with both sides at detector_imgsz or more (snapshots are drawn"
        " from them); letterbox: only the longer side (a 16:9 frame at half the pixels: less CPU per image,"
        " but a snapshot is drawn from the file again). Recognition (face crops) always uses cover.",
    )
    detector_onnx_spin: bool = Field(
        default=False,
        description="ONNX Runtime on the CPU (the onnx backend, and ultralytics running an .onnx): let its"
        " threads spin while they wait for work (the runtime's"
        " default). Off: they sleep at once, leaving that CPU to the server's other stages (docs/performance.md).",
    )
    detector_onnx_threads: int = Field(
        default=0,
        ge=0,
        le=256,
        description="ONNX Runtime on the CPU (the onnx backend, and ultralytics running an .onnx): 0 runs each"
        " inference on one thread and"
        " splits a batch into as many runs at once as the server has CPUs (the least CPU per image;"
        " docs/performance.md); N lets the runtime spread each run over its own N threads (a lone"
        " picture's answer sooner on a large CPU, for more CPU per image).",
    )
    outbox_gather_ms: float = Field(
        default=10.0,
        ge=0,
        le=1000,
        description="Once woken by a commit, the MQTT relay waits this long before it sends, so that the stores"
        " of one inferred batch (a transaction per camera) go out in one pass (4 statements) instead of one"
        " pass each. Adds at most this much to an alert's latency; 0: send at once.",
    )
    malloc_arena_max: int = Field(
        default=2,
        ge=0,
        le=64,
        description="glibc malloc arenas for the server's threads (0: glibc's default, 8 per core). Each busy"
        " thread otherwise gets an arena of its own that keeps what it once held: 2 saves 30-50 MB of RSS"
        " (docs/performance.md). The MALLOC_ARENA_MAX environment variable, when set, wins.",
    )
    malloc_mmap_threshold_kb: int = Field(
        default=1024,
        ge=0,
        le=32768,
        description="Allocations this large or larger (decoded pictures, tensors, batches) get their own"
        " mapping, returned to the system when freed (0: glibc's default, a threshold that rises to the"
        " largest block freed). Keeps the RSS from ratcheting with a backlog (444 -> 368 MB at 7,000 queued) for"
        " 3-4 ms more CPU per image (docs/performance.md). The MALLOC_MMAP_THRESHOLD_ environment variable,"
        " when set, wins.",
    )
    malloc_trim_threshold_kb: int = Field(
        default=8192,
        ge=0,
        le=262144,
        description="Free memory kept at the top of each malloc heap for the next picture's work rather than"
        " given back to the system at once (0: glibc's default, 128 KiB once the mmap threshold is fixed,"
        " which gave back and faulted in again every grey copy and NumPy temporary between that and the mmap"
        " threshold: docs/performance.md). At most this much per arena is kept beyond what is in use. The"
        " MALLOC_TRIM_THRESHOLD_ environment variable, when set, wins.",
    )
    detector_tensor_cache_mb: int = Field(
        default=32,
        ge=0,
        le=4096,
        description="The detector's letterboxed input tensors and batches kept for reuse while images flow (the"
        " onnx backend): with the fixed mmap threshold each one was otherwise a fresh mapping whose pages are"
        " faulted in again (200-770 page faults an image fewer, docs/performance.md). Given back once the"
        " queue has been dry for ``buffers_idle_s``; 0: off. A GPU box with large batches wants a batch's"
        " tensors in it (batch size x 5 MB at 640).",
    )
    detector_batch_size: int = Field(default=4, ge=1, le=256)
    detector_batch_wait_ms: float = Field(
        default=5.0, ge=0, le=1000, description="A batch short of detector_batch_size waits this long for more jobs."
    )
    detector_runtime: Literal["auto", "pytorch", "tensorrt", "onnx", "openvino"] = Field(
        default="auto", description="auto: TensorRT on an NVIDIA GPU when installed, else .pt; ONNX Runtime on CPU."
    )
    detector_half: bool | None = Field(default=None, description="fp16; unset: on for GPUs, off on CPU.")
    detector_decode_threads: int = Field(
        default=0, ge=0, le=64, description="JPEG decode threads; 0: one per core, at most 8."
    )
    store_concurrency: int = Field(
        default=4,
        ge=1,
        le=64,
        description="Results of different cameras stored at once (each its own transaction); "
        "one camera's images stay in order. Keep db_pool_size above it by 4 or more.",
    )
    tensorrt_workspace_gb: float = Field(
        default=4.0, gt=0, description="TensorRT builder workspace when exporting an engine."
    )
    vram_budget_mb: float | None = Field(
        default=None, gt=0, description="GPU memory the server's models may use; unset: whatever is free."
    )
    # NoDecode: the environment gives a comma-separated list (HSI_DETECT_CLASSES=person,car), not JSON.
    detect_classes: Annotated[list[str], NoDecode] = Field(default_factory=lambda: list(SECURITY_CLASSES))

    # --- batching, fast path --------------------------------------------------------------
    batch_window_s: float = Field(default=90, gt=0, description="Longest a camera's activity batch stays open.")
    batch_idle_s: float = Field(
        default=60,
        gt=0,
        description="A batch closes after this long without detections. Cameras send motion snapshots "
        "every 30 s or so while someone is about: 60 s keeps one visit one event (issue 16).",
    )
    event_max_s: float = Field(
        default=600,
        gt=0,
        description="Longest an event lasts: activity that outlasts a batch window continues the same event "
        "until it goes idle or reaches this length, after which a new event starts.",
    )
    snapshot_publish_interval_s: float = Field(
        default=5.0,
        ge=0,
        description="Shortest time between two hsi/cameras/<id>/snapshot messages of one camera (per worker) "
        "showing the same objects (labels and counts); an image that shows other objects than the last "
        "snapshot, or opens or rescores an event, is always published. 0: every image.",
    )
    fast_path: Annotated[dict[str, float], NoDecode] = Field(
        default_factory=lambda: {"person": 0.90},
        description="label:confidence pairs that open an event at once instead of waiting for the batch.",
    )
    alert_open_level: Literal["low", "medium", "high", "critical"] = Field(
        default="high",
        description="An activity the rules judge at this level or above opens its event at once (type new), "
        "whatever the detector's confidence; lower levels wait for the batch to close.",
    )

    # --- reasoning ----------------------------------------------------------------------
    llm: LlmSettings | None = Field(
        default=None, description="The LLM phase (unset: rules only). HSI_LLM__BACKEND=llamacpp|openai, ..."
    )
    risk_medium: int = Field(default=30, ge=1, le=100)
    risk_high: int = Field(default=60, ge=1, le=100)
    risk_critical: int = Field(default=85, ge=1, le=100)

    # --- digest (issue 19) ------------------------------------------------------------------
    digest_enabled: bool = Field(default=True, description="Send the scheduled digest on hsi/digest.")
    digest_at: str = Field(
        default="07:00",
        pattern=r"^([01]\d|2[0-3]):[0-5]\d$",
        description="When the scheduled digest is sent (HH:MM in camera_timezone); its period ends then.",
    )
    digest_from: str = Field(
        default="22:00",
        pattern=r"^([01]\d|2[0-3]):[0-5]\d$",
        description="Start of the scheduled digest's period (HH:MM in camera_timezone); later than digest_at:"
        " the evening before (22:00 to 07:00, the night); equal: the whole 24 hours before.",
    )
    digest_llm: bool = Field(
        default=True, description="Ask the configured LLM (if any) to write the digest's prose; else rules text."
    )
    digest_llm_timeout_s: float = Field(default=60.0, gt=0, description="Limit of the LLM's digest prose.")

    # --- API, auth, retention --------------------------------------------------------------
    trusted_proxies: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Client addresses trusted without an API key (the add-on: Supervisor ingress, 172.30.32.2).",
    )
    auth_failures_per_minute: int = Field(
        default=10, ge=1, description="Failed authentications per client per minute before 429."
    )
    upload_max_bytes: int = Field(default=20 * 1024 * 1024, gt=0, description="Largest accepted upload body.")
    api_header_timeout_s: float = Field(
        default=10, gt=0, description="A request's line and headers must arrive within this long, else 408."
    )
    api_body_timeout_s: float = Field(
        default=20, gt=0, description="A request body gets this long, plus 1 s per api_body_min_rate bytes received."
    )
    api_body_min_rate: float = Field(
        default=1024, gt=0, description="Bytes per second a request body must keep up after api_body_timeout_s."
    )
    retention_days: float = Field(
        default=14, gt=0, description="Images, snapshots, detections and quarantine kept this long."
    )
    event_retention_days: float = Field(default=90, gt=0, description="Events kept this long.")
    digest_retention_days: float = Field(
        default=90,
        gt=0,
        description="Digests (scheduled and on demand) kept this long; the latest scheduled ones are kept"
        " at least 2 days whatever this says, so a restarted server never sends a night again.",
    )
    retention_interval_s: float = Field(default=3600, gt=0, description="How often the retention cleanup runs.")
    status_interval_s: float = Field(default=10, gt=0, description="How often hsi/status is published.")

    # --- process ------------------------------------------------------------------------
    event_loop: Literal["uvloop", "asyncio"] = Field(
        default="uvloop",
        description="The process's event loop: uvloop (asyncio's own where it is not installed, a fallback"
        " the log and the status name), or asyncio's own.",
    )

    # --- logging ------------------------------------------------------------------------
    log_level: str = "INFO"
    log_format: Literal["text", "json"] = "text"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, OptionsFileSource(settings_cls)

    @field_validator("detect_classes", "trusted_proxies", mode="before")
    @classmethod
    def _split_classes(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("fast_path", mode="before")
    @classmethod
    def _parse_fast_path(cls, value: Any) -> Any:
        if isinstance(value, str):
            pairs: dict[str, float] = {}
            for part in (p.strip() for p in value.split(",")):
                if not part:
                    continue
                label, sep, threshold = part.partition(":")
                if not sep:
                    raise ValueError(f"fast_path entries are label:confidence, got {part!r}")
                pairs[label.strip()] = float(threshold)
            return pairs
        return value

    @model_validator(mode="after")
    def _check_levels(self) -> Settings:
        if not self.risk_medium < self.risk_high < self.risk_critical:
            raise ValueError("risk thresholds must satisfy risk_medium < risk_high < risk_critical")
        return self

    def __repr_args__(self) -> Any:
        # repr(settings) ends up in logs and bug reports: no passwords from the URLs.
        for name, value in super().__repr_args__():
            yield name, redact_url(value) if name in _URL_FIELDS and isinstance(value, str) else value

    @property
    def cameras_path(self) -> Path:
        return self.cameras_dir if self.cameras_dir is not None else self.data_dir / "cameras"

    @property
    def images_path(self) -> Path:
        return self.data_dir / "images"

    @property
    def clips_path(self) -> Path:
        return self.data_dir / "clips"

    @property
    def snapshots_path(self) -> Path:
        return self.data_dir / "snapshots"

    @property
    def quarantine_path(self) -> Path:
        return self.data_dir / "quarantine"

    @property
    def postgres_path(self) -> Path:
        return self.data_dir / "postgres"
