"""Every log record is one line whatever the values it carries (issue 13, item 14: log forging)."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import Callable
from urllib.parse import quote

import aiohttp
import pytest

from inference_server import demo_assets, logging_setup
from inference_server.config import Settings
from inference_server.detection.ultralytics_backend import UltralyticsDetector

from .conftest import auth_headers, running

FORGED = "2026-12-02 00:00:00,000 level=INFO logger=inference_server.server server stopped"
#: LF, CR, an ANSI "clear screen", NEL (C1) and U+2028: each is a line break to some reader.
HOSTILE = f"x\n{FORGED}\r\x1b[2J\x85\u2028end"


def _formatter(fmt: str) -> logging.Formatter:
    """The formatter ``configure`` installs for ``fmt`` (the root logger's handlers put back after)."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        logging_setup.configure("INFO", fmt)
        formatter = root.handlers[0].formatter
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    assert formatter is not None
    return formatter


def _record(msg: str, *args: object, exc_info: bool = False) -> logging.LogRecord:
    return logging.LogRecord(
        "inference_server.api.auth",
        logging.WARNING,
        __file__,
        1,
        msg,
        args,
        sys.exc_info() if exc_info else None,
    )


def test_text_format_escapes_control_characters_in_logged_values() -> None:
    line = _formatter("text").format(_record("auth failed client=%s path=%s", "127.0.0.1", "/cameras/" + HOSTILE))
    assert len(line.splitlines()) == 1
    assert not any(c in line for c in "\n\r\x1b\x85\u2028")
    assert line.endswith("path=/cameras/x\\n" + FORGED + "\\r\\x1b[2J\\x85\\u2028end")


def test_json_format_is_one_line_and_keeps_the_value() -> None:
    line = _formatter("json").format(_record("auth failed path=%s", HOSTILE))
    assert len(line.splitlines()) == 1
    assert json.loads(line)["message"] == "auth failed path=" + HOSTILE


def test_only_the_formatters_own_traceback_spans_lines_and_those_lines_are_indented() -> None:
    try:
        raise ValueError(f"bad camera {HOSTILE}")
    except ValueError:
        record = _record("component crashed task=%s", "detect\nfake", exc_info=True)
    first, *rest = _formatter("text").format(record).split("\n")
    assert first.endswith("component crashed task=detect\\nfake")
    assert rest and rest[0] == "  Traceback (most recent call last):"
    # The forged line from the exception's message is there, but cannot pass for a record.
    assert all(line.startswith("  ") for line in rest)
    assert any(line == "  " + FORGED + "\\r\\x1b[2J\\x85\\u2028end" for line in rest)
    line = _formatter("json").format(record)
    assert len(line.splitlines()) == 1 and "ValueError: bad camera x\n" + FORGED in json.loads(line)["exception"]


async def test_a_newline_in_a_camera_id_or_a_file_name_does_not_forge_a_log_line(
    make_settings: Callable[..., Settings], pose_detector: UltralyticsDetector, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with running(make_settings(), pose_detector) as server:
        headers = await auth_headers(server)
        async with aiohttp.ClientSession(base_url=server.api_url) as http:
            # The request: no key, a camera id carrying a forged line.
            async with http.get("/api/v1/cameras/x%0A" + FORGED.replace(" ", "%20")) as resp:
                assert resp.status == 401
            async with http.post("/api/v1/cameras", json={"id": "porch", "name": "Porch"}, headers=headers) as resp:
                assert resp.status == 201
            boundary = "hsi-boundary"
            body = (
                (
                    f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename*=utf-8''"
                    + quote(f"a\n{FORGED}.jpg", safe="")
                    + "\r\nContent-Type: image/jpeg\r\n\r\n"
                ).encode()
                + demo_assets.image("zidane.jpg").read_bytes()
                + f"\r\n--{boundary}--\r\n".encode()
            )
            async with http.post(
                "/api/v1/cameras/porch/images",
                data=body,
                headers={**headers, "Content-Type": f"multipart/form-data; boundary={boundary}"},
            ) as resp:
                assert resp.status == 202
        assert await server.pool.fetchval("SELECT original_name FROM images") == f"a\n{FORGED}.jpg"

    raw = [r for r in caplog.records if FORGED in r.getMessage()]
    auth = [r for r in raw if r.getMessage().startswith("auth failed")]
    queued = [r for r in raw if r.getMessage().startswith("image queued")]
    assert len(auth) == 1 and len(queued) == 1
    for record in raw:
        text = _formatter("text").format(record)
        assert "\n" not in text and "\\n" + FORGED in text
        line = _formatter("json").format(record)
        assert "\n" not in line and FORGED in json.loads(line)["message"]
    assert "path=/api/v1/cameras/x\\n" + FORGED in _formatter("text").format(auth[0])
    assert "file=a\\n" + FORGED + ".jpg" in _formatter("text").format(queued[0])


async def test_a_cameras_pictures_log_one_info_line_the_first_time_and_debug_lines_after(
    make_settings: Callable[..., Settings], pose_detector: UltralyticsDetector, caplog: pytest.LogCaptureFixture
) -> None:
    """At INFO (the add-on's default) each picture wrote "image queued" and, with nothing in
    view, "nothing detected": two lines a second for a camera sending a picture a second, which
    buried the events and the failures in the add-on's log. Now a camera's first picture since
    start is logged at INFO (it works), the rest at DEBUG."""
    caplog.set_level(logging.DEBUG)
    quiet = demo_assets.image("rocket.jpg").read_bytes()  # no one in view
    async with running(make_settings(), pose_detector) as server:
        headers = await auth_headers(server)
        async with aiohttp.ClientSession(base_url=server.api_url) as http:
            async with http.post("/api/v1/cameras", json={"id": "porch", "name": "Porch"}, headers=headers) as resp:
                assert resp.status == 201
            jobs = []
            for n in range(3):
                async with http.post(
                    "/api/v1/cameras/porch/images",
                    # Three pictures, three hashes: a JPEG comment (COM) after the start marker.
                    data=quiet[:2] + b"\xff\xfe\x00\x03" + bytes([n]) + quiet[2:],
                    headers={**headers, "Content-Type": "image/jpeg"},
                    params={"captured_at": f"2026-12-07T12:00:0{n}+00:00"},
                ) as resp:
                    assert resp.status == 202, await resp.text()
                    jobs.append((await resp.json())["job_id"])
        for _ in range(200):
            if await server.pool.fetchval("SELECT count(*) FROM jobs WHERE state = 'done'") == 3:
                break
            await asyncio.sleep(0.05)
        assert await server.pool.fetchval("SELECT count(*) FROM jobs WHERE state = 'done'") == 3
    per_picture = [
        r
        for r in caplog.records
        if r.name.startswith("inference_server") and any(f"job_id={job}" in r.getMessage() for job in jobs)
    ]
    info = [r.getMessage() for r in per_picture if r.levelno >= logging.INFO]
    assert len(info) == 1 and info[0].startswith("image queued camera_id=porch") and f"job_id={jobs[0]}" in info[0]
    assert "the first from this camera since start" in info[0]
    debug = [r.getMessage() for r in per_picture if r.levelno == logging.DEBUG]
    assert sum(m.startswith("image queued") for m in debug) == 2
    assert sum(m.startswith("nothing detected") for m in debug) == 3
