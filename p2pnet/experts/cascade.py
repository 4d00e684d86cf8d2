"""Small-then-large: answer with a local small model, ask the network only
when the local answer's confidence is below a threshold.

Confidence is the geometric mean of the answer's token probabilities
(``exp(mean logprob)``) when the backend reports it with the answer (the
xllamacpp backend does, as every expert answer does); otherwise it is
the self-agreement of a greedy answer with a few sampled ones. Either way it
lies in [0, 1]. The rule: escalate iff ``threshold >= 1`` or ``confidence <
threshold``; so 0 never escalates and 1 always does. With ``local_only`` the
prompt never leaves the process. See docs/evaluation.md."""

from __future__ import annotations

import contextlib
import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable, ContextManager, Optional, Sequence

from p2pnet.errors import P2PNetError
from p2pnet.experts.backend import Backend
from p2pnet.experts.errors import ExpertsError, ModelError
from p2pnet.experts.evaluation import agreement
from p2pnet.experts.expert import DEFAULT_SYSTEM_PROMPT
from p2pnet.experts.llama import LlamaBackend, LlamaSettings
from p2pnet.query import BadQuery, Busy, CascadeUnavailable, ChatRequest, ChatResult, Provenance, QueryError
from p2pnet.wire import ChatMessage

LOGPROB, SELF_AGREEMENT, FAILED, BUSY = "logprob", "self-agreement", "failed", "busy"
LOCAL, NETWORK = "local", "network"

Escalate = Callable[[ChatRequest], Awaitable[ChatResult]]
"""Asks the network: the node's coordinator, or a client of a node's API. A
P2PNetError it raises (a QueryError, an HTTP client's error) is the network
failing, and the cascade keeps a usable local answer."""


# ---------------------------------------------------------------- scoring

def self_agreement(answer: str, samples: Sequence[str]) -> float:
    """Mean agreement of ``answer`` with independently sampled answers, in [0, 1]."""
    if not samples:
        return 0.0
    return round(sum(agreement(answer, s) for s in samples) / len(samples), 4)


def should_escalate(confidence: float, threshold: float) -> bool:
    return threshold >= 1.0 or confidence < threshold


def open_local_model(store: Path, *, model: Optional[str] = None, n_threads: int = 0,
                     n_ctx: int = 2048) -> LlamaBackend:
    """The stored default model (or ``model``), loaded. ModelError if not pulled."""
    from p2pnet.experts import modelstore

    name = model or modelstore.DEFAULT_MODEL
    stored = modelstore.stored(name, store)
    if stored is None:
        raise ModelError(f"model {name} is not stored in {modelstore.models_dir(store)}; "
                         f"run `p2pnet models pull {name}` first")
    backend = LlamaBackend(stored.path, LlamaSettings(n_threads=n_threads, n_ctx=n_ctx),
                           sha256=stored.sha256, model_name=name)
    backend.load()
    return backend


# ---------------------------------------------------------------- cascade

@dataclass(frozen=True)
class CascadeSettings:
    threshold: float = 0.5
    local_only: bool = False
    samples: int = 3  # answers compared by self-agreement (greedy + samples - 1)
    sample_temperature: float = 0.8
    max_tokens: int = 128
    system_prompt: str = DEFAULT_SYSTEM_PROMPT

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError("threshold must lie in [0, 1]")
        if not 2 <= self.samples <= 8 or self.max_tokens < 1 or not 0.0 < self.sample_temperature <= 2.0:
            raise ValueError(f"invalid cascade settings: {self}")


@dataclass(frozen=True)
class LocalAnswer:
    text: str
    confidence: float  # in [0, 1]
    method: str  # logprob | self-agreement | failed | busy (not generated: no free slot)
    completion_tokens: int = 0
    error: str = ""
    prompt_tokens: int = 0
    finish_reason: str = "stop"  # stop | length
    refused: bool = False  # failed because of the prompt itself (BadQuery, e.g. longer than the context)


