"""What the OpenAI-compatible API asks of the node: ChatRequest in, ChatResult
out, through a QueryService. Importable without the server (no trio, no h11).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Protocol

ROLES = ("system", "user", "assistant")
FINISH_REASONS = ("stop", "length")


@dataclass(frozen=True)
class ChatRequest:
    model: str
    messages: tuple[tuple[str, str], ...]  # (role, content); role in ROLES; never empty
    max_tokens: int | None = None
    temperature: float | None = None  # 0..2
    stream: bool = False
    # p2pnet extensions (OpenAI clients send them as extra body keys)
    domain: str | None = None
    respondents: int | None = None  # how many experts should answer
    deadline_s: float | None = None
    user: str | None = None
    judges: int | None = None  # how many other experts rank the answers (peer judging)
    cascade: bool = False  # answer with this node's model first; ask the network if it is not confident
    cascade_threshold: float | None = None  # the confidence (0..1) below which it asks; implies cascade
    local_only: bool = False  # answer with this node's model only; the prompt never leaves the node


@dataclass(frozen=True)
class ChatResult:
    text: str
    finish_reason: str  # one of FINISH_REASONS
    prompt_tokens: int
    completion_tokens: int
    query_id: str
    provenance: dict[str, Any] = field(default_factory=dict)  # JSON-able; answered as "p2pnet"


OnDelta = Callable[[str], Awaitable[None]]


class QueryService(Protocol):
    """Implemented by the node's query coordinator."""

    def list_models(self) -> list[dict[str, Any]]:
        """Each: {"id": str, "owned_by": str, "created": int, ...extra JSON-able keys}."""
        ...

    async def chat(self, req: ChatRequest, on_delta: OnDelta | None = None) -> ChatResult:
        """Answer `req`. When streaming, `on_delta` is awaited with each new
        piece of text, in order (their concatenation should be ChatResult.text).
        Raises p2pnet.experts.errors.QueryError subclasses for expected failures."""
        ...
