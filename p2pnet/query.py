"""The query vocabulary, shared by every layer that asks or answers: a request
(:class:`ChatRequest`), its result (:class:`ChatResult`) with a typed
:class:`Provenance`, the :class:`QueryService` a node offers, and the query
errors.

Neutral on purpose: no trio, no HTTP. The errors say what went wrong, not
which status code reports it; the OpenAI layer (``p2pnet.api.openai_schema``)
alone maps them to HTTP answers and adds OpenAI's fields.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Awaitable, Callable, Optional, Protocol

from p2pnet.errors import P2PNetError

ROLES = ("system", "user", "assistant")
FINISH_REASONS = ("stop", "length")
AUTO_MODEL = "p2pnet"
"""Model id meaning "any expert for the domain"."""


# ------------------------------------------------------------------ errors

class QueryError(P2PNetError):
    """Root of the query errors: an expected failure to answer a query."""


class BadQuery(QueryError):
    """The request itself is at fault (asking again will not help)."""


class UnknownModel(QueryError):
    """No expert known to the node serves the model the request names."""


class NoExpertAvailable(QueryError):
    """No expert could give a usable answer now; another try may find one."""


class Busy(QueryError):
    """A bounded queue is full: try again shortly."""


class DeadlineExceeded(QueryError):
    """No usable answer arrived before the request's deadline."""


class UnknownQuery(QueryError):
    """Feedback names a query this node does not know (or no longer remembers)."""


class FeedbackRepeated(QueryError):
    """Feedback on a query's answer was already given."""


class CascadeUnavailable(QueryError):
    """A cascade was asked of a node that hosts no model to answer it first."""


# ----------------------------------------------------------------- request

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


# --------------------------------------------------------------- provenance
# ``from_json`` reads what an API answered: a key missing or of the wrong type
# takes its default, so a reader never fails on a newer or odd node's answer.

def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _opt_str(value: Any) -> Optional[str]:
    return value if isinstance(value, str) else None


def _num(value: Any) -> Optional[float]:
    """A JSON number (int or float, kept as it is); None for anything else."""
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _int(value: Any) -> int:
    n = _num(value)
    return 0 if n is None else int(n)


def _float(value: Any) -> float:
    n = _num(value)
    return 0.0 if n is None else float(n)


def _list(value: Any) -> list:
    return list(value) if isinstance(value, (list, tuple)) else []


def _dicts(value: Any) -> list[dict]:
    return [d for d in _list(value) if isinstance(d, dict)]


@dataclass(frozen=True)
class ExpertKey:
    """One expert: the peer hosting it and the expert's id on that peer."""

    peer_id: str
    expert_id: str

    def to_json(self) -> dict:
        return {"peer_id": self.peer_id, "expert_id": self.expert_id}

    @classmethod
    def from_json(cls, d: Optional[dict]) -> Optional["ExpertKey"]:
        if not isinstance(d, dict):
            return None
        return cls(_str(d.get("peer_id")), _str(d.get("expert_id")))


@dataclass(frozen=True)
class SelectionReport:
    """How the selection policy chose the first respondents."""

    policy: str
    reason: str
    scores: tuple[tuple[str, str, float], ...] = ()  # (peer, expert_id, score), at most 16

    def to_json(self) -> dict:
        return {"policy": self.policy, "reason": self.reason, "scores": [list(s) for s in self.scores]}

    @classmethod
    def from_json(cls, d: Optional[dict]) -> "SelectionReport":
        d = d if isinstance(d, dict) else {}
        return cls(_str(d.get("policy")), _str(d.get("reason")),
                   tuple(tuple(s) for s in _list(d.get("scores")) if isinstance(s, (list, tuple))))


@dataclass(frozen=True)
class RespondentReport:
    """One respondent's answer as the coordinator saw and judged it."""

    peer_id: str
    expert_id: str
    status: str  # ok | busy | error | rejected | invalid | timeout | slow | gone
    latency_ms: int = 0
    completion_tokens: int = 0
    prompt_tokens: int = 0
    gen_ms: int = 0
    score: Optional[float] = None
    error: str = ""
    confidence: Optional[float] = None
    signal: Optional[str] = None  # the signal its rating came from; None: not rated
    signals: dict = field(default_factory=dict)  # signal -> score
    passages: tuple[str, ...] = ()  # knowledge passages the expert answered from (ids)

    def to_json(self) -> dict:
        out = {"peer_id": self.peer_id, "expert_id": self.expert_id, "status": self.status,
               "latency_ms": self.latency_ms, "completion_tokens": self.completion_tokens,
               "prompt_tokens": self.prompt_tokens, "gen_ms": self.gen_ms, "score": self.score,
               "error": self.error, "confidence": self.confidence, "signal": self.signal,
               "signals": dict(self.signals)}
        if self.passages:  # only knowledge experts use passages
            out["passages"] = list(self.passages)
        return out

    @classmethod
    def from_json(cls, d: dict) -> "RespondentReport":
        signals = d.get("signals")
        return cls(_str(d.get("peer_id")), _str(d.get("expert_id")), _str(d.get("status")),
                   _int(d.get("latency_ms")), _int(d.get("completion_tokens")),
                   _int(d.get("prompt_tokens")), _int(d.get("gen_ms")), _num(d.get("score")),
                   _str(d.get("error")), _num(d.get("confidence")), _opt_str(d.get("signal")),
                   dict(signals) if isinstance(signals, dict) else {},
                   tuple(p for p in d.get("passages") or () if isinstance(p, str))
                   if isinstance(d.get("passages"), list) else ())


