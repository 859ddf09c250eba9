"""The add-on repository: a valid config.yaml whose options are the server's own settings,
documented and translated, lint-clean Dockerfile and s6 scripts, and valid YAML everywhere."""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web

from inference_server import __version__
from inference_server.__main__ import STOP_WATCHDOG_S
from inference_server.api.app import build_app  # noqa: F401  (registers every route)
from inference_server.api.openapi import openapi
from inference_server.config import FtpUser, LlmSettings, Settings
from tests.support.fake_supervisor import SLUG, FakeSupervisor
from tests.support.fake_supervisor import TOKEN as FAKE_TOKEN
from tests.support.net import free_port

ROOT = Path(__file__).resolve().parents[2]
ADDON = ROOT / "addon"
BIN = Path(sys.executable).parent
S6 = ADDON / "rootfs" / "etc" / "s6-overlay" / "s6-rc.d"
PG_BIN = ADDON / "rootfs" / "usr" / "local" / "bin" / "hsi-pg-bin"
#: The add-on's steps: each s6 service runs one (``exec hsi-addon <step>``).
ENTRY = ADDON / "rootfs" / "usr" / "local" / "bin" / "hsi-addon"


def _config() -> dict[str, Any]:
    loaded = yaml.safe_load((ADDON / "config.yaml").read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


def _optional(schema_value: Any) -> bool:
    return isinstance(schema_value, str) and schema_value.endswith("?")


def test_config_names_the_addon_consistently_with_the_package() -> None:
    config = _config()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert config["slug"] == "home_security_intelligence"
    assert config["version"] == project["version"] == __version__
    assert config["services"] == ["mqtt:need"]
    assert config["discovery"] == ["home_security_intelligence"]
    assert config["init"] is False and config["hassio_api"] is True and config["ingress"] is True
    assert config["ingress_port"] == Settings.model_fields["api_port"].default
    # "Open Web UI" lands on the server's own page (status, events, links: api/ui.py).
    assert config["ingress_entry"] == "api/v1/ui" and "/" + config["ingress_entry"] in openapi()["paths"]
    assert set(config["arch"]) >= {"amd64", "aarch64"}
    repository = yaml.safe_load((ROOT / "repository.yaml").read_text(encoding="utf-8"))
    assert {"name", "url", "maintainer"} <= set(repository)
    for image in ("icon.png", "logo.png"):
        assert (ADDON / image).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_supervisor_and_compose_wait_longer_for_a_stop_than_the_server_may_take() -> None:
    """Supervisor kills an add-on 10 s after SIGTERM unless ``timeout`` says otherwise (10 to 300),
    s6-overlay its services after 3 s unless ``S6_SERVICES_GRACETIME`` does, Docker compose after
    10 s unless ``stop_grace_period`` does: the server may take up to its
    watchdog, and PostgreSQL stops after it (in the add-on, as an s6 service of the container)."""
    timeout = _config()["timeout"]
    assert 10 <= timeout <= 300, "outside the Supervisor's range"
    assert timeout >= STOP_WATCHDOG_S + 10
    # s6-overlay's own limit for the services' stop (its default is 3 s), inside the Supervisor's,
    # with room for s6's final kill grace (3 s by default).
    s6 = re.search(r"S6_SERVICES_GRACETIME=(\d+)", (ADDON / "Dockerfile").read_text(encoding="utf-8"))
    assert s6 is not None, "the add-on's image leaves s6-overlay's 3 s stop limit"
    assert STOP_WATCHDOG_S * 1000 < int(s6.group(1)) <= (timeout - 3) * 1000
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text(encoding="utf-8"))
    grace = compose["services"]["server"]["stop_grace_period"]
    assert grace.endswith("s") and int(grace[:-1]) > STOP_WATCHDOG_S


def test_every_option_has_a_schema_entry_and_every_required_one_a_default() -> None:
    config = _config()
    options, schema = config["options"], config["schema"]
    assert set(options) <= set(schema), set(options) - set(schema)
    for key, value in schema.items():
        if not _optional(value):
            assert key in options, f"{key} is required by the schema but has no default"


