"""A real HSI server for the integration's tests: a subprocess of the server's own environment
(.venv, Python 3.11), with embedded PostgreSQL and its in-process broker, the real YOLO weights.
The integration never imports the server: it only talks to this process over HTTP."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.net import free_port

ROOT = Path(__file__).resolve().parents[2]
SERVER_PYTHON = ROOT / ".venv" / "bin" / "python"


def server_file(expression: str) -> Path:
    """A path the server's environment knows (e.g. its real test images), asked of it."""
    out = subprocess.run(
        [str(SERVER_PYTHON), "-c", f"from inference_server import demo_assets; print({expression})"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "YOLO_OFFLINE": "1"},
    )
    return Path(out.stdout.strip())


@dataclass
class RealServer:
    url: str
    api_key: str
    data_dir: Path
    process: subprocess.Popen[bytes]

    @property
    def cameras(self) -> Path:
        return self.data_dir / "cameras"

    def add_damaged_image(self, camera_id: str, data: bytes) -> None:
        """An image that went bad in the server's image store after it was accepted (the door
        refuses a corrupt upload, so only the store can hold one): its row and job are written
        into the server's own database by the server's environment (tests.server.conftest)."""
        log = (self.data_dir / "server.log").read_text(errors="replace")
        dsn = log.split("embedded postgres ready", 1)[1].split("uri=", 1)[1].split()[0]
        path = self.data_dir / "images" / camera_id / "damaged" / "MDAlarm_20261124-020000.jpg"
        script = (
            "import asyncio, sys, asyncpg\n"
            "from pathlib import Path\n"
            "from tests.server.conftest import enqueue_stored\n"
            "async def main():\n"
            "    db = await asyncpg.connect(sys.argv[1])\n"
            "    try:\n"
            "        await enqueue_stored(db, sys.argv[2], Path(sys.argv[3]), sys.stdin.buffer.read())\n"
            "    finally:\n"
            "        await db.close()\n"
            "asyncio.run(main())\n"
        )
        subprocess.run(
            [str(SERVER_PYTHON), "-c", script, dsn, camera_id, str(path)],
            input=data,
            cwd=ROOT,
            capture_output=True,
            check=True,
            timeout=120,
        )

    def add_events(self, events: list[dict[str, Any]]) -> list[str]:
        """Events written into the server's database as its pipeline writes them (store.events.insert,
        cameras created as needed): each dict has camera_id, camera_name, started_at (ISO), score,
        level, summary and objects, and may have snapshot_path (a JPEG file). Their ids, in order."""
        log = (self.data_dir / "server.log").read_text(errors="replace")
        dsn = log.split("embedded postgres ready", 1)[1].split("uri=", 1)[1].split()[0]
        script = (
            "import asyncio, json, sys, uuid\n"
            "from datetime import datetime\n"
            "from inference_server.domain import Assessment\n"
            "from inference_server.store import events\n"
            "from inference_server.store.db import create_pool\n"
            "async def main():\n"
            "    pool = await create_pool(sys.argv[1], 2)\n"
            "    ids = []\n"
            "    try:\n"
            "        for e in json.load(sys.stdin):\n"
            "            await pool.execute('INSERT INTO cameras (id, name) VALUES ($1, $2) ON CONFLICT DO NOTHING',"
            " e['camera_id'], e['camera_name'])\n"
            "            a = Assessment(e['score'], e['level'], e['summary'], 'why', [], 'rules', 'rules-v2',"
            " e['objects'])\n"
            "            event_id = uuid.uuid4()\n"
            "            async with pool.acquire() as conn:\n"
            "                await events.insert(conn, event_id=event_id, camera_id=e['camera_id'], image_id=None,"
            " batch_id=None, started_at=datetime.fromisoformat(e['started_at']), assessment=a, is_fast_path=False,"
            " snapshot_path=e.get('snapshot_path'), context=None, llm_pending=False)\n"
            "            ids.append(str(event_id))\n"
            "    finally:\n"
            "        await pool.close()\n"
            "    print(json.dumps(ids))\n"
            "asyncio.run(main())\n"
        )
        out = subprocess.run(
            [str(SERVER_PYTHON), "-c", script, dsn],
            input=json.dumps(events),
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        )
        ids: list[str] = json.loads(out.stdout)
        return ids

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_server(
    data_dir: Path, mqtt_url: str | None = None, *, recognition: bool = False, extra_env: dict[str, str] | None = None
) -> RealServer:
    """``recognition``: with the real face and body embedders (known people, built by scripts/models/fetch);
    ``extra_env``: more settings (``HSI_...``), e.g. an LLM."""
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("HSI_")},
        "HSI_DATA_DIR": str(data_dir),
        "HSI_API_PORT": str(port),
        "HSI_MQTT_EMBEDDED_PORT": str(free_port()),
        "HSI_DETECTOR_WEIGHTS": str(server_file("demo_assets.pose_weights()")),
        "HSI_DETECTOR_DEVICE": "cpu",
        "HSI_DETECT_CLASSES": "person",
        "HSI_FAST_PATH": "person:0.99",
        "HSI_BATCH_IDLE_S": "0.5",
        "HSI_FILE_STABLE_S": "0.1",
        "HSI_CAMERA_TIMEZONE": "UTC",
        "YOLO_OFFLINE": "1",
        "XDG_RUNTIME_DIR": os.environ.get("XDG_RUNTIME_DIR", f"/tmp/hsi-runtime-{os.getuid()}"),
    }
    if mqtt_url is not None:
        env["MQTT_URL"] = mqtt_url
    if recognition:
        env["HSI_FACE_EMBEDDER_MODEL"] = str(server_file("demo_assets.embedder_model('face')"))
        env["HSI_BODY_EMBEDDER_MODEL"] = str(server_file("demo_assets.embedder_model('body')"))
    env |= extra_env or {}
    Path(env["XDG_RUNTIME_DIR"]).mkdir(mode=0o700, exist_ok=True)
    # The key first: the CLI opens the same embedded database, which must not be running yet.
    key = subprocess.run(
        [str(SERVER_PYTHON), "-m", "inference_server", "apikey", "create", "homeassistant"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout.strip()
    log = (data_dir / "server.log").open("wb")
    process = subprocess.Popen(
        [str(SERVER_PYTHON), "-m", "inference_server", "serve"], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        try:
            with urllib.request.urlopen(f"{url}/api/v1/health/live", timeout=2) as resp:
                if resp.status == 200:
                    break
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"server did not start; log: {(data_dir / 'server.log').read_text()[-3000:]}")
        time.sleep(0.3)
    return RealServer(url, key, data_dir, process)
