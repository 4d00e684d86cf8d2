"""Picking the best of several answers, and scoring each for the ledger.

Pure functions. The default evaluator prefers agreement among answers, then
the fastest good answer. Agreement between two answers is exact on their
normalized short answers when both are closed-form ("Paris.", "The answer is
4."), phrase containment when one is, and token-set similarity otherwise.

Several signals can score one answer (agreement, peer judges, probes); they
are mixed into one rating score with :class:`SignalWeights` (see
docs/evaluation.md)."""

from __future__ import annotations

import math
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, fields
from typing import Mapping, Optional, Sequence

from p2pnet import wire


@dataclass(frozen=True)
class Candidate:
    """One answer as the coordinator received it."""

    peer: str
    expert_id: str
    status: str  # ok | busy | error | cancelled | timeout | invalid | rejected; slow | gone (the coordinator's)
    text: str = ""
    latency_ms: int = 0
    completion_tokens: int = 0
    finish_reason: str = ""
    confidence: Optional[float] = None  # the expert's own, if its engine reports one


@dataclass(frozen=True)
class Evaluation:
    chosen: Optional[int]       # index into the candidates, None if no usable answer
    scores: tuple               # per candidate: float in [0,1], or None (no rating)
    reason: str
    undecided: bool = False     # several usable answers and no majority among them:
                                # one more opinion would decide (see Coordinator)


class Evaluator(ABC):
    @abstractmethod
    def evaluate(self, candidates: Sequence[Candidate]) -> Evaluation: ...


# ------------------------------------------------------------------ signals

PROBE, JUDGE, AGREEMENT, FEEDBACK, FAILURE = wire.RATING_SIGNALS
MIXED_SIGNALS = (PROBE, JUDGE, AGREEMENT)
"""Signals that can score the same answer, in the order their names are joined."""


@dataclass(frozen=True)
class SignalWeights:
    """Relative weight of each evaluation signal; 0 turns a signal off.

    ``agreement`` and ``judge`` are mixed into one score per answer (weighted
    mean of the signals present). A ``probe`` grade, when present, is the
    score by itself (a known answer beats any opinion). ``feedback`` records
    stand alone: a weight of 0 stops them from being recorded. How much a
    record counts in reputation is the chain's ``weight_<signal>_ppm``
    (consensus.genesis.Params), not this."""

    agreement: float = 1.0
    judge: float = 2.0
    probe: float = 1.0
    feedback: float = 1.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not (isinstance(value, (int, float)) and 0.0 <= value <= 100.0):
                raise ValueError(f"signal weight {f.name} must lie in [0, 100], not {value!r}")

    @classmethod
    def from_mapping(cls, values: Mapping[str, float]) -> "SignalWeights":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown signal {unknown[0]!r}; known: {', '.join(sorted(known))}")
        return cls(**{k: float(v) for k, v in values.items()})


def combine(signals: Mapping[str, float], weights: SignalWeights) -> Optional[tuple[float, str]]:
    """(score, signal name) for one answer from its signal values, or None if
    no signal with a positive weight is present. A probe grade wins outright."""
    if PROBE in signals:
        return (float(signals[PROBE]), PROBE) if weights.probe > 0 else None
    present = [(name, signals[name], getattr(weights, name)) for name in MIXED_SIGNALS
               if name in signals and getattr(weights, name) > 0]
    if not present:
        return None
    total = sum(w for _, _, w in present)
    score = sum(v * w for _, v, w in present) / total
    return round(min(1.0, max(0.0, score)), 4), "+".join(name for name, _, _ in present)


# ------------------------------------------------------------- normalizing

_WORD = re.compile(r"[a-z0-9]+")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_FILLER = re.compile(r"^(?:the\s+)?(?:final\s+|correct\s+)?(?:answer|result)\s+(?:is|=)\s+")
_ARTICLES = frozenset({"a", "an", "the"})
SHORT_WORDS = 3
"""An answer of at most this many normalized words is closed-form."""
NUMERIC_WORDS = 16
"""A longer answer holding a number is closed-form (its last number) up to this length."""


def tokens(text: str) -> frozenset:
    return frozenset(_WORD.findall(text.lower()))


def similarity(a: frozenset, b: frozenset) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def normalize(text: str) -> str:
    """Lower case, words and numbers only (decimal points kept), one space apart."""
    text = re.sub(r"(?<=\d),(?=\d{3})", "", text.lower())  # 1,000 -> 1000
    return " ".join(re.findall(r"-?\d+(?:\.\d+)?|[a-z0-9]+", text))


