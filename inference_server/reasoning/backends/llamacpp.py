"""LLM backend: llama.cpp in process (llama-cpp-python), a GGUF file, JSON-schema-constrained output.

The model is loaded once and every llama.cpp call runs in one dedicated thread, never on the
event loop; llama.cpp contexts are not thread-safe, so one thread also serialises them. The
completion is streamed inside that thread so a timed-out or cancelled request stops at its next
token instead of generating to ``max_tokens`` while later requests wait behind it (processing
of the prompt, once begun, runs to its end; llama.cpp reuses the cached prefix of the previous
prompt, so the fixed system message is processed once).

With a multimodal projector (``llm.mmproj_path``) the model is loaded with one of
llama-cpp-python's multimodal chat handlers (``llm.chat_handler``; ``mtmd`` uses the model's
own chat template) and sees the ``image_url`` parts of the messages; without one it is text-only.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

from inference_server.config import LlmSettings
from inference_server.reasoning.backends.base import LlmError, LlmReply, register_llm_backend
from inference_server.reasoning.prompts import ChatMessage

log = logging.getLogger(__name__)

#: ``llm.chat_handler`` names: llama-cpp-python's multimodal chat handler classes.
CHAT_HANDLERS = {
    "mtmd": "MTMDChatHandler",
    "qwen25vl": "Qwen25VLChatHandler",
    "gemma4": "Gemma4ChatHandler",
    "llava15": "Llava15ChatHandler",
    "llava16": "Llava16ChatHandler",
    "minicpmv26": "MiniCPMv26ChatHandler",
    "moondream": "MoondreamChatHandler",
}

#: Mild repetition penalty: small models otherwise loop on one phrase until the length limit.
REPEAT_PENALTY = 1.1


def resolve_gpu_layers(requested: int | Literal["auto"]) -> int:
    """``auto``: all layers (-1) if this llama.cpp build can offload to a GPU, else 0."""
    if requested != "auto":
        return requested
    import llama_cpp

    return -1 if llama_cpp.llama_supports_gpu_offload() else 0


#: ggml's tensor types (ggml.h) for the KV cache.
_GGML_TYPES = {"f16": 1, "q8_0": 8}


def kv_cache_options(kv_cache_type: Literal["f16", "q8_0"]) -> dict[str, Any]:
    """``Llama`` keywords for the KV cache's precision. A quantised V cache needs flash attention
    (llama.cpp refuses it otherwise); f16 keeps llama.cpp's defaults."""
    if kv_cache_type == "f16":
        return {}
    ggml_type = _GGML_TYPES[kv_cache_type]
    return {"type_k": ggml_type, "type_v": ggml_type, "flash_attn": True}


