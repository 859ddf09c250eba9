"""A FAKE OpenAI-compatible vision-language server for tests (no VLM weights exist here).

It is not a model: it answers every chat completion with the same prepared reply (a
``security-v2`` answer unless a test sets another) and records each request body, so a test
can check what the server sent: the messages, the ``image_url`` parts (``data:`` URLs), the
response-format schema. ``GET /props`` answers like llama.cpp's ``llama-server`` with
``modalities.vision`` set to ``vision``; ``props_status`` other than 200 mimics a server
without that endpoint.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from PIL import Image

#: A grounded security-v2 answer for a person walking up to a door in daylight.
V2_REPLY: dict[str, Any] = {
    "description": "A man in a dark jacket walks up the path to the front door carrying a small parcel.",
    "activity": "approaching",
    "threat_indicators": [],
    "reasoning": "Someone walks to the door in daylight; nothing suggests forced entry.",
    "factors": [{"name": "daylight", "detail": "Seen in daylight."}],
    "risk_score": 30,
    "risk_level": "low",
    "summary": "Person walking to the front door",
    "confidence": 0.8,
}


@dataclass
class FakeVlm:
    """The fake server's state: what it answers and what it was asked."""

    reply: Mapping[str, Any] = field(default_factory=lambda: dict(V2_REPLY))
    vision: bool = True
    props_status: int = 200
    requests: list[dict[str, Any]] = field(default_factory=list)
    props_calls: int = 0
    #: Set: every chat completion waits for it before answering (a model still thinking).
    hold: asyncio.Event | None = None
    port: int = 0
    _runner: web.AppRunner | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> FakeVlm:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/props", self._props)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = self._runner.addresses[0][1]
        return self

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _props(self, _: web.Request) -> web.Response:
        self.props_calls += 1
        if self.props_status != 200:
            return web.Response(status=self.props_status, text="not found")
        return web.json_response({"model_path": "fake-vlm.gguf", "modalities": {"vision": self.vision, "audio": False}})

    async def _chat(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append(body)
        if self.hold is not None:
            await self.hold.wait()
        message = {"role": "assistant", "content": json.dumps(self.reply)}
        return web.json_response(
            {
                "id": f"fake-{len(self.requests)}",
                "object": "chat.completion",
                "model": body.get("model", "fake-vlm"),
                "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 100, "completion_tokens": 50, "total_tokens": 150},
            }
        )


def assessments(fake: FakeVlm) -> list[dict[str, Any]]:
    """The recorded requests that asked for a security assessment (a schema with ``risk_score``);
    other LLM users, such as the digest, send other schemas."""
    return [
        body
        for body in fake.requests
        if "risk_score"
        in body.get("response_format", {}).get("json_schema", {}).get("schema", {}).get("properties", {})
    ]


def image_parts(body: Mapping[str, Any]) -> list[str]:
    """The ``data:`` URLs of every ``image_url`` part of a recorded request."""
    urls = []
    for message in body["messages"]:
        if isinstance(message["content"], list):
            urls += [part["image_url"]["url"] for part in message["content"] if part["type"] == "image_url"]
    return urls


def decode(url: str) -> Image.Image:
    """The image of a ``data:image/jpeg;base64,...`` URL; raises if it is not one."""
    prefix = "data:image/jpeg;base64,"
    if not url.startswith(prefix):
        raise ValueError(f"not a JPEG data URL: {url[:40]!r}")
    image = Image.open(io.BytesIO(base64.b64decode(url.removeprefix(prefix), validate=True)))
    if image.format != "JPEG":
        raise ValueError(f"not a JPEG: {image.format}")
    image.load()
    return image
