"""The add-on's page behind ingress (Open Web UI): status, recent events and links that carry the
Supervisor's X-Ingress-Path; only for the trusted proxy or an API key, like every route."""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable

import aiohttp

from inference_server import demo_assets
from inference_server.config import Settings
from inference_server.detection.ultralytics_backend import UltralyticsDetector
from tests.support.waiting import wait_until

from ..conftest import running

INGRESS = "/api/hassio_ingress/Ab_1-xyz"


async def test_the_ingress_page_shows_status_events_and_ingress_links(
    make_settings: Callable[..., Settings], pose_detector: UltralyticsDetector
) -> None:
    settings = make_settings(trusted_proxies=["127.0.0.1"], ftp_enabled=False)
    async with running(settings, pose_detector) as server, aiohttp.ClientSession() as http:
        url = server.api_url + "/api/v1/ui"
        async with http.get(url, headers={"X-Ingress-Path": INGRESS}) as resp:
            assert resp.status == 200 and resp.content_type == "text/html"
            empty = await resp.text()
        assert "No events yet." in empty and pose_detector.describe() in empty
        assert f'href="{INGRESS}/api/v1/openapi.json"' in empty
        folder = settings.cameras_path / "front"
        folder.mkdir(parents=True)
        shutil.copy(demo_assets.image("bus.jpg"), folder / "bus.jpg")

        async def listed() -> str | None:
            async with http.get(url) as resp:
                text = await resp.text()
            return text if "No events yet." not in text else None

        page = await wait_until(listed, timeout=60)
        # The camera (named after its folder) and the event's level.
        assert re.search(r"<td>front</td>", page, re.I) and re.search(r'<td class="(low|medium|high|critical)">', page)
        # Without the proxy's header the links are plain API paths; a forged prefix is ignored.
        assert 'href="/api/v1/events"' in page
        async with http.get(url, headers={"X-Ingress-Path": '/evil"><script>'}) as resp:
            assert "<script>" not in await resp.text()


async def test_the_page_needs_a_key_from_anyone_but_the_ingress_proxy(
    make_settings: Callable[..., Settings], pose_detector: UltralyticsDetector
) -> None:
    settings = make_settings(trusted_proxies=["172.30.32.2"], ftp_enabled=False)
    async with (
        running(settings, pose_detector) as server,
        aiohttp.ClientSession() as http,
        http.get(server.api_url + "/api/v1/ui", headers={"X-Ingress-Path": INGRESS}) as resp,
    ):
        assert resp.status == 401