class LlamaCppBackend:
    """One GGUF model in this process. ``start`` loads it; ``complete`` loads it on first use too."""

    name = "llamacpp"

    def __init__(
        self,
        model_path: Path,
        *,
        model: str | None = None,
        n_ctx: int = 4096,
        kv_cache_type: Literal["f16", "q8_0"] = "q8_0",
        n_gpu_layers: int | Literal["auto"] = "auto",
        n_threads: int | None = None,
        max_tokens: int = 512,
        temperature: float = 0.2,
        mmproj_path: Path | None = None,
        chat_handler: str = "mtmd",
    ) -> None:
        if not model_path.is_file():
            raise FileNotFoundError(f"LLM model not found: {model_path} (set the llm model_path to a GGUF file)")
        if mmproj_path is not None and not mmproj_path.is_file():
            raise FileNotFoundError(f"LLM projector not found: {mmproj_path} (llm mmproj_path must be a GGUF file)")
        if chat_handler not in CHAT_HANDLERS:
            raise ValueError(f"unknown chat_handler {chat_handler!r}; known: {sorted(CHAT_HANDLERS)}")
        self.mmproj_path = mmproj_path
        self.chat_handler = chat_handler
        self.model_path = model_path
        self.model = model or model_path.name.removesuffix(".gguf")
        self.n_ctx = n_ctx
        self.kv_cache_type = kv_cache_type
        self.n_gpu_layers = n_gpu_layers
        self.n_threads = n_threads
        self.max_tokens = max_tokens
        self.temperature = temperature
        #: Seconds the last load took (None until loaded).
        self.load_seconds: float | None = None
        self._llama: Any = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llm-llamacpp")

    async def start(self) -> None:
        await asyncio.wrap_future(self._thread.submit(self._load))

    async def complete(self, messages: Sequence[ChatMessage], schema: Mapping[str, Any]) -> LlmReply:
        """One constrained chat completion; on cancellation the generation stops at the next token."""
        stop = threading.Event()
        future = self._thread.submit(self._generate, list(messages), dict(schema), stop)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            stop.set()
            raise

    async def can_see(self) -> bool:
        """True when a projector was configured: the model then reads images."""
        return self.mmproj_path is not None

    async def close(self) -> None:
        await asyncio.wrap_future(self._thread.submit(self._unload))
        self._thread.shutdown(wait=False)

    # --- in the dedicated thread ---------------------------------------------------------------

    def _load(self) -> Any:
        if self._llama is not None:
            return self._llama
        from llama_cpp import Llama

        layers = resolve_gpu_layers(self.n_gpu_layers)
        started = time.perf_counter()
        try:
            handler = None
            if self.mmproj_path is not None:
                import llama_cpp.llama_chat_format as chat_format

                handler_class = getattr(chat_format, CHAT_HANDLERS[self.chat_handler])
                handler = handler_class(clip_model_path=str(self.mmproj_path), verbose=False)
            self._llama = Llama(
                model_path=str(self.model_path),
                n_ctx=self.n_ctx,
                **kv_cache_options(self.kv_cache_type),
                n_gpu_layers=layers,
                n_threads=self.n_threads,
                chat_handler=handler,
                verbose=False,
            )
        except ValueError as err:  # llama-cpp-python's "Failed to load model from file"
            raise LlmError(f"cannot load {self.model_path}: {err}") from err
        self.load_seconds = time.perf_counter() - started
        log.info(
            "llm model loaded backend=llamacpp model=%s n_ctx=%d kv_cache=%s n_gpu_layers=%d n_threads=%d seconds=%.2f",
            self.model,
            self.n_ctx,
            self.kv_cache_type,
            layers,
            self._llama.n_threads,
            self.load_seconds,
        )
        return self._llama

    def _generate(self, messages: list[ChatMessage], schema: dict[str, Any], stop: threading.Event) -> LlmReply:
        llama = self._load()
        started = time.perf_counter()
        parts: list[str] = []
        tokens = 0
        try:
            chunks = llama.create_chat_completion(
                messages=messages,
                response_format={"type": "json_object", "schema": grammar_schema(schema)},
                max_tokens=self.max_tokens,
                temperature=self.temperature,
                repeat_penalty=REPEAT_PENALTY,
                stream=True,
            )
            for chunk in chunks:
                if stop.is_set():
                    chunks.close()
                    break
                piece = chunk["choices"][0]["delta"].get("content")
                if piece:
                    parts.append(piece)
                    tokens += 1
        except (ValueError, RuntimeError) as err:  # prompt over n_ctx, decode failure
            raise LlmError(f"llama.cpp: {err}") from err
        # Streaming reports no usage; llama-cpp-python streams one chunk per generated token.
        return LlmReply(text="".join(parts), seconds=time.perf_counter() - started, completion_tokens=tokens)

    def _unload(self) -> None:
        if self._llama is not None:
            self._llama.close()
            self._llama = None


#: The longest ``maxLength`` handed to llama.cpp's grammar. Its JSON-schema converter writes a
#: string of at most N characters as N nested optional repetitions, and llama.cpp 0.3.36 crashes
#: the whole process (SIGSEGV, measured: 1,200 crashes, 1,000 does not) while parsing the result.
GRAMMAR_MAX_LENGTH = 600


def grammar_schema(schema: Mapping[str, Any]) -> dict[str, Any]:
    """``schema`` with every ``maxLength`` above ``GRAMMAR_MAX_LENGTH`` lowered to it, for the
    grammar only: the reply is still validated against the whole schema by its pydantic model."""

    def walk(node: Any) -> Any:
        if isinstance(node, Mapping):
            out = {key: walk(value) for key, value in node.items()}
            if isinstance(out.get("maxLength"), int) and out["maxLength"] > GRAMMAR_MAX_LENGTH:
                out["maxLength"] = GRAMMAR_MAX_LENGTH
            return out
        if isinstance(node, list):
            return [walk(item) for item in node]
        return node

    result: dict[str, Any] = walk(schema)
    return result


@register_llm_backend("llamacpp")
def _build(settings: LlmSettings) -> LlamaCppBackend:
    if settings.model_path is None:
        raise ValueError("the llamacpp LLM backend needs model_path (a GGUF file)")
    return LlamaCppBackend(
        settings.model_path,
        model=settings.model,
        n_ctx=settings.n_ctx,
        kv_cache_type=settings.kv_cache_type,
        n_gpu_layers=settings.n_gpu_layers,
        n_threads=settings.n_threads,
        max_tokens=settings.max_tokens,
        temperature=settings.temperature,
        mmproj_path=settings.mmproj_path,
        chat_handler=settings.chat_handler,
    )