@dataclass(frozen=True)
class CascadeResult:
    text: str
    path: str  # local | network
    local: LocalAnswer
    threshold: Optional[float]  # None: local only (never escalated, whatever the confidence)
    reason: str
    network: Optional[ChatResult] = None

    @property
    def confidence(self) -> float:
        return self.local.confidence

    def to_json(self) -> dict:
        out = {"text": self.text, "path": self.path, "confidence": self.local.confidence,
               "method": self.local.method, "threshold": self.threshold, "reason": self.reason,
               "local_text": self.local.text}
        if self.network is not None:
            out["network"] = {"query_id": self.network.query_id, **self.network.provenance.to_json()}
        return out

    def as_chat_result(self) -> ChatResult:
        """The answer as the API gives it: the network's result, or the local
        one under a fresh query id, with ``provenance.cascade`` saying
        which path answered and why."""
        info = {k: v for k, v in self.to_json().items() if k not in ("text", "network")}
        if self.network is not None:
            return dataclasses.replace(self.network,
                                       provenance=dataclasses.replace(self.network.provenance, cascade=info))
        local = self.local
        return ChatResult(text=self.text, finish_reason=local.finish_reason, prompt_tokens=local.prompt_tokens,
                          completion_tokens=local.completion_tokens, query_id=os.urandom(16).hex(),
                          provenance=Provenance(cascade=info))


class Cascade:
    """Ask the local ``backend`` first; ``escalate`` (e.g. the node's
    coordinator, or its HTTP API) when the local answer is not confident enough."""

    def __init__(self, backend: Backend, escalate: Optional[Escalate] = None,
                 settings: CascadeSettings = CascadeSettings(),
                 slot: Callable[[], ContextManager] = contextlib.nullcontext) -> None:
        self.backend = backend
        self.escalate = escalate
        self.settings = settings
        self.slot = slot  # held while the local model generates (Expert.occupy); may raise Busy

    def _messages(self, req: ChatRequest) -> tuple[ChatMessage, ...]:
        msgs = tuple(ChatMessage(r, c) for r, c in req.messages)
        if any(m.role == "system" for m in msgs) or not self.settings.system_prompt:
            return msgs
        return (ChatMessage("system", self.settings.system_prompt),) + msgs

    async def answer_locally(self, req: ChatRequest) -> LocalAnswer:
        """The local answer and its confidence. Busy (not caught) when the
        local model's slots are all taken."""
        with self.slot():
            return await self._generate(req)

    async def _generate(self, req: ChatRequest) -> LocalAnswer:
        messages = self._messages(req)
        max_tokens = req.max_tokens or self.settings.max_tokens
        try:
            result = await self.backend.agenerate(messages, max_tokens=max_tokens)
            if result.confidence is not None:
                return LocalAnswer(result.text, result.confidence, LOGPROB,
                                   result.completion_tokens, prompt_tokens=result.prompt_tokens,
                                   finish_reason=_finish(result.finish_reason))
            samples = []
            for _ in range(self.settings.samples - 1):
                sampled = await self.backend.agenerate(messages, max_tokens=max_tokens,
                                                       temperature=self.settings.sample_temperature)
                samples.append(sampled.text)
            return LocalAnswer(result.text, self_agreement(result.text, samples), SELF_AGREEMENT,
                               result.completion_tokens, prompt_tokens=result.prompt_tokens,
                               finish_reason=_finish(result.finish_reason))
        except (ExpertsError, QueryError) as exc:
            return LocalAnswer("", 0.0, FAILED, error=str(exc), refused=isinstance(exc, BadQuery))

    async def ask(self, req: ChatRequest) -> CascadeResult:
        s = self.settings
        try:
            local = await self.answer_locally(req)
        except Busy as exc:
            if s.local_only or self.escalate is None:
                raise
            local = LocalAnswer("", 0.0, BUSY, error=str(exc))
        usable = bool(local.text.strip())
        if s.local_only:  # the threshold does not matter: nothing may be escalated
            if not usable:
                why = f"local model failed ({local.error})" if local.method == FAILED else "the local answer is empty"
                raise _no_local_answer(local, why)
            return CascadeResult(local.text, LOCAL, local, None, "local only: the prompt never left this node")
        if usable and not should_escalate(local.confidence, s.threshold):
            return CascadeResult(local.text, LOCAL, local, s.threshold,
                                 f"local confidence {local.confidence:.2f} >= threshold {s.threshold:.2f}")
        why = (f"local model failed ({local.error})" if local.method == FAILED else
               f"local model busy ({local.error})" if local.method == BUSY else
               f"local confidence {local.confidence:.2f} below threshold {s.threshold:.2f}"
               if local.confidence < s.threshold else f"threshold {s.threshold:.2f} always asks the network")
        if self.escalate is None:
            if not usable:
                raise _no_local_answer(local, why)
            return CascadeResult(local.text, LOCAL, local, s.threshold, f"{why}; local only: not escalated")
        try:
            remote = await self.escalate(req)
        except P2PNetError as exc:  # the network failed (see Escalate)
            if not usable:
                raise
            return CascadeResult(local.text, LOCAL, local, s.threshold,
                                 f"{why}; the network failed ({exc}), kept the local answer")
        return CascadeResult(remote.text, NETWORK, local, s.threshold, f"{why}: escalated to the network",
                             network=remote)