def short_answer(text: str) -> Optional[str]:
    """The normalized short answer of a closed-form answer, else None.

    "Paris." -> "paris"; "The answer is 4." -> "4"; "2 + 2 = 4" -> "4";
    a long free-form answer -> None."""
    norm = _FILLER.sub("", normalize(text))
    words = [w for w in norm.split() if w not in _ARTICLES]
    if not words:
        return None
    numbers = _NUMBER.findall(norm)
    if numbers and len(words) <= NUMERIC_WORDS:
        return _canonical_number(numbers[-1])
    if len(words) <= SHORT_WORDS:
        return " ".join(words)
    return None


def _canonical_number(s: str) -> str:
    if "." in s:
        s = s.rstrip("0").rstrip(".")
    return s


def contains_phrase(text: str, phrase: str) -> bool:
    """Whether normalized ``phrase`` occurs in normalized ``text`` as whole words."""
    p = normalize(phrase)
    return bool(p) and f" {p} " in f" {normalize(text)} "


def agreement(a: str, b: str) -> float:
    """How much two answers agree, in [0, 1]."""
    sa, sb = short_answer(a), short_answer(b)
    if sa is not None and sb is not None:
        return 1.0 if sa == sb else 0.0
    if sa is not None:
        return 1.0 if contains_phrase(b, sa) else 0.0
    if sb is not None:
        return 1.0 if contains_phrase(a, sb) else 0.0
    return similarity(tokens(a), tokens(b))


# ------------------------------------------------------------- evaluators

def is_usable(c: Candidate) -> bool:
    """An answer that can be compared and delivered: ok and not blank."""
    return c.status == "ok" and bool(c.text.strip())


def failure_scores(candidates: Sequence[Candidate]) -> list:
    """0.0 for a failed answer (error, timeout, slow, gone, invalid, empty), None otherwise."""
    return [0.0 if c.status in ("error", "timeout", "slow", "gone", "invalid")
            or (c.status == "ok" and not c.text.strip()) else None for c in candidates]


AGREES = 0.5
"""Two answers with at least this agreement count as the same answer."""


class AgreementEvaluator(Evaluator):
    """Majority among the usable answers.

    The answer that agrees with the most others leads; if it and the answers
    agreeing with it (agreement >= AGREES) are a strict majority, every answer
    scores its agreement with the leader (for closed-form answers: 1.0 for
    the majority, 0.0 for the rest) and the leader its closest agreement
    within the majority. Without a majority (two answers that
    differ, three that all differ) every usable answer scores its mean
    agreement with the others, and the evaluation is ``undecided``: the
    coordinator may ask one more expert to break the tie. With one usable
    answer there is no evidence of quality: it is chosen but not rated.
    Failed answers (error, timeout, slow, gone, invalid) score 0; busy ones are not rated."""

    def evaluate(self, candidates: Sequence[Candidate]) -> Evaluation:
        usable = [i for i, c in enumerate(candidates) if is_usable(c)]
        scores = failure_scores(candidates)
        if not usable:
            return Evaluation(None, tuple(scores), "no usable answer")
        if len(usable) == 1:
            return Evaluation(usable[0], tuple(scores), "only one usable answer")
        agree = {(i, j): agreement(candidates[i].text, candidates[j].text) for i in usable for j in usable if i < j}

        def a(i: int, j: int) -> float:
            return 1.0 if i == j else agree[(min(i, j), max(i, j))]

        support = {i: sum(a(i, j) for j in usable if j != i) for i in usable}
        leader = max(usable, key=lambda i: (round(support[i], 4), -candidates[i].latency_ms, -i))
        majority = [i for i in usable if a(i, leader) >= AGREES]
        n = len(usable)
        if 2 * len(majority) > n:
            for i in usable:
                scores[i] = round(a(i, leader), 4)
            # the leader itself scores its closest agreement within the majority
            scores[leader] = round(max(a(leader, j) for j in majority if j != leader), 4)
            best = min(majority, key=lambda i: (candidates[i].latency_ms, i)) if all(
                a(i, leader) == 1.0 for i in majority) else leader
            return Evaluation(best, tuple(scores),
                              f"majority answer ({len(majority)} of {n} agree), fastest of them")
        for i in usable:
            scores[i] = round(support[i] / (n - 1), 4)
        best = max(usable, key=lambda i: (round(scores[i], 2), -candidates[i].latency_ms))
        return Evaluation(best, tuple(scores),
                          f"no majority among {n} answers: highest agreement ({scores[best]:.2f}), then fastest",
                          undecided=True)


