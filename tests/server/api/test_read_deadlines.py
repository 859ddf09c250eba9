"""Slow clients are cut off: request headers and bodies have read deadlines (issue 13, item 10).

Raw sockets, because an HTTP client library cannot send headers a byte at a time. The deadlines
are small (1 s) and the bounds generous (20 s, against aiohttp's own 75 s keep-alive), so a
loaded machine does not make these tests flaky.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from urllib.parse import urlsplit

import aiohttp

from inference_server import demo_assets
from inference_server.config import Settings
from inference_server.detection.ultralytics_backend import UltralyticsDetector

from ..conftest import auth_headers, running

BOUND_S = 20.0


@contextlib.asynccontextmanager
async def _connection(api_url: str) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    url = urlsplit(api_url)
    assert url.hostname is not None and url.port is not None
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), BOUND_S)
    status_line, *lines = head.decode("latin-1").split("\r\n")[:-2]
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    body = await asyncio.wait_for(reader.readexactly(int(headers.get("content-length", "0"))), BOUND_S)
    return int(status_line.split()[1]), headers, body


async def _closed(reader: asyncio.StreamReader) -> bool:
    """Whether the server closed the connection (EOF or reset) within the bound."""
    try:
        rest = await asyncio.wait_for(reader.read(), BOUND_S)
    except ConnectionResetError:
        return True
    return rest == b""


async def _add_camera(api_url: str, headers: dict[str, str]) -> None:
    async with (
        aiohttp.ClientSession(base_url=api_url, headers=headers) as http,
        http.post("/api/v1/cameras", json={"id": "porch", "name": "Porch"}) as resp,
    ):
        assert resp.status == 201


async def _trickle(writer: asyncio.StreamWriter, data: bytes, interval_s: float = 0.2) -> None:
    """Send ``data`` a byte at a time, as a slowloris client does, until the server hangs up."""
    try:
        for byte in data:
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(interval_s)
    except ConnectionError:
        return


def _upload_head(headers: dict[str, str], length: int) -> bytes:
    """The request line and headers of a raw JPEG upload to camera ``porch``."""
    return (
        b"POST /api/v1/cameras/porch/images HTTP/1.1\r\nHost: hsi\r\nContent-Type: image/jpeg\r\n"
        + f"Authorization: {headers['Authorization']}\r\nContent-Length: {length}\r\n\r\n".encode()
    )


async def test_headers_sent_a_byte_at_a_time_get_408_and_the_connection_is_closed(
    make_settings: Callable[..., Settings], pose_detector: UltralyticsDetector
) -> None:
    async with (
        running(make_settings(api_header_timeout_s=1), pose_detector) as server,
        _connection(server.api_url) as (reader, writer),
    ):
        loop = asyncio.get_running_loop()
        started = loop.time()
        writer.write(b"GET /api/v1/health/live HTTP/1.1\r\nHost: hsi\r\n")
        slow = asyncio.create_task(_trickle(writer, b"X-Slow: " + b"a" * 500 + b"\r\n\r\n"))
        try:
            status, headers, body = await _read_response(reader)
            elapsed = loop.time() - started
            assert status == 408 and headers["connection"] == "close"
            assert b"request_timeout" in body
            assert 0.5 <= elapsed < BOUND_S
            assert await _closed(reader)
        finally:
            slow.cancel()


async def test_an_upload_body_trickled_a_byte_at_a_time_gets_408_and_the_connection_is_closed(
    make_settings: Callable[..., Settings], pose_detector: UltralyticsDetector
) -> None:
    settings = make_settings(api_body_timeout_s=1, api_body_min_rate=1000)
    async with running(settings, pose_detector) as server:
        headers = await auth_headers(server)
        await _add_camera(server.api_url, headers)
        async with _connection(server.api_url) as (reader, writer):
            writer.write(_upload_head(headers, 100_000) + demo_assets.image("zidane.jpg").read_bytes()[:100])
            slow = asyncio.create_task(_trickle(writer, b"\0" * 500))
            try:
                status, response_headers, body = await _read_response(reader)
                assert status == 408 and response_headers["connection"] == "close"
                assert b"request_timeout" in body
                assert await _closed(reader)
            finally:
                slow.cancel()
        assert await server.pool.fetchval("SELECT count(*) FROM images") == 0


async def test_a_slow_but_steady_upload_and_an_idle_kept_alive_connection_are_served(
    make_settings: Callable[..., Settings], pose_detector: UltralyticsDetector
) -> None:
    settings = make_settings(api_header_timeout_s=1, api_body_timeout_s=1, api_body_min_rate=1000)
    jpeg = demo_assets.image("zidane.jpg").read_bytes()
    async with running(settings, pose_detector) as server:
        headers = await auth_headers(server)
        await _add_camera(server.api_url, headers)
        async with _connection(server.api_url) as (reader, writer):
            writer.write(_upload_head(headers, len(jpeg)))
            # Four pieces 0.7 s apart: 2.1 s in all, past the 1 s grace, but far above 1000 bytes/s.
            quarter = len(jpeg) // 4 + 1
            for at in range(0, len(jpeg), quarter):
                writer.write(jpeg[at : at + quarter])
                await writer.drain()
                await asyncio.sleep(0.7)
            status, _, body = await _read_response(reader)
            assert status == 202, body

            # Idle for twice the header deadline: an idle kept-alive connection is not a slow one.
            await asyncio.sleep(2)
            writer.write(b"GET /api/v1/health/live HTTP/1.1\r\nHost: hsi\r\n\r\n")
            status, _, _ = await _read_response(reader)
            assert status == 200
        assert await server.pool.fetchval("SELECT count(*) FROM images") == 1
