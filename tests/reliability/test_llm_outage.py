"""End to end through the running server: an LLM that is slow or down never holds back an alert.

The LLM here is ``FakeLlmServer``, a fake of an external OpenAI-compatible service (the real
llama.cpp server is exercised in tests/server/reasoning/backends/test_openai.py; here what matters is
the server's behaviour around it, and a fake lets the test switch it between slow, failing and
healthy at will). The LLM stage's circuit breaker is set to open after 2 failures and to try
again after 3 s.

Checked per image (each on its own camera, so each is its own event): the rules' ``new`` message
is published whatever the LLM does; a slow or failing LLM leaves the event labelled ``rules`` with
the reason; after two failures the circuit opens and the LLM is not even asked; once it is healthy
again and the reset time has passed, the next event is judged by the LLM (``analysis_source`` llm).
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp import web

from inference_server import demo_assets
from tests.support.mqtt import PersistentSubscriber
from tests.support.waiting import wait_until

from .conftest import ServerProcess, put_file, server_env, unique_jpeg

pytestmark = pytest.mark.slow


class FakeLlmServer:
    """A fake of an external OpenAI-compatible chat server: ``mode`` is ok, slow or error."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.requests = 0
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._complete)
        self._runner = web.AppRunner(app)
        self.url = ""

    async def start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"

    async def stop(self) -> None:
        await self._runner.cleanup()

    async def _complete(self, request: web.Request) -> web.Response:
        self.requests += 1
        await request.read()
        if self.mode == "slow":
            await asyncio.sleep(5)  # longer than the server's LLM timeout (1 s)
        if self.mode == "error":
            return web.json_response({"error": {"message": "model crashed"}}, status=500)
        answer = {
            "reasoning": "Two adults standing in view at night; looks like a planned visit.",
            "factors": [{"name": "people at night", "detail": "two people in the frame"}],
            "risk_score": 55,
            "risk_level": "medium",
            "summary": "Two people in view",
        }
        return web.json_response(
            {
                "id": "chatcmpl-fake",
                "object": "chat.completion",
                "model": "fake-llm",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": json.dumps(answer)},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 100, "completion_tokens": 50, "total_tokens": 150},
            }
        )


async def test_slow_and_failing_llm_leave_rules_alerts_and_the_circuit_recovers(
    tmp_path: Path, database_url: str, mosquitto_url: str, server_process: list[ServerProcess]
) -> None:
    llm = FakeLlmServer()
    await llm.start()
    data = tmp_path / "data"
    server = ServerProcess(
        server_env(
            data,
            database_url,
            mosquitto_url,
            HSI_DETECTOR_IMGSZ="320",
            HSI_LLM__BACKEND="openai",
            HSI_LLM__BASE_URL=llm.url,
            HSI_LLM__MODEL="fake-llm",
            HSI_LLM__TIMEOUT_S="1",
            HSI_LLM__CIRCUIT_FAILURES="2",
            HSI_LLM__CIRCUIT_RESET_S="3",
            HSI_LLM__RESPONSE_FORMAT="json_object",
        ),
        tmp_path / "server.log",
    )
    server_process.append(server)
    subscriber = PersistentSubscriber(mosquitto_url, "hsi/events").wait_subscribed()
    db = await asyncpg.connect(database_url)
    source = demo_assets.image("zidane.jpg")

    def messages(camera: str) -> list[dict[str, Any]]:
        out = []
        for topic, payload, _ in subscriber.messages():
            message = json.loads(payload)
            if topic == "hsi/events" and message["camera_id"] == camera:
                out.append(message)
        return out

    async def alert(camera: str, n: int) -> tuple[dict[str, Any], dict[str, Any]]:
        """Drop one image on ``camera``; return its ``new`` and its LLM-phase ``update`` message."""
        put_file(data / "cameras" / camera / f"MDAlarm_20261124-0300{n:02d}.jpg", unique_jpeg(source, n))
        new = await wait_until(lambda: [m for m in messages(camera) if m["type"] == "new"], 90)
        update = await wait_until(lambda: [m for m in messages(camera) if m["type"] == "update"], 60)
        return new[0], update[0]

    try:
        server.start()
        await wait_until(lambda: db.fetchval("SELECT to_regclass('events') IS NOT NULL"), 90)

        llm.mode = "slow"
        new, update = await alert("porch", 1)
        assert new["analysis_source"] == "rules" and new["risk_score"] > 0
        assert update["analysis_source"] == "rules" and "timeout" in update["reasoning"].lower()
        assert update["risk_score"] == new["risk_score"]
        assert new["alert"] is True and update["alert"] is False  # the timeout repeats the rules: no alert

        llm.mode = "error"
        new, update = await alert("garden", 2)
        # The second failure in a row opened the circuit before this update was published: the
        # breaker lets a trial call through at most HSI_LLM__CIRCUIT_RESET_S (3 s) from now.
        half_open_by = time.monotonic() + 3
        assert update["analysis_source"] == "rules" and "LLM fallback" in update["reasoning"]
        # Two failures in a row: the circuit is open, the next event does not wait for the LLM at all.
        asked = llm.requests
        new, update = await alert("drive", 3)
        assert update["analysis_source"] == "rules" and "circuit open" in update["reasoning"]
        assert llm.requests == asked
        assert new["risk_score"] > 0

        # Healthy again; after the reset time one trial call goes through and closes the circuit.
        llm.mode = "ok"
        await asyncio.sleep(max(0.0, half_open_by - time.monotonic()))
        new, update = await alert("hall", 4)
        assert update["analysis_source"] == "llm" and update["model"] == "fake-llm" and update["alert"] is True
        assert new["analysis_source"] == "rules"
        rows = await db.fetch("SELECT camera_id, analysis_source, llm_state FROM events ORDER BY camera_id")
        assert [(r["camera_id"], r["analysis_source"], r["llm_state"]) for r in rows] == [
            ("drive", "rules", "failed"),
            ("garden", "rules", "failed"),
            ("hall", "llm", "done"),
            ("porch", "rules", "failed"),
        ]
        assert server.stop() == 0, server.tail()
    finally:
        await db.close()
        subscriber.close()
        await llm.stop()
