"""LLM backend: any OpenAI-compatible chat server over HTTP (aiohttp).

``POST {base_url}/v1/chat/completions`` with the answer's JSON schema in ``response_format``,
in one of two spellings (``LlmSettings.response_format``):

- ``json_schema`` (default): ``{"type": "json_schema", "json_schema": {"name", "strict",
  "schema"}}``, the OpenAI form. llama.cpp's ``llama-server`` and vLLM constrain decoding
  with it. Ollama (self-hosted, v0.5.0 or later) does too on its OpenAI-compatible endpoint:
  set ``base_url`` to ``http://<host>:11434``, ``model`` to a model already pulled there
  (``ollama pull <name>``); it ignores the API key. Ollama's native ``/api/chat`` (``format``:
  schema) is not used.
- ``json_object``: ``{"type": "json_object", "schema": ...}``, the only form llama-cpp-python's
  own server (``python -m llama_cpp.server``) accepts; llama-server accepts it too.

Whatever the server does with the schema, the reasoner validates the reply against it.

Images (key frames) travel inside the messages as ``image_url`` parts with ``data:`` URLs.
Whether the model can see (``llm.vision: auto``) is read once from llama.cpp's ``llama-server``
``GET /props`` (``modalities.vision``, true when it runs with ``--mmproj``); a server without
that endpoint (vLLM, Ollama, hosted APIs) counts as text-only unless ``llm.vision`` is ``true``.
Connection failures raise ``LlmUnavailable``; HTTP error statuses and replies without a
completion raise ``LlmBadResponse``. The request has no timeout of its own: the reasoner
cancels it when its per-call timeout expires.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import aiohttp

from inference_server.config import LlmSettings
from inference_server.reasoning.backends.base import LlmBadResponse, LlmReply, LlmUnavailable, register_llm_backend
from inference_server.reasoning.prompts import ChatMessage

SCHEMA_NAME = "security_assessment"

log = logging.getLogger(__name__)


def server_root(base_url: str) -> str:
    """The server's root URL: ``base_url`` without a trailing ``/`` or ``/v1``."""
    return base_url.rstrip("/").removesuffix("/v1")


def chat_url(base_url: str) -> str:
    """``{base_url}/v1/chat/completions``; a base URL already ending in ``/v1`` is accepted as well."""
    return f"{server_root(base_url)}/v1/chat/completions"


class OpenAiBackend:
    """Chat completions from an OpenAI-compatible server; one HTTP session, opened on first use."""

    name = "openai"

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        response_format: Literal["json_schema", "json_object"] = "json_schema",
        max_tokens: int = 512,
        temperature: float = 0.2,
    ) -> None:
        self.url = chat_url(base_url)
        self.props_url = f"{server_root(base_url)}/props"
        self._vision: bool | None = None
        self.model = model
        self.response_format = response_format
        self.max_tokens = max_tokens
        self.temperature = temperature
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._open()

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(headers=self._headers)
        return self._session

    async def complete(self, messages: Sequence[ChatMessage], schema: Mapping[str, Any]) -> LlmReply:
        """One constrained chat completion (non-streamed)."""
        session = self._open()
        body = {
            "model": self.model,
            "messages": list(messages),
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "response_format": self._response_format(schema),
            "stream": False,
        }
        started = time.perf_counter()
        try:
            async with session.post(self.url, json=body) as response:
                text = await response.text()
                status = response.status
        except aiohttp.ClientConnectionError as err:
            raise LlmUnavailable(f"{self.url}: {err}", brief=f"cannot connect to {self.url}") from err
        except aiohttp.ClientError as err:
            raise LlmBadResponse(f"{self.url}: {err!r}", brief=type(err).__name__) from err
        seconds = time.perf_counter() - started
        if status != 200:
            raise LlmBadResponse(f"HTTP {status} from {self.url}: {text[:300]}", brief=f"HTTP {status}")
        content, usage = _parse_envelope(text)
        return LlmReply(
            text=content,
            seconds=seconds,
            prompt_tokens=_int_or_none(usage.get("prompt_tokens")),
            completion_tokens=_int_or_none(usage.get("completion_tokens")),
        )

    async def can_see(self) -> bool:
        """``modalities.vision`` of llama-server's ``/props`` (remembered once the server answered);
        False when the server has no such endpoint, or cannot be reached now (asked again next
        time). ``llm.vision: true`` sends images whatever this says."""
        if self._vision is not None:
            return self._vision
        try:
            async with self._open().get(self.props_url) as response:
                status, text = response.status, await response.text()
        except aiohttp.ClientError as err:
            log.warning("llm vision unknown url=%s error=%r: text only for now", self.props_url, err)
            return False
        self._vision = status == 200 and _vision_in_props(text)
        log.info("llm vision url=%s status=%d vision=%s", self.props_url, status, self._vision)
        return self._vision

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _response_format(self, schema: Mapping[str, Any]) -> dict[str, Any]:
        if self.response_format == "json_object":
            return {"type": "json_object", "schema": dict(schema)}
        return {"type": "json_schema", "json_schema": {"name": SCHEMA_NAME, "strict": True, "schema": dict(schema)}}


def _parse_envelope(text: str) -> tuple[str, Mapping[str, Any]]:
    """The first choice's message content and the usage block of a chat completion response."""
    try:
        data = json.loads(text)
        content = data["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError) as err:
        raise LlmBadResponse(f"not a chat completion: {text[:300]!r}", brief="not a chat completion") from err
    if not isinstance(content, str):
        raise LlmBadResponse(f"chat completion without text content: {text[:300]!r}", brief="no text content")
    usage = data.get("usage")
    return content, usage if isinstance(usage, dict) else {}


def _vision_in_props(text: str) -> bool:
    try:
        data = json.loads(text)
    except ValueError:
        return False
    modalities = data.get("modalities") if isinstance(data, dict) else None
    return isinstance(modalities, dict) and modalities.get("vision") is True


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) else None


@register_llm_backend("openai")
def _build(settings: LlmSettings) -> OpenAiBackend:
    if not settings.base_url or not settings.model:
        raise ValueError("the openai LLM backend needs base_url and model")
    return OpenAiBackend(
        settings.base_url,
        settings.model,
        api_key=settings.api_key.get_secret_value() if settings.api_key else None,
        response_format=settings.response_format,
        max_tokens=settings.max_tokens,
        temperature=settings.temperature,
    )
