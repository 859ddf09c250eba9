"""compose.yaml: parsed by Docker Compose itself (no engine needed), and naming only what
exists — the add-on's Dockerfile, the image the add-on publishes, the server's settings."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from inference_server import __version__
from inference_server.config import Settings

ROOT = Path(__file__).resolve().parents[2]


def _compose_command() -> list[str]:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True, check=False).returncode == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    assert legacy, "neither 'docker compose' nor 'docker-compose' is installed (scripts/test installs docker-compose)"
    return [legacy]


def _config(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*_compose_command(), "-f", str(ROOT / "compose.yaml"), "config"],
        cwd=ROOT,
        env={"PATH": os.environ["PATH"], **env},
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def test_compose_file_parses_and_refuses_to_start_without_a_database_password() -> None:
    missing = _config({})
    assert missing.returncode != 0 and "HSI_DB_PASSWORD" in missing.stderr
    result = _config({"HSI_DB_PASSWORD": "test-password"})
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = yaml.safe_load(result.stdout)
    services = config["services"]
    assert set(services) == {"server", "postgres", "mosquitto"}
    for name, service in services.items():
        assert "healthcheck" in service, f"{name} has no healthcheck"
    # The server's probe must be a route that answers without an API key.
    assert services["server"]["healthcheck"]["test"][-1].endswith("/api/v1/health/live")
    server = services["server"]
    assert (ROOT / server["build"]["context"] / server["build"]["dockerfile"]).is_file()
    assert server["image"] == f"ghcr.io/home-security-intelligence/amd64-hsi:{__version__}"
    addon_image = yaml.safe_load((ROOT / "addon" / "config.yaml").read_text(encoding="utf-8"))["image"]
    assert server["image"].split(":")[0] == addon_image.replace("{arch}", "amd64")
    devices = server["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    env = server["environment"]
    assert env["DATABASE_URL"] == "postgresql://hsi:test-password@postgres:5432/hsi"
    for name in env:
        if name in ("DATABASE_URL", "MQTT_URL"):
            continue
        assert name.startswith("HSI_") and name[4:].lower() in Settings.model_fields, f"{name} is no server setting"
    depends = server["depends_on"]
    assert {k: v["condition"] for k, v in depends.items()} == {
        "postgres": "service_healthy",
        "mosquitto": "service_healthy",
    }
    named = {v.split(":")[0] for s in services.values() for v in _volume_sources(s)}
    assert {"hsi-data", "hsi-postgres", "hsi-mosquitto"} <= named | set(config["volumes"])


def _volume_sources(service: dict[str, Any]) -> list[str]:
    out = []
    for volume in service.get("volumes", []):
        out.append(volume if isinstance(volume, str) else str(volume.get("source", "")))
    return out
