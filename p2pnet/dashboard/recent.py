"""The last queries this node's API answered, as the dashboard shows them.

The OpenAI-compatible routes (p2pnet.api.openai) call ``record`` once per
chat completion, answered or failed. Only a summary of the provenance is kept
(who was asked, their latencies and scores, which answer was chosen and why);
never the prompt, the answer, the cascade's local answer or the ``user``
field. The list is bounded: the oldest summary goes when a new one comes.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any, Callable, Optional

from p2pnet.query import ChatRequest, ChatResult, ExpertKey, Provenance, RespondentReport

MAX_QUERIES = 50
_TEXT_MAX = 200  # characters kept of a reason or an error message
_ID_MAX = 80  # characters kept of a model or expert id

_RESPONDENT_KEYS = ("peer_id", "expert_id", "status", "latency_ms", "completion_tokens", "score",
                    "confidence", "signal", "error")
_CASCADE_KEYS = ("path", "confidence", "method", "threshold", "reason")  # not "local_text"


def _short(value: Any, limit: int = _TEXT_MAX) -> Any:
    return value[:limit] if isinstance(value, str) else value


def _number(value: Any) -> Optional[float]:
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _respondent(r: RespondentReport) -> dict:
    out = {key: _short(getattr(r, key), _ID_MAX if key.endswith("_id") else _TEXT_MAX) for key in _RESPONDENT_KEYS}
    for key in ("latency_ms", "completion_tokens", "score", "confidence"):
        out[key] = _number(out[key])
    return out


def _who(key: Optional[ExpertKey]) -> Optional[dict]:
    if key is None:
        return None
    return {"peer_id": _short(key.peer_id, _ID_MAX), "expert_id": _short(key.expert_id, _ID_MAX)}


def summarize(req: ChatRequest, result: Optional[ChatResult], error: Optional[Any], latency_ms: int,
              now_ms: int, n: int) -> dict:
    """The summary of one query; ``error`` is the HttpError it failed with."""
    out: dict = {
        "n": n,
        "time_ms": now_ms,
        "model": _short(req.model, _ID_MAX),
        "domain": _short(req.domain, _ID_MAX),
        "stream": req.stream,
        "latency_ms": latency_ms,
        "ok": result is not None,
    }
    if result is None:
        out["error"] = {"status": getattr(error, "status", 500), "code": _short(getattr(error, "code", None)),
                        "message": _short(getattr(error, "message", "") or str(error))}
        return out
    prov = result.provenance if isinstance(result.provenance, Provenance) else Provenance()
    selection, cascade = prov.selection, prov.cascade
    out.update({
        "query_id": _short(result.query_id, _ID_MAX),
        "domain": _short(prov.domain or req.domain, _ID_MAX),
        "finish_reason": result.finish_reason,
        "completion_tokens": result.completion_tokens,
        "respondents": [_respondent(r) for r in prov.respondents[:16]],
        "chosen": _who(prov.chosen),
        "reason": _short(prov.reason or None),
        "selection": {"policy": _short(selection.policy, _ID_MAX) if selection else None,
                      "reason": _short(selection.reason) if selection else None},
        "judges": len(prov.judges or ()),
        "escalated": prov.escalated is not None,
        "cascade": None if cascade is None else {key: _short(cascade.get(key)) for key in _CASCADE_KEYS},
    })
    return out


class RecentQueries:
    """The last ``size`` query summaries, newest last."""

    def __init__(self, size: int = MAX_QUERIES, clock: Callable[[], float] = time.time) -> None:
        self._items: deque = deque(maxlen=size)
        self._clock = clock
        self.count = 0  # queries recorded since the node started

    def record(self, req: ChatRequest, result: Optional[ChatResult], error: Optional[Any], latency_s: float) -> None:
        self.count += 1
        self._items.append(summarize(req, result, error, int(latency_s * 1000), int(self._clock() * 1000),
                                     self.count))

    def as_json(self) -> dict:
        return {"count": self.count, "queries": list(reversed(self._items))}