def test_every_option_is_a_server_setting_documented_and_translated() -> None:
    config = _config()
    docs = (ADDON / "DOCS.md").read_text(encoding="utf-8")
    translations = yaml.safe_load((ADDON / "translations" / "en.yaml").read_text(encoding="utf-8"))
    for key in config["schema"]:
        # The server reads /data/options.json itself: an option is a Settings field or nothing.
        assert key in Settings.model_fields, f"option {key} is not a server setting"
        assert f"`{key}`" in docs, f"option {key} is not in DOCS.md"
        entry = translations["configuration"].get(key)
        assert entry and entry.get("name") and entry.get("description"), f"option {key} is not translated"
    for port in config["ports"]:
        assert port in translations["network"], f"port {port} has no description"
    # Default paths, and the TLS files DOCS.md suggests, lie in folders the add-on maps.
    mapped_folders = {m["type"] for m in config["map"]}
    paths = [v for v in config["options"].values() if isinstance(v, str) and v.startswith("/")]
    for path in [*paths, "/ssl/fullchain.pem"]:
        # The detector model ships in the image (/opt/hsi/models, built by addon/Dockerfile).
        in_image = path.startswith("/opt/hsi/models/")
        assert in_image or path.split("/")[1] in mapped_folders, f"{path} is outside the add-on's mapped folders"
    assert "/ssl/fullchain.pem" in docs
    # The FTP passive range and the mapped ports agree.
    low, high = (int(p) for p in config["options"]["ftp_passive_ports"].split("-"))
    mapped = {int(p.split("/")[0]) for p in config["ports"]}
    assert set(range(low, high + 1)) | {config["options"]["ftp_port"]} <= mapped


