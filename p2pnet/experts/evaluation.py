"""Picking the best of several answers, and scoring each for the ledger.

Pure functions. The default evaluator prefers agreement among answers
(token-set similarity to the others), then the fastest good answer."""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Optional, Sequence


@dataclass(frozen=True)
class Candidate:
    """One answer as the coordinator received it."""

    peer: str
    expert_id: str
    status: str  # ok | busy | error | cancelled | timeout | invalid
    text: str = ""
    latency_ms: int = 0
    completion_tokens: int = 0
    finish_reason: str = ""


@dataclass(frozen=True)
class Evaluation:
    chosen: Optional[int]       # index into the candidates, None if no usable answer
    scores: tuple               # per candidate: float in [0,1], or None (no rating)
    reason: str


class Evaluator(ABC):
    @abstractmethod
    def evaluate(self, candidates: Sequence[Candidate]) -> Evaluation: ...


_WORD = re.compile(r"[a-z0-9]+")


def tokens(text: str) -> frozenset:
    return frozenset(_WORD.findall(text.lower()))


def similarity(a: frozenset, b: frozenset) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


class AgreementEvaluator(Evaluator):
    """Score = mean similarity to the other usable answers; with one usable
    answer there is no evidence of quality, so it is chosen but not rated.
    Failed answers (error, timeout, invalid) score 0; busy ones are not rated."""

    def evaluate(self, candidates: Sequence[Candidate]) -> Evaluation:
        usable = [i for i, c in enumerate(candidates) if c.status == "ok" and c.text.strip()]
        scores: list = []
        for c in candidates:
            scores.append(0.0 if c.status in ("error", "timeout", "invalid") or (c.status == "ok" and not c.text.strip())
                          else None)
        if not usable:
            return Evaluation(None, tuple(scores), "no usable answer")
        if len(usable) == 1:
            i = usable[0]
            return Evaluation(i, tuple(scores), "only one usable answer")
        toks = {i: tokens(candidates[i].text) for i in usable}
        for i in usable:
            others = [similarity(toks[i], toks[j]) for j in usable if j != i]
            scores[i] = round(sum(others) / len(others), 4)
        best = max(usable, key=lambda i: (round(scores[i], 2), -candidates[i].latency_ms))
        return Evaluation(best, tuple(scores),
                          f"highest agreement ({scores[best]:.2f}) among {len(usable)} answers, then fastest")


class FastestEvaluator(Evaluator):
    """The first usable answer wins; nothing is rated but failures."""

    def evaluate(self, candidates: Sequence[Candidate]) -> Evaluation:
        usable = [i for i, c in enumerate(candidates) if c.status == "ok" and c.text.strip()]
        scores = tuple(0.0 if c.status in ("error", "timeout", "invalid") else None for c in candidates)
        if not usable:
            return Evaluation(None, scores, "no usable answer")
        best = min(usable, key=lambda i: candidates[i].latency_ms)
        return Evaluation(best, scores, "fastest usable answer")


EVALUATORS = {"agreement": AgreementEvaluator, "fastest": FastestEvaluator}
