"""A hosted expert: one backend, its domains and price, bounded concurrency.

With ``max_concurrency`` generations running, ``answer`` waits in a bounded
queue (``max_queue`` waiting, first come first served) for a free slot, up
to its timeout; when the queue is full too it returns status "busy" at once.
Every generation has a timeout and can be cancelled by query id, waiting or
running. Generations of a thread-based backend run in worker
threads, so the Trio loop stays responsive.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

import trio

from p2pnet.experts.backend import (
    CANCELLED, DEADLINE, Backend, CancelToken, OnToken, Speed,
)
from p2pnet.experts.errors import ExpertsError
from p2pnet.experts.knowledge import DEFAULT_TOP_K, KnowledgeBase, fit_budget
from p2pnet.query import BadQuery, Busy, DeadlineExceeded, QueryError
from p2pnet.wire import ChatMessage, ModelCard, PromptBody

log = logging.getLogger("p2pnet.experts.expert")

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant. Answer briefly and accurately."
HARD_STOP_GRACE = 2.0
"""Seconds past the timeout after which a generation is cancelled outright
(the backend is first asked to stop at the timeout, keeping its partial text)."""

# ExpertAnswer statuses: the same strings as wire.Answer.status. REJECTED: the
# prompt cannot be answered by this model at all (e.g. longer than its context);
# asking again will not help, and it says nothing about the expert's quality.
OK, BUSY, ERROR, CANCELLED_STATUS, TIMEOUT, REJECTED = "ok", "busy", "error", "cancelled", "timeout", "rejected"


@dataclass(frozen=True)
class ExpertAnswer:
    """The outcome of one query. ``status`` is one of wire.Answer.STATUSES;
    for "timeout" ``text`` holds what was generated before the deadline."""

    status: str
    text: str = ""
    finish_reason: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    prompt_ms: float = 0.0
    gen_ms: float = 0.0
    error: str = ""
    confidence: Optional[float] = None  # the backend's, in [0, 1] (e.g. from log-probabilities)
    passages: tuple[str, ...] = ()  # ids of the knowledge passages put into the prompt

    def raise_for_status(self) -> "ExpertAnswer":
        """Self if ok; else the matching QueryError (Busy, DeadlineExceeded, BadQuery...)."""
        if self.status == OK:
            return self
        if self.status == BUSY:
            raise Busy(self.error or "expert is busy")
        if self.status == TIMEOUT:
            raise DeadlineExceeded(self.error or "the expert did not answer in time")
        if self.status == REJECTED:
            raise BadQuery(self.error or "the expert cannot answer this prompt")
        raise QueryError(self.error or self.status)


class _Running:
    def __init__(self, scope: trio.CancelScope, token: CancelToken) -> None:
        self.scope, self.token = scope, token
        self.cancelled = False


class Expert:
    """Serves queries with one backend. Call ``await start()`` (loads the model
    and measures its speed) before ``answer``, and ``await aclose()`` after; or
    use :func:`p2pnet.experts.spec.open_expert`."""

    def __init__(self, expert_id: str, backend: Backend, *, domains: Sequence[str],
                 system_prompt: str = DEFAULT_SYSTEM_PROMPT, price_per_1k: float = 0.0,
                 max_concurrency: int = 1, max_queue: int = 0,
                 knowledge: Optional[KnowledgeBase] = None, knowledge_k: int = DEFAULT_TOP_K) -> None:
        if not 0 < len(expert_id) <= 64:
            raise ValueError("expert_id must have 1 to 64 characters")
        if not domains or max_concurrency < 1 or price_per_1k < 0 or max_queue < 0:
            raise ValueError("an expert needs domains, max_concurrency >= 1, max_queue >= 0 and price >= 0")
        self.expert_id = expert_id
        self.backend = backend
        self.domains = tuple(domains)
        self.system_prompt = system_prompt
        self.price_per_1k = price_per_1k
        self.max_concurrency = max_concurrency
        self.max_queue = max_queue
        self.knowledge = knowledge  # indexed; its best passages go into each prompt
        self.knowledge_k = knowledge_k
        self._waiting: dict[bytes, bool] = {}  # query id -> cancelled, in arrival order
        self._slot_freed = trio.Event()
        self.waited = 0  # answers that waited in the queue for a slot
        self.speed = Speed(0.0, 0.0)
        self._running: dict[bytes, _Running] = {}
        self._started = False

    async def start(self, speed: Optional[Speed] = None) -> None:
        """Load the model (in a worker thread) and run the short self-benchmark,
        unless ``speed`` gives a measurement to reuse."""
        await trio.to_thread.run_sync(self.backend.load)
        self.speed = speed or await trio.to_thread.run_sync(self.backend.measure_speed)
        self._started = True
        info = self.backend.info()
        log.info("expert %s: %s (%s, %s) prompt %.0f tok/s, generation %.0f tok/s",
                 self.expert_id, info.model, info.quantization, info.backend,
                 self.speed.prompt_tps, self.speed.gen_tps)

    async def aclose(self) -> None:
        for running in self._running.values():
            running.scope.cancel()
        await trio.to_thread.run_sync(self.backend.close)

    @property
    def load(self) -> int:
        """Generations running now, and queries waiting for a slot."""
        return len(self._running) + len(self._waiting)

    def _free_slot(self) -> None:
        self._slot_freed.set()
        self._slot_freed = trio.Event()

    async def _wait_for_slot(self, query_id: bytes, timeout: float) -> Optional[ExpertAnswer]:
        """None once ``query_id`` may run; else its answer: busy (the queue is
        full), cancelled, or timeout (no slot came free in time)."""
        if len(self._running) < self.max_concurrency and not self._waiting:
            return None
        if len(self._waiting) >= self.max_queue:
            return ExpertAnswer(BUSY, error=f"expert {self.expert_id} is busy ({self.max_concurrency} queries "
                                            f"running, {len(self._waiting)} waiting)")
        self._waiting[query_id] = False
        self.waited += 1
        try:
            with trio.move_on_after(timeout):
                while not self._waiting[query_id]:
                    if len(self._running) < self.max_concurrency and next(iter(self._waiting)) == query_id:
                        return None
                    await self._slot_freed.wait()
            if self._waiting[query_id]:
                return ExpertAnswer(CANCELLED_STATUS, finish_reason=CANCELLED, error="cancelled")
            return ExpertAnswer(TIMEOUT, finish_reason=DEADLINE, error="deadline exceeded waiting for a free slot")
        finally:
            del self._waiting[query_id]
            self._free_slot()  # the head of the queue may have changed

    def card(self, load: Optional[int] = None) -> ModelCard:
        info = self.backend.info()
        return ModelCard(
            expert_id=self.expert_id, model=info.model, sha256=info.sha256,
            quantization=info.quantization, n_ctx=info.n_ctx, domains=self.domains,
            prompt_tps=float(self.speed.prompt_tps), gen_tps=float(self.speed.gen_tps),
            price_per_1k=float(self.price_per_1k), load=self.load if load is None else load,
            max_concurrency=self.max_concurrency, backend=info.backend, gpu_layers=info.gpu_layers,
            **self._knowledge_card(),
        )

    def _knowledge_card(self) -> dict:
        kb = self.knowledge
        if kb is None:
            return {}
        return kb.card_fields()

    @contextlib.contextmanager
    def occupy(self, key: bytes) -> Iterator[None]:
        """Count work done with this expert's backend outside :meth:`answer`
        (a cascade's local answer) in its load and its concurrency limit, so
        the card the network sees says how busy the model is. Raises Busy at
        once when ``max_concurrency`` generations are running."""
        if not self._started:
            raise ExpertsError(f"expert {self.expert_id} is not started")
        if len(self._running) >= self.max_concurrency or key in self._running:
            raise Busy(f"expert {self.expert_id} is busy ({self.max_concurrency} generations running)")
        self._running[key] = _Running(trio.CancelScope(), CancelToken())
        try:
            yield
        finally:
            del self._running[key]
            self._free_slot()

    def cancel(self, query_id: bytes) -> bool:
        """Stop the generation of ``query_id``; its ``answer`` returns status
        "cancelled". False if no such query is running."""
        if query_id in self._waiting:
            self._waiting[query_id] = True
            self._free_slot()
            return True
        running = self._running.get(query_id)
        if running is None:
            return False
        running.cancelled = True
        running.token.cancel()
        running.scope.cancel()
        return True

    def messages_for(self, prompt: PromptBody) -> tuple[ChatMessage, ...]:
        """The messages sent to the model for ``prompt`` (see :meth:`prepare`)."""
        return self.prepare(prompt)[0]

    def prepare(self, prompt: PromptBody) -> tuple[tuple[ChatMessage, ...], tuple[str, ...]]:
        """The prompt's messages, with the expert's system prompt first unless
        the prompt brings its own; with a knowledge base, the passages that
        best match the last user message are added to that system message,
        within what the context leaves after the messages and ``max_tokens``.
        Also the ids of those passages."""
        messages = tuple(prompt.messages)
        own = any(m.role == "system" for m in messages)
        if not own and self.system_prompt:
            messages = (ChatMessage("system", self.system_prompt),) + messages
        question = next((m.content for m in reversed(messages) if m.role == "user"), "")
        if self.knowledge is None or not question:
            return messages, ()
        n_ctx = self.backend.info().n_ctx
        budget = fit_budget(n_ctx, prompt.max_tokens, "\n".join(m.content for m in messages) + "\n\n")
        facts, ids = self.knowledge.context(question, budget, self.knowledge_k)
        if not facts:
            return messages, ()
        if messages and messages[0].role == "system":
            first = messages[0]
            content = f"{first.content}\n\n{facts}" if first.content else facts
            return (ChatMessage("system", content),) + messages[1:], ids
        return (ChatMessage("system", facts),) + messages, ids

    async def answer(self, query_id: bytes, prompt: PromptBody, *, timeout: float,
                     on_token: Optional[OnToken] = None) -> ExpertAnswer:
        """Answer one prompt within ``timeout`` seconds.

        With ``max_concurrency`` generations running it waits for a slot in
        the queue (status "timeout" if none comes free in time, "cancelled"
        if cancelled while waiting); it returns at once with status "busy"
        when the queue is full too, "error" for a duplicate ``query_id`` or a
        failed generation. ``on_token`` may be called from a worker thread. Cancelling
        the calling task stops the generation and propagates as usual."""
        if not self._started:
            raise ExpertsError(f"expert {self.expert_id} is not started")
        if not timeout > 0:
            raise ValueError("timeout must be positive")
        if query_id in self._running or query_id in self._waiting:
            return ExpertAnswer(ERROR, error="a query with this id is already running")
        started = trio.current_time()
        refused = await self._wait_for_slot(query_id, timeout)
        if refused is not None:
            return refused
        timeout -= trio.current_time() - started
        if timeout <= 0:
            return ExpertAnswer(TIMEOUT, finish_reason=DEADLINE, error="deadline exceeded waiting for a free slot")
        try:
            messages, passages = self.prepare(prompt)
        except Exception as exc:  # a bad index must not take the node down
            log.exception("expert %s: retrieval failed", self.expert_id)
            return ExpertAnswer(ERROR, error=f"knowledge retrieval failed: {type(exc).__name__}: {exc}")
        token = CancelToken()
        scope = trio.CancelScope(deadline=trio.current_time() + timeout + HARD_STOP_GRACE)
        running = self._running[query_id] = _Running(scope, token)
        result = None
        try:
            with scope:
                result = await self.backend.agenerate(
                    messages, max_tokens=prompt.max_tokens,
                    temperature=prompt.temperature, timeout=timeout, on_token=on_token,
                    cancel=token)
        except Busy as exc:
            return ExpertAnswer(BUSY, error=str(exc))
        except BadQuery as exc:
            return ExpertAnswer(REJECTED, error=str(exc))
        except (ExpertsError, QueryError) as exc:
            return ExpertAnswer(ERROR, error=str(exc))
        except Exception as exc:  # a backend bug must not take the node down
            log.exception("expert %s: generation failed", self.expert_id)
            return ExpertAnswer(ERROR, error=f"{type(exc).__name__}: {exc}")
        finally:
            del self._running[query_id]
            self._free_slot()
        if running.cancelled:
            return ExpertAnswer(CANCELLED_STATUS, finish_reason=CANCELLED, error="cancelled")
        if result is None:  # the hard stop fired
            return ExpertAnswer(TIMEOUT, finish_reason=DEADLINE, error="deadline exceeded")
        status = {DEADLINE: TIMEOUT, CANCELLED: CANCELLED_STATUS}.get(result.finish_reason, OK)
        return ExpertAnswer(
            status, text=result.text, finish_reason=result.finish_reason,
            prompt_tokens=result.prompt_tokens, completion_tokens=result.completion_tokens,
            prompt_ms=result.prompt_ms, gen_ms=result.gen_ms,
            error="deadline exceeded" if status == TIMEOUT else "",
            confidence=result.confidence if status == OK else None, passages=passages)