def test_options_file_reaches_the_server_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = _config()
    options = dict(config["options"])
    # Values a user would fill in for the optional entries too.
    options |= {
        "detector_batch_size": 16,
        "vram_budget_mb": 6000,
        "ftp_users": [{"username": "porch", "password": "camera-pass-1", "camera": "porch"}],
        "ftp_tls_cert": "/ssl/fullchain.pem",
        "ftp_tls_key": "/ssl/privkey.pem",
        "llm": {"backend": "openai", "base_url": "http://192.168.1.5:11434", "model": "qwen2.5:3b"},
    }
    assert set(options) == set(config["schema"])
    path = tmp_path / "options.json"
    path.write_text(json.dumps(options), encoding="utf-8")
    for name in list(__import__("os").environ):
        if name.startswith("HSI_") or name in ("DATABASE_URL", "MQTT_URL"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HSI_OPTIONS_FILE", str(path))
    settings = Settings()
    expected: dict[str, Any] = {
        "cameras_dir": Path(options["cameras_dir"]),
        "detector_weights": Path(options["detector_weights"]),
        "fast_path": {"person": 0.9},
        "ftp_users": [FtpUser(username="porch", password="camera-pass-1", camera="porch")],  # type: ignore[arg-type]
        "ftp_tls_cert": Path("/ssl/fullchain.pem"),
        "ftp_tls_key": Path("/ssl/privkey.pem"),
        "llm": LlmSettings(backend="openai", base_url="http://192.168.1.5:11434", model="qwen2.5:3b"),
    }
    for key, value in options.items():
        want = expected.get(key, value)
        got = getattr(settings, key)
        if key == "ftp_users":
            assert [(u.username, u.password.get_secret_value(), u.camera) for u in got] == [
                (u.username, u.password.get_secret_value(), u.camera) for u in want
            ]
        else:
            assert got == want, key
    # The add-on's default for the LLM is an empty section: rules only.
    path.write_text(json.dumps(config["options"]), encoding="utf-8")
    assert Settings().llm is None


def test_dockerfile_passes_hadolint() -> None:
    result = subprocess.run(
        [str(BIN / "hadolint"), str(ADDON / "Dockerfile")], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _shell_scripts() -> list[Path]:
    scripts = sorted(S6.glob("*/run"))
    assert {p.parent.name for p in scripts} == {"init-hsi", "postgres", "init-database", "hsi", "discovery"}
    scripts += sorted(S6.glob("*/finish"))
    scripts += [ROOT / ".ci" / "run", *sorted((ROOT / "scripts").iterdir())]
    scripts += [ROOT / "bench" / "gpu-prepare", ROOT / "bench" / "gpu-run", PG_BIN, ENTRY]
    scripts += [ROOT / "tests" / "deploy" / "standin" / "init"]
    return [p for p in scripts if p.is_file() and p.read_text(encoding="utf-8").startswith("#!")]


def _s6_services() -> dict[str, str]:
    """Each s6-rc service of the add-on and its type (the ``user`` bundle aside)."""
    return {d.name: (d / "type").read_text().strip() for d in S6.iterdir() if d.name != "user"}


def _s6_dependencies(service: str) -> set[str]:
    folder = S6 / service / "dependencies.d"
    return {p.name for p in folder.iterdir()} if folder.is_dir() else set()


def test_s6_services_are_wired_and_every_shell_script_passes_shellcheck() -> None:
    services = _s6_services()
    oneshots = {"init-hsi", "init-database", "discovery"}
    assert services == {**dict.fromkeys(oneshots, "oneshot"), "postgres": "longrun", "hsi": "longrun"}
    for service in services:
        assert (S6 / "user" / "contents.d" / service).exists()
    assert (S6 / "hsi" / "dependencies.d" / "postgres").exists()
    scripts = _shell_scripts()
    for script in scripts:
        assert script.stat().st_mode & 0o111, f"{script} is not executable"
    # bashio scripts start with "#!/command/with-contenv bashio"; each says "shellcheck shell=bash".
    result = subprocess.run(
        [str(BIN / "shellcheck"), "-s", "bash", *map(str, scripts)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_longrun_has_a_finish_script_that_hands_over_to_the_entry_point() -> None:
    longruns = [name for name, kind in _s6_services().items() if kind == "longrun"]
    assert sorted(longruns) == ["hsi", "postgres"]
    for service in longruns:
        finish = S6 / service / "finish"
        assert finish.is_file() and finish.stat().st_mode & 0o111, f"{service} has no executable finish"
        last = finish.read_text(encoding="utf-8").strip().splitlines()[-1]
        assert last == f'exec hsi-addon finish {service} "$@"', f"{service}'s finish: {last!r}"


def _finish(service: str, tmp_path: Path, *args: str, recorded: str | None = None) -> tuple[int, str, str, bool]:
    """Run ``service``'s s6 finish script under bash as s6-overlay would, with s6's arguments, a
    FAKE halt and a FAKE container-results folder (neither exists outside s6-overlay): its exit
    status, log, the container exit code it left and whether it halted."""
    results = tmp_path / "fake-s6-results"
    results.mkdir(exist_ok=True)
    exitcode = results / "exitcode"
    if recorded is None:
        exitcode.unlink(missing_ok=True)
    else:
        exitcode.write_text(recorded + "\n")
    halted = tmp_path / "fake-halt-called"
    halted.unlink(missing_ok=True)
    fake_halt = tmp_path / "fake-halt"
    fake_halt.write_text(f"#!/bin/sh\n: > {halted}\n")
    fake_halt.chmod(0o755)
    env = {
        "PATH": f"{ENTRY.parent}:{os.environ['PATH']}",
        "HSI_S6_RESULTS_DIR": str(results),
        "HSI_S6_HALT": str(fake_halt),
    }
    script = S6 / service / "finish"
    result = subprocess.run(["bash", str(script), *args], env=env, capture_output=True, text=True, check=False)
    code = exitcode.read_text().strip() if exitcode.exists() else ""
    return result.returncode, result.stderr, code, halted.exists()


@pytest.mark.parametrize("service", ["hsi", "postgres"])
def test_a_long_run_that_dies_stops_the_addon_with_its_exit_code(service: str, tmp_path: Path) -> None:
    """Home Assistant's add-on convention for s6-overlay: a crash writes the service's code as the
    container's exit code and halts, so the add-on stops (the Supervisor shows it, its watchdog
    restarts it) instead of s6 restarting a broken service for ever; a stop by SIGTERM (s6 passes
    256 and the signal) halts with 128 + 15; another signal (an OOM kill) leaves the restart to s6;
    a clean exit halts nothing. The first failure's code is kept."""
    # Exit 0: nothing recorded, no halt.
    status, log, code, halted = _finish(service, tmp_path, "0", "0")
    assert (status, code, halted) == (0, "", False), log
    # A crash: its code becomes the container's, and the add-on halts.
    status, log, code, halted = _finish(service, tmp_path, "3", "0")
    assert (status, code, halted) == (0, "3", True), log
    assert "exited with code 3" in log and service in log
    # Stopped by SIGTERM (256, signal 15): 143, halt.
    status, log, code, halted = _finish(service, tmp_path, "256", "15")
    assert (status, code, halted) == (0, "143", True), log
    # Killed by SIGKILL (256, signal 9): s6 restarts it; nothing recorded, no halt, a warning.
    status, log, code, halted = _finish(service, tmp_path, "256", "9", recorded="0")
    assert (status, code, halted) == (0, "0", False), log
    assert "signal 9" in log
    # The other service failed first: its code stays the container's.
    status, log, code, halted = _finish(service, tmp_path, "1", recorded="2")
    assert (status, code, halted) == (0, "2", True), log


async def test_discovery_sends_only_what_supervisors_before_and_after_the_app_rename_accept(tmp_path: Path) -> None:
    """The add-on's discovery step, run on the host against the FAKE Supervisor, which checks the
    body as the Supervisor does before and after its add-on -> app rename (exactly ``service`` and
    ``config``; a body that also named ``addon`` or ``app`` is refused by both). The config carries
    host, port and key only: Home Assistant writes the add-on's name into it as ``addon`` (or
    ``app``), which would overwrite a field of ours by either name."""
    fake = FakeSupervisor()
    supervisor = web.AppRunner(fake.app())

    # A FAKE of the server's liveness answer: the step waits for it; the real server needs
    # PostgreSQL and the broker, which this static test does not start (the image test does).
    async def live(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    health = web.Application()
    health.router.add_get("/api/v1/health/live", live)
    server = web.AppRunner(health)
    await supervisor.setup()
    await server.setup()
    supervisor_port, api_port = free_port(), free_port()
    await web.TCPSite(supervisor, "127.0.0.1", supervisor_port).start()
    await web.TCPSite(server, "127.0.0.1", api_port).start()
    try:
        data = tmp_path / "data"
        data.mkdir()
        (data / "homeassistant.key").write_text("hsi_fake_key_for_the_test\n")
        runtime_env = tmp_path / "env"
        runtime_env.write_text("")
        env = {
            "PATH": os.environ["PATH"],
            "SUPERVISOR_TOKEN": FAKE_TOKEN,
            "HSI_SUPERVISOR_URL": f"http://127.0.0.1:{supervisor_port}",
            "HSI_ADDON_PYTHON": sys.executable,
            "HSI_ADDON_RUNTIME_ENV": str(runtime_env),
            "HSI_DATA_DIR": str(data),
            "HSI_API_PORT": str(api_port),
        }
        process = await asyncio.create_subprocess_exec(
            "bash", str(ENTRY), "discovery", env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        _, stderr = await asyncio.wait_for(process.communicate(), 60)
        log = stderr.decode()
        # The fake is as strict as the Supervisor: naming the sender in the body is refused.
        async with aiohttp.ClientSession() as http:
            for extra in ({"addon": SLUG}, {"app": SLUG}):
                sent = {"service": "home_security_intelligence", "config": {}, **extra}
                headers = {"Authorization": f"Bearer {FAKE_TOKEN}"}
                url = f"http://127.0.0.1:{supervisor_port}/discovery"
                async with http.post(url, json=sent, headers=headers) as resp:
                    assert resp.status == 400
    finally:
        await supervisor.cleanup()
        await server.cleanup()
    assert process.returncode == 0 and "Announced to Home Assistant" in log, log
    assert len(fake.refused) == 2 and fake.unauthorised == 0  # the two refusals above, none of the step's
    [body] = fake.discoveries
    assert body == {
        "service": "home_security_intelligence",
        "config": {"host": socket.gethostname(), "port": api_port, "api_key": "hsi_fake_key_for_the_test"},
    }
    assert not {"addon", "app"} & set(body["config"])
    # What each Supervisor generation hands Home Assistant names the add-on by its own key, around
    # the same config (the integration takes both: tests/integration/test_config_flow.py).
    assert fake.message(0, "addon")["config"] == fake.message(0, "app")["config"] == body["config"]


def _step(run_script: Path) -> str:
    """The hsi-addon step an s6 run script hands over to (its last line: ``exec hsi-addon <step>``)."""
    last = run_script.read_text(encoding="utf-8").strip().splitlines()[-1]
    match = re.fullmatch(r"exec hsi-addon ([a-z-]+)", last)
    assert match, f"{run_script} does not end in 'exec hsi-addon <step>': {last!r}"
    return match.group(1)


def _entry_function(step: str) -> str:
    """The body of hsi-addon's function for ``step``."""
    text = ENTRY.read_text(encoding="utf-8")
    name = "step_" + step.replace("-", "_")
    match = re.search(rf"^{name}\(\) {{\n(.*?)^}}\n", text, re.S | re.M)
    assert match, f"hsi-addon has no {name}"
    return match.group(1)


def test_s6_run_scripts_are_thin_and_each_step_exists_in_the_entry_point() -> None:
    """The s6 services only hand over to hsi-addon, the entry point the stand-in image test runs
    without s6-overlay (docs/decisions.md): what the test runs is what the add-on runs."""
    steps = {service: _step(S6 / service / "run") for service in _s6_services()}
    assert steps == {
        "init-hsi": "init",
        "postgres": "postgres",
        "init-database": "init-database",
        "hsi": "serve",
        "discovery": "discovery",
    }
    for step in steps.values():
        assert _entry_function(step).strip()
        assert f"    {step}) step_{step.replace('-', '_')} ;;" in ENTRY.read_text(encoding="utf-8")
    standin = (ROOT / "tests" / "deploy" / "standin" / "init").read_text(encoding="utf-8")
    for step in steps.values():
        assert f"hsi-addon {step}" in standin, f"the stand-in test does not run {step}"


def test_the_database_is_set_up_by_a_oneshot_before_the_server_starts() -> None:
    assert _s6_services()["init-database"] == "oneshot"
    up = (S6 / "init-database" / "up").read_text(encoding="utf-8").strip()
    script = ADDON / "rootfs" / up.removeprefix("/")
    assert up.startswith("/etc/s6-overlay/s6-rc.d/") and script.is_file() and script.stat().st_mode & 0o111
    assert _step(script) == "init-database"
    text = _entry_function("init-database")
    assert "createdb" in text and "inference_server migrate" in text
    assert _s6_dependencies("init-database") == {"postgres"}
    assert "init-database" in _s6_dependencies("hsi")
    # The cluster exists before PostgreSQL starts.
    assert _step(S6 / "init-hsi" / "run") == "init" and "initdb" in _entry_function("init")
    # UTF-8 whatever the base image's locale: a SQL_ASCII cluster refuses non-ASCII text (the image
    # test found it on a minimal base, where every event failed to close).
    assert "--encoding=UTF8" in _entry_function("init")
    assert "init-hsi" in _s6_dependencies("postgres")


def test_the_s6_dependency_graph_is_complete_and_acyclic() -> None:
    services = _s6_services()
    # Complete: every service is in the user bundle and depends only on services that exist
    # (or on s6-overlay's own "base" bundle, as the official add-ons' init services do).
    assert {p.name for p in (S6 / "user" / "contents.d").iterdir()} == set(services)
    graph = {service: _s6_dependencies(service) for service in services}
    for service, needs in graph.items():
        assert needs <= set(services) | {"base"}, f"{service} depends on unknown {needs - set(services)}"
    # init-hsi (folders, environment, the cluster) starts first, once s6-overlay's base is up.
    assert graph["init-hsi"] == {"base"}
    # Acyclic: a topological order exists (Kahn's algorithm).
    ordered: list[str] = []
    pending = {service: needs - {"base"} for service, needs in graph.items()}
    while ready := sorted(s for s, needs in pending.items() if not needs):
        for service in ready:
            ordered.append(service)
            del pending[service]
        for needs in pending.values():
            needs.difference_update(ready)
    assert not pending, f"a dependency cycle among {sorted(pending)}"
    assert ordered == ["init-hsi", "postgres", "init-database", "hsi", "discovery"]


def test_postgresql_binaries_follow_the_cluster_version(tmp_path: Path) -> None:
    """A new cluster gets the newest PostgreSQL in the image; an existing one keeps its own version,
    and one whose version the image lacks stops with a message (never a server that cannot start)."""
    root = tmp_path / "postgresql"
    for version in ("15", "17"):
        (root / version / "bin").mkdir(parents=True)
        (root / version / "bin" / "postgres").write_text("#!/bin/sh\n")
        (root / version / "bin" / "postgres").chmod(0o755)
    data = tmp_path / "data"
    data.mkdir()

    def pick() -> subprocess.CompletedProcess[str]:
        env = {"PATH": os.environ["PATH"], "HSI_PG_ROOT": str(root), "PGDATA": str(data)}
        return subprocess.run([str(PG_BIN)], env=env, capture_output=True, text=True, check=False)

    assert pick().stdout.strip() == str(root / "17" / "bin")
    (data / "PG_VERSION").write_text("15\n")
    assert pick().stdout.strip() == str(root / "15" / "bin")
    (data / "PG_VERSION").write_text("14\n")
    refused = pick()
    assert refused.returncode == 1 and "PostgreSQL 14" in refused.stderr and "pg_upgrade" in refused.stderr


def test_all_yaml_passes_yamllint() -> None:
    result = subprocess.run(
        [str(BIN / "yamllint"), "-s", "-f", "parsable", "."], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    checked = [p for p in ROOT.rglob("*.y*ml") if not re.search(r"/\.venv|/\.whl|/hsi-data", str(p))]
    assert len(checked) >= 5
