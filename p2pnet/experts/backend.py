"""The interface every inference engine implements, and its result types.

A :class:`Backend` is synchronous and thread-safe: ``generate`` blocks the
calling worker thread. :meth:`Backend.agenerate` is the Trio entry point; by
default it runs ``generate`` in a worker thread and turns a Trio cancellation
into a :class:`CancelToken` signal, so the native generation stops and the
thread is always waited for (never abandoned).
"""

from __future__ import annotations

import math
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from functools import partial
from typing import Callable, Optional, Protocol, Sequence

import trio

# finish reasons of a GenerationResult
STOP, LENGTH, CANCELLED, DEADLINE = "stop", "length", "cancelled", "deadline"
FINISH_REASONS = (STOP, LENGTH, CANCELLED, DEADLINE)

OnToken = Callable[[str], None]
"""Called (in the generating thread) with each new piece of text."""


class Message(Protocol):
    """A chat message: ``wire.ChatMessage`` fits."""

    role: str
    content: str


@dataclass(frozen=True)
class ModelInfo:
    """What a loaded backend reports for a ModelCard."""

    model: str
    sha256: str
    quantization: str
    n_ctx: int
    backend: str
    gpu_layers: int = 0


@dataclass(frozen=True)
class GenerationResult:
    text: str
    finish_reason: str  # one of FINISH_REASONS
    prompt_tokens: int = 0
    completion_tokens: int = 0
    prompt_ms: float = 0.0
    gen_ms: float = 0.0
    confidence: Optional[float] = None  # in [0, 1], when the engine can tell (see confidence_from_logprobs)


def confidence_from_logprobs(logprobs: Sequence[float]) -> float:
    """exp(mean log-probability) of the generated tokens, in [0, 1]; 0 for none."""
    values = [lp for lp in logprobs if lp is not None and math.isfinite(lp)]
    if not values:
        return 0.0
    return round(min(1.0, max(0.0, math.exp(sum(values) / len(values)))), 4)


@dataclass(frozen=True)
class Speed:
    """Measured throughput in tokens per second."""

    prompt_tps: float
    gen_tps: float


class CancelToken:
    """A thread-safe flag a generation polls between tokens."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()


BENCH_PROMPT = (
    "Summarise in one paragraph why the sky looks blue during the day and red at sunset. "
    "Mention Rayleigh scattering, the wavelength of light, the angle of the sun, and the "
    "length of the path that sunlight takes through the atmosphere before it reaches us."
)


@dataclass(frozen=True)
class _BenchMessage:
    role: str
    content: str


class Backend(ABC):
    """An inference engine serving one model. Subclasses set ``name``."""

    name: str = ""
    max_parallel: int = 1
    """How many generations the engine runs at once (more wait inside it)."""

    @abstractmethod
    def load(self) -> None:
        """Load the model; ModelError if it cannot be loaded. Idempotent."""

    @abstractmethod
    def info(self) -> ModelInfo:
        """Model facts for the card; valid after load()."""

    @abstractmethod
    def generate(
        self,
        messages: Sequence[Message],
        *,
        max_tokens: int,
        temperature: float = 0.0,
        deadline: Optional[float] = None,
        on_token: Optional[OnToken] = None,
        cancel: Optional[CancelToken] = None,
    ) -> GenerationResult:
        """Generate a chat answer, blocking. ``deadline`` is a ``time.monotonic()``
        value; reaching it ends the generation with finish_reason "deadline",
        a cancelled token with "cancelled" (the text so far is returned)."""

    @abstractmethod
    def close(self) -> None:
        """Stop in-flight generations and free the model. Idempotent."""

    def measure_speed(self, max_tokens: int = 32) -> Speed:
        """A short self-benchmark (after one warm-up call): prompt and generation tok/s."""
        messages = [_BenchMessage("user", BENCH_PROMPT)]
        self.generate(messages, max_tokens=4)
        result = self.generate(messages, max_tokens=max_tokens)
        return Speed(
            prompt_tps=_rate(result.prompt_tokens, result.prompt_ms),
            gen_tps=_rate(result.completion_tokens, result.gen_ms),
        )

    async def agenerate(
        self,
        messages: Sequence[Message],
        *,
        max_tokens: int,
        temperature: float = 0.0,
        timeout: Optional[float] = None,
        on_token: Optional[OnToken] = None,
        cancel: Optional[CancelToken] = None,
    ) -> GenerationResult:
        """``generate`` in a worker thread. Cancelling the calling task cancels
        the generation and waits for the thread to finish; ``timeout`` (seconds)
        becomes the backend deadline."""
        token = cancel if cancel is not None else CancelToken()
        deadline = None if timeout is None else time.monotonic() + timeout
        call = partial(self.generate, messages, max_tokens=max_tokens, temperature=temperature,
                       deadline=deadline, on_token=on_token, cancel=token)
        return await run_cancellable(call, token)


async def run_cancellable(fn: Callable[[], object], token: CancelToken):
    """Run ``fn`` in a worker thread; a Trio cancellation sets ``token`` and then
    waits for ``fn`` to return (it must honour the token promptly)."""

    done = False

    async def signal_on_cancel() -> None:
        try:
            await trio.sleep_forever()
        finally:
            if not done:
                token.cancel()

    value, error = None, None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(signal_on_cancel)
        try:
            value = await trio.to_thread.run_sync(fn)
        except Exception as exc:  # raised below, not from the nursery (which would wrap it in a group)
            error = exc
        finally:
            done = True
            nursery.cancel_scope.cancel()
    if error is not None:
        raise error
    return value


def _rate(tokens: int, ms: float) -> float:
    return round(tokens * 1000.0 / ms, 1) if ms > 0 else 0.0
