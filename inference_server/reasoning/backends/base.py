"""What an LLM backend is: the ``LlmBackend`` interface, the errors it raises, the reply it
returns, and the registry that builds one by name from settings.

One module per backend beside this one (``llamacpp.py`` in process, ``openai.py`` for any
OpenAI-compatible server), each registering itself with ``register_llm_backend``; the
reasoner (``reasoning/llm.py``) uses a backend only through this interface.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from inference_server.config import LlmSettings
from inference_server.reasoning.prompts import ChatMessage
from inference_server.registry import Registry


class LlmError(Exception):
    """A backend could not produce a reply.

    ``reason`` is the label the fallback shows, ``brief`` a short detail fit for the event's
    reasoning (the full message, with server output, goes to the log only).
    """

    reason = "backend error"

    def __init__(self, message: str, *, brief: str | None = None) -> None:
        super().__init__(message)
        self.brief = brief if brief is not None else message[:120]


class LlmUnavailable(LlmError):
    """The LLM server could not be reached (refused, reset, DNS)."""

    reason = "unreachable"


class LlmBadResponse(LlmError):
    """The server answered, but not with a completion (HTTP error status, malformed envelope)."""

    reason = "bad response"


@dataclass(frozen=True, slots=True)
class LlmReply:
    """The raw text of one completion and what it cost."""

    text: str
    seconds: float
    prompt_tokens: int | None = None
    completion_tokens: int | None = None

    @property
    def tokens_per_s(self) -> float | None:
        """Generated tokens per second of the whole request (prompt processing included)."""
        if self.completion_tokens is None or self.seconds <= 0:
            return None
        return self.completion_tokens / self.seconds


class LlmBackend(Protocol):
    """Runs one JSON-schema-constrained chat completion. Never blocks the event loop.

    ``complete`` raises ``LlmError`` (or a subclass) when no reply text can be had; it must
    tolerate cancellation (the reasoner cancels it on timeout) and stop its work promptly.
    """

    name: str
    #: Model name recorded on every assessment this backend produces.
    model: str

    async def start(self) -> None:
        """Prepare (load the model, open the HTTP session); calling ``complete`` first also works."""
        ...

    async def complete(self, messages: Sequence[ChatMessage], schema: Mapping[str, Any]) -> LlmReply: ...

    async def can_see(self) -> bool:
        """Whether the model accepts images (``image_url`` parts), as the backend can tell; never raises."""
        ...

    async def close(self) -> None: ...


LlmBackendFactory = Callable[[LlmSettings], LlmBackend]
LLM_BACKENDS: Registry[LlmBackendFactory] = Registry("llm backend")
#: ``@register_llm_backend("name")`` on a backend's factory.
register_llm_backend = LLM_BACKENDS.register


def build_llm_backend(settings: LlmSettings) -> LlmBackend:
    """The backend named by ``settings.backend``; raises ``ValueError`` for an unknown name."""
    # Backends register on import; importing here keeps the choice in one place. Neither
    # import loads llama_cpp or opens a connection.
    from inference_server.reasoning.backends import llamacpp, openai  # noqa: F401

    return LLM_BACKENDS.get(settings.backend)(settings)