def _no_local_answer(local: LocalAnswer, why: str) -> QueryError:
    """The error for an unusable local answer when the network may not be
    asked: BadQuery if the prompt itself was refused, else QueryError."""
    return (BadQuery if local.refused else QueryError)(f"{why}, and the network may not be asked")


def _finish(reason: str) -> str:
    return "length" if reason == "length" else "stop"


# ------------------------------------------------- the cascade in the HTTP API

class CascadingService:
    """The node's QueryService (the coordinator), with requests that ask for
    the cascade (``cascade``, ``cascade_threshold``, ``local_only``) answered by a
    model this node hosts first, and escalated to ``inner`` when it is not
    confident enough. Other requests go to ``inner`` unchanged.

    The local model is the backend of the first hosted expert on a GGUF model
    (log-probability confidence), else of the first hosted expert of any kind
    (self-agreement). Its generations take one of that expert's slots
    (:meth:`Expert.occupy`): they count in the load its card advertises, and
    network queries and cascade answers share its ``max_concurrency``. With
    every slot taken a cascade request goes straight to the network, and a
    ``local_only`` one is answered Busy."""

    def __init__(self, inner, experts: Sequence[Any] = (), *,
                 settings: CascadeSettings = CascadeSettings()) -> None:
        self.inner = inner
        self.expert = next((e for e in experts if isinstance(e.backend, LlamaBackend)),
                           experts[0] if experts else None)
        self.settings = settings
        self.running = 0
        self.answered = {LOCAL: 0, NETWORK: 0}

    def list_models(self) -> list[dict]:
        return self.inner.list_models()

    async def chat(self, req: ChatRequest, on_delta=None) -> ChatResult:
        if not (req.cascade or req.local_only or req.cascade_threshold is not None):
            return await self.inner.chat(req, on_delta)
        if self.expert is None:
            raise CascadeUnavailable("this node hosts no model to answer locally first: start it with an "
                                     "expert (without --no-experts it hosts the default model), or leave "
                                     "out 'cascade', 'cascade_threshold' and 'local_only'")
        self.inner.requested_model(req)  # an unknown model is UnknownModel here too, as without the cascade
        plain = dataclasses.replace(req, cascade=False, cascade_threshold=None, local_only=False)
        threshold = self.settings.threshold if req.cascade_threshold is None else req.cascade_threshold
        settings = dataclasses.replace(self.settings, threshold=threshold, local_only=req.local_only)
        self.running += 1
        try:
            cascade = Cascade(self.expert.backend, None if req.local_only else self.inner.chat, settings,
                              slot=lambda: self.expert.occupy(os.urandom(16)))
            result = await cascade.ask(plain)
        finally:
            self.running -= 1
        self.answered[result.path] += 1
        return result.as_chat_result()

    def status(self) -> dict:
        return {"cascade_running": self.running, "cascade_answered_locally": self.answered[LOCAL],
                "cascade_escalated": self.answered[NETWORK]}
