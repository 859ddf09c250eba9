"""Screenshots of docs/dashboard.yaml in a real browser against a real HA with real events
(``scripts/dashboard-screenshots [FOLDER]``, default /tmp/hsi-screens).

Starts the acceptance test's stack (``stack.py``) with the dashboard as HA's YAML-mode Lovelace,
drops threat photos into the dashboard's cameras and a daytime one, then drives Debian's headless
``chromium`` over the DevTools protocol: the long-lived token goes into the frontend's
``localStorage["hassTokens"]`` on HA's own origin (so the UI opens logged in, no login page), and
each size is captured once the dashboard's view has rendered.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from tests.real_ha.stack import BUS_EVENT, ROOT, Stack, running_stack, wait_for
from tests.support.net import free_port

DASHBOARD = ROOT / "docs" / "dashboard.yaml"
#: name -> (width, height, mobile): a common Android phone, the same phone's whole page, a laptop.
SIZES = {"phone": (412, 915, True), "phone-full": (412, 2400, True), "desktop": (1440, 1000, False)}
#: Camera folders that get events (the dashboard's example cameras).
EVENT_CAMERAS = ("back_door", "driveway")


class Browser:
    """One headless chromium page driven over the DevTools protocol."""

    def __init__(self, profile: Path) -> None:
        binary = shutil.which("chromium") or shutil.which("chromium-browser")
        if binary is None:
            sys.exit("chromium is not installed: apt-get install -y chromium")
        self.port = free_port()
        self.proc = subprocess.Popen(
            [
                binary,
                "--headless=new",
                "--no-sandbox",  # root in a container; the page is our own loopback HA
                "--disable-gpu",
                "--no-first-run",
                "--hide-scrollbars",
                f"--user-data-dir={profile}",
                "--remote-debugging-address=127.0.0.1",
                f"--remote-debugging-port={self.port}",
                "about:blank",
            ],
            stdout=(profile.parent / "chromium.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        self.http: aiohttp.ClientSession | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self._id = 0

    async def open(self) -> None:
        self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))

        async def page() -> str | None:
            assert self.http is not None
            with contextlib.suppress(aiohttp.ClientError):
                async with self.http.get(f"http://127.0.0.1:{self.port}/json/list") as resp:
                    targets = await resp.json()
                    return next((t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page"), None)
            return None

        url = await wait_for(page, 30, "chromium's DevTools endpoint")
        self.ws = await self.http.ws_connect(url, max_msg_size=0)

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        assert self.ws is not None
        self._id += 1
        await self.ws.send_json({"id": self._id, "method": method, "params": params})
        while True:
            msg = await self.ws.receive_json(timeout=60)
            if msg.get("id") == self._id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                result: dict[str, Any] = msg.get("result", {})
                return result

    async def evaluate(self, expression: str) -> Any:
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return result.get("result", {}).get("value")

    async def goto(self, url: str) -> None:
        await self.send("Page.enable")
        await self.send("Page.navigate", url=url)

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self.http is not None:
            await self.http.close()
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


#: True once Lovelace shows the view's cards (through the frontend's shadow roots).
RENDERED = """
(() => {
  const find = (root, sel) => {
    if (!root) return null;
    const hit = root.querySelector(sel);
    if (hit) return hit;
    for (const el of root.querySelectorAll('*')) {
      if (el.shadowRoot) { const inner = find(el.shadowRoot, sel); if (inner) return inner; }
    }
    return null;
  };
  return !!find(document, 'hui-view, hui-masonry-view, hui-sections-view')
    && !find(document, 'ha-authorize, ha-onboarding');
})()
"""


async def _events(stack: Stack) -> None:
    """Real events for the dashboard: a person at night per dashboard camera, one reviewed."""
    async with stack.client() as ha:
        await ha.subscribe(BUS_EVENT)
        for n, camera in enumerate(EVENT_CAMERAS):
            stack.drop_person(camera, asset=("bus.jpg", "zidane.jpg")[n % 2])
            await asyncio.sleep(1)
        news = await wait_for(
            lambda: (
                {e["data"]["camera_id"]: e["data"]["event_id"] for e in ha.bus(BUS_EVENT, lambda d: d["type"] == "new")}
                if len(ha.bus(BUS_EVENT, lambda d: d["type"] == "new")) >= len(EVENT_CAMERAS)
                else None
            ),
            120,
            "a 'new' event for each dashboard camera",
        )
        await ha.call(
            "home_security_intelligence",
            "mark_reviewed",
            {"config_entry_id": stack.entry_id, "event_id": news[EVENT_CAMERAS[-1]], "feedback": "correct"},
        )
        await asyncio.sleep(3)


async def _shoot(stack: Stack, out: Path, work: Path) -> list[Path]:
    views = yaml.safe_load(DASHBOARD.read_text(encoding="utf-8")).get("views") or [{}]
    path = views[0].get("path", "0")
    browser = Browser(work / "chromium-profile")
    shots = []
    try:
        await browser.open()
        await browser.goto(f"{stack.hass.url}/manifest.json")  # HA's origin, without the app
        await asyncio.sleep(1)
        tokens = {
            "access_token": stack.token,
            "token_type": "Bearer",
            "expires_in": 315360000,
            "expires": int((time.time() + 315360000) * 1000),
            "refresh_token": "",
            "hassUrl": stack.hass.url,
            "clientId": f"{stack.hass.url}/",
        }
        await browser.evaluate(f"localStorage.setItem('hassTokens', {json.dumps(json.dumps(tokens))}); true")
        for name, (width, height, mobile) in SIZES.items():
            await browser.send(
                "Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=mobile
            )
            await browser.goto(f"{stack.hass.url}/lovelace/{path}")
            await wait_for(lambda: browser.evaluate(RENDERED), 60, f"the dashboard rendered at {name}", interval=0.5)
            await asyncio.sleep(4)  # pictures and history graphs load after the cards
            shot = await browser.send("Page.captureScreenshot", format="png")
            target = out / f"dashboard-{name}-{width}x{height}.png"
            target.write_bytes(base64.b64decode(shot["data"]))
            shots.append(target)
    finally:
        await browser.close()
    return shots


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", default="/tmp/hsi-screens", type=Path)
    args = parser.parse_args()
    if shutil.which("chromium") is None and shutil.which("chromium-browser") is None:
        sys.exit("chromium is not installed: apt-get install -y chromium")
    args.folder.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="hsi-screens-"))
    with running_stack(work, DASHBOARD) as stack:
        asyncio.run(_events(stack))
        shots = asyncio.run(_shoot(stack, args.folder, work))
    for shot in shots:
        print(shot)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