class FastestEvaluator(Evaluator):
    """The first usable answer wins; nothing is rated but failures."""

    def evaluate(self, candidates: Sequence[Candidate]) -> Evaluation:
        usable = [i for i, c in enumerate(candidates) if is_usable(c)]
        scores = tuple(failure_scores(candidates))
        if not usable:
            return Evaluation(None, scores, "no usable answer")
        best = min(usable, key=lambda i: candidates[i].latency_ms)
        return Evaluation(best, scores, "fastest usable answer")


def by_voice(evaluator: Evaluator, candidates: Sequence[Candidate], voices: Sequence) -> Evaluation:
    """Evaluate with copies counted once. Candidates with the same ``voices``
    key (not None) are one independent answer: copies of one model at
    temperature 0 that gave the same text agree because they are the same
    computation, not because the answer is right. The evaluator sees one
    answer per voice (its fastest copy); every copy gets its voice's score,
    and a voice that is the only one is not rated."""
    groups: dict = {}
    for i, voice in enumerate(voices):
        groups.setdefault(i if voice is None else ("voice", voice), []).append(i)
    if all(len(members) == 1 for members in groups.values()):
        return evaluator.evaluate(candidates)
    members = list(groups.values())
    reps = [min(m, key=lambda i: (candidates[i].latency_ms, i)) for m in members]
    ev = evaluator.evaluate([candidates[r] for r in reps])
    scores: list = [None] * len(candidates)
    for g, m in enumerate(members):
        for i in m:
            scores[i] = ev.scores[g]
    copies = len(candidates) - len(members)
    return Evaluation(None if ev.chosen is None else reps[ev.chosen], tuple(scores),
                      f"{ev.reason} ({copies} cop{'y' if copies == 1 else 'ies'} of the same model's "
                      f"same answer counted once)", ev.undecided)


EVALUATORS = {"agreement": AgreementEvaluator, "fastest": FastestEvaluator}


# --------------------------------------------------- choosing by standing

WRONG_ANSWERS = 10
"""For the vote: a wrong answer is one of about this many equally likely ones."""


def vote_weight(quality: float, wrong_answers: int = WRONG_ANSWERS) -> float:
    """The say of an expert right with probability ``quality`` (``q``, kept
    within [0.01, 0.99]) in a vote on answers with many possible wrong ones:
    ``ln(1 + m q / (1 - q))``. An answer's chance of being right grows by the
    factor ``m q / (1 - q)`` for each independent expert that gives it (a
    wrong expert gives that same answer with chance ``(1 - q) / m``), so two
    experts that agree outweigh one better expert unless it is much better:
    two unknown experts (0.5: 2.40 each) against one of 0.9 (4.51) or one
    of 0.96 (5.48). ``1 +`` keeps every weight positive, and experts of equal
    standing count equally (a head count)."""
    q = min(0.99, max(0.01, float(quality)))
    return math.log1p(wrong_answers * q / (1.0 - q))


def weighted_choice(candidates: Sequence[Candidate], weights: Sequence[float],
                    voices: Optional[Sequence] = None) -> Optional[tuple[int, str]]:
    """The answer to deliver when agreement counts by standing: usable answers
    that agree (agreement >= AGREES with the group's first) form a group; a
    group's weight is the sum of its members' ``weights`` (copies, members
    with the same ``voices`` key, count once: the highest). The heaviest
    group wins; within it the member with the highest weight, then the
    fastest. Returns (index, reason), or None without a usable answer."""
    usable = [i for i, c in enumerate(candidates) if is_usable(c)]
    if not usable:
        return None
    voices = voices if voices is not None else [None] * len(candidates)
    # members by weight, then speed: a group's first is its best-standing answer
    order = sorted(usable, key=lambda i: (-weights[i], candidates[i].latency_ms, i))
    groups: list[list[int]] = []
    for i in order:
        for g in groups:
            if agreement(candidates[g[0]].text, candidates[i].text) >= AGREES:
                g.append(i)
                break
        else:
            groups.append([i])

    def weight(g: list[int]) -> float:
        by_voice: dict = {}
        for i in g:
            v = i if voices[i] is None else ("voice", voices[i])
            by_voice[v] = max(by_voice.get(v, 0.0), weights[i])
        return sum(by_voice.values())

    ranked = sorted(groups, key=lambda g: (-round(weight(g), 9), order.index(g[0])))
    best = ranked[0]
    total = sum(weight(g) for g in groups)
    reason = (f"answer of {len(best)} of {len(usable)} usable with {weight(best):.2f} of {total:.2f} "
              f"vote weight by standing, its best-standing expert's")
    return best[0], reason