@dataclass(frozen=True)
class Escalation:
    """A second expert asked because a single answer may be wrong."""

    reason: str
    confidence: Optional[float]
    below: float
    to: tuple[ExpertKey, ...]

    def to_json(self) -> dict:
        return {"reason": self.reason, "confidence": self.confidence, "below": self.below,
                "to": [k.to_json() for k in self.to]}

    @classmethod
    def from_json(cls, d: Optional[dict]) -> Optional["Escalation"]:
        if not isinstance(d, dict):
            return None
        return cls(_str(d.get("reason")), _num(d.get("confidence")), _float(d.get("below")),
                   tuple(ExpertKey(_str(k.get("peer_id")), _str(k.get("expert_id"))) for k in _dicts(d.get("to"))))


@dataclass(frozen=True)
class JudgeReport:
    """One peer judge's vote: whose answer it picked, and its weight."""

    peer_id: str
    expert_id: str
    status: str
    weight: float
    pick: Optional[ExpertKey]

    def to_json(self) -> dict:
        return {"peer_id": self.peer_id, "expert_id": self.expert_id, "status": self.status,
                "weight": self.weight, "pick": None if self.pick is None else self.pick.to_json()}

    @classmethod
    def from_json(cls, d: dict) -> "JudgeReport":
        return cls(_str(d.get("peer_id")), _str(d.get("expert_id")), _str(d.get("status")),
                   _float(d.get("weight")), ExpertKey.from_json(d.get("pick")))


@dataclass(frozen=True)
class Provenance:
    """Where an answer came from: who was asked, what each answered, how the
    answer was chosen. ``to_json`` is the ``p2pnet`` object of the API's
    answers (without ``query_id``, which the result carries)."""

    domain: str = ""
    selection: Optional[SelectionReport] = None
    respondents: tuple[RespondentReport, ...] = ()
    chosen: Optional[ExpertKey] = None
    reason: str = ""
    tiebreakers: tuple[ExpertKey, ...] = ()
    escalated: Optional[Escalation] = None
    escalation_declined: Optional[str] = None
    judges: Optional[tuple[JudgeReport, ...]] = None  # None: no peer judging asked
    cascade: Optional[dict] = None  # the cascade's report (``Cascade``), when one answered
    routing: Optional[dict] = None  # how the domain was inferred from the question (``domains.Route``)
    # respondent peer id -> the path to it when the answer came: direct | hole-punched | relayed |
    # not-connected (gossip only); p2pnet.gossip.relay.NatService.paths
    paths: Optional[dict] = None

    def to_json(self) -> dict[str, Any]:
        if replace(self, cascade=None) == Provenance():  # nobody was asked: at most the cascade's report
            return {} if self.cascade is None else {"cascade": dict(self.cascade)}
        out: dict[str, Any] = {
            "domain": self.domain,
            "selection": None if self.selection is None else self.selection.to_json(),
            "tiebreakers": [k.to_json() for k in self.tiebreakers],
            "escalated": None if self.escalated is None else self.escalated.to_json(),
            "escalation_declined": self.escalation_declined,
            "respondents": [r.to_json() for r in self.respondents],
            "chosen": None if self.chosen is None else self.chosen.to_json(),
            "reason": self.reason,
        }
        if self.judges is not None:
            out["judges"] = [j.to_json() for j in self.judges]
        if self.cascade is not None:
            out["cascade"] = dict(self.cascade)
        if self.routing is not None:
            out["routing"] = dict(self.routing)
        if self.paths is not None:
            out["paths"] = dict(self.paths)
        return out

    @classmethod
    def from_json(cls, d: Optional[dict]) -> "Provenance":
        """A provenance read back from JSON (an API answer); unknown keys are
        ignored and missing ones take their defaults."""
        d = d if isinstance(d, dict) else {}
        judges = d.get("judges")
        return cls(
            domain=_str(d.get("domain")),
            selection=SelectionReport.from_json(d["selection"]) if isinstance(d.get("selection"), dict) else None,
            respondents=tuple(RespondentReport.from_json(r) for r in _dicts(d.get("respondents"))),
            chosen=ExpertKey.from_json(d.get("chosen")),
            reason=_str(d.get("reason")),
            tiebreakers=tuple(ExpertKey(_str(k.get("peer_id")), _str(k.get("expert_id")))
                              for k in _dicts(d.get("tiebreakers"))),
            escalated=Escalation.from_json(d.get("escalated")),
            escalation_declined=_opt_str(d.get("escalation_declined")),
            judges=tuple(JudgeReport.from_json(j) for j in _dicts(judges)) if isinstance(judges, list) else None,
            cascade=dict(d["cascade"]) if isinstance(d.get("cascade"), dict) else None,
            routing=dict(d["routing"]) if isinstance(d.get("routing"), dict) else None,
            paths={k: v for k, v in d["paths"].items() if isinstance(k, str) and isinstance(v, str)}
            if isinstance(d.get("paths"), dict) else None,
        )


# ------------------------------------------------------------------ result

@dataclass(frozen=True)
class ChatResult:
    text: str
    finish_reason: str  # one of FINISH_REASONS
    prompt_tokens: int
    completion_tokens: int
    query_id: str
    provenance: Provenance = field(default_factory=Provenance)


OnDelta = Callable[[str], Awaitable[None]]


class QueryService(Protocol):
    """Implemented by the node's query coordinator."""

    def list_models(self) -> list[dict[str, Any]]:
        """Each: {"id": str, "owned_by": str, "created": int, ...extra JSON-able keys}."""
        ...

    async def chat(self, req: ChatRequest, on_delta: OnDelta | None = None) -> ChatResult:
        """Answer `req`. When streaming, `on_delta` is awaited with each new
        piece of text, in order (their concatenation should be ChatResult.text).
        Raises QueryError subclasses for expected failures."""
        ...
