"""Which domain a question belongs to, from what the experts announce.

Users do not name domains. Each knowledge expert's model card carries a
:class:`TermSummary` of its knowledge base: a Bloom filter of the terms its
passages use (``knowledge.tokens``, numbers left out), a few kilobytes. The
coordinator scores the question's terms against the summaries the network
announces (:func:`infer`) and routes the query to the best domain's experts,
or to the generalists ("general") when no domain knows enough of the
question. The prompt never leaves the node for this: the inference is local,
on announced data, and the prompt stays sealed to whoever answers.

Scoring (pure, deterministic): a question term known to ``df`` of the ``D``
announcing domains weighs ``log(1 + D / df)`` (a term only one domain knows
weighs most), a term no domain knows weighs ``log(1 + D)``. A domain's score
is the weight of the terms it knows over the weight of all the question's
terms: 1.0 when it knows every term. The best domain wins if its score is at
least ``threshold`` and no other domain ties it; otherwise the fallback.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Mapping, Optional, Sequence

from p2pnet import wire
from p2pnet.experts.errors import ExpertsError
from p2pnet.experts.knowledge import STOP_WORDS, tokens

GENERAL = "general"
MAX_SUMMARY_BYTES = wire.ModelCard.MAX_TERMS_BYTES
"""The largest Bloom filter a card may carry."""
MAX_HASHES = 16
FALSE_POSITIVE_RATE = 0.01
MAX_FALSE_POSITIVE_RATE = 0.05
"""A summary whose bits would take more than this share of unknown terms
for known (fill ** hashes) is ignored: a saturated filter "knows" every
question and would pull every query to its domain."""
DEFAULT_THRESHOLD = 0.5
"""A domain must know at least this share (by weight) of the question's terms."""

_NUMBER = re.compile(r"\d")
ROUTING_STOP = frozenset({
    # question and request words that say nothing about a domain
    "can", "could", "would", "should", "you", "your", "me", "my", "i", "we", "our", "us", "please", "tell",
    "give", "know", "explain", "about", "answer", "question", "like", "want", "need", "help", "between",
    "when", "where", "why", "some", "any", "all", "from", "than", "so", "just", "also", "very", "most",
    "more", "less", "same", "other", "been", "were", "being", "here", "ll", "ve",
})


_STOP_WORDS = STOP_WORDS | ROUTING_STOP


class SummaryError(ExpertsError, ValueError):
    """A term summary that cannot be built or read."""


def _positions(term: str, hashes: int, m: int) -> list[int]:
    digest = hashlib.sha256(term.encode("utf-8")).digest()
    return [int.from_bytes(digest[2 * i:2 * i + 4], "big") % m for i in range(hashes)]


@dataclass(frozen=True)
class TermSummary:
    """A Bloom filter of terms: ``bits`` (m = 8 x len(bits) bits) and the
    number of bit positions per term, each from the term's sha256."""

    bits: bytes
    hashes: int

    def __post_init__(self) -> None:
        if not 0 < len(self.bits) <= MAX_SUMMARY_BYTES or not 1 <= self.hashes <= MAX_HASHES:
            raise SummaryError(f"a term summary has 1..{MAX_SUMMARY_BYTES} bytes and 1..{MAX_HASHES} hashes")

    @classmethod
    def build(cls, terms: Iterable[str], *, fp_rate: float = FALSE_POSITIVE_RATE,
              max_bytes: int = MAX_SUMMARY_BYTES) -> "TermSummary":
        """The smallest filter holding ``terms`` (in the order given) at
        ``fp_rate``; terms past what ``max_bytes`` can hold at that rate are
        left out."""
        unique = list(dict.fromkeys(terms))
        per_term = -math.log(fp_rate) / math.log(2) ** 2  # bits per term
        capacity = max(1, int(max_bytes * 8 / per_term))
        unique = unique[:capacity]
        m = max(64, math.ceil(max(1, len(unique)) * per_term / 8) * 8)
        hashes = max(1, min(MAX_HASHES, round(m / max(1, len(unique)) * math.log(2))))
        bits = bytearray(m // 8)
        for term in unique:
            for p in _positions(term, hashes, m):
                bits[p >> 3] |= 1 << (p & 7)
        return cls(bytes(bits), hashes)

    def __contains__(self, term: str) -> bool:
        m = len(self.bits) * 8
        return all(self.bits[p >> 3] >> (p & 7) & 1 for p in _positions(term, self.hashes, m))

    @property
    def fill(self) -> float:
        """The share of bits set (a full filter knows every term)."""
        return sum(bin(b).count("1") for b in self.bits) / (len(self.bits) * 8)

    @property
    def false_positive_rate(self) -> float:
        """The chance that a term it does not hold looks held."""
        return self.fill ** self.hashes


def _telling(term: str) -> bool:
    if _NUMBER.search(term):
        return False
    if term.startswith("^"):  # "Fe", "DEU", "CAN" tell; a sentence's "The", "Can", "How" do not
        word = term[1:]
        return not (word.lower() in _STOP_WORDS and not (len(word) > 1 and word.isupper()))
    return term not in ROUTING_STOP


def routing_terms(text: str) -> list[str]:
    """The terms of ``text`` that can tell domains apart: the index's terms
    (``knowledge.tokens``) without numbers and routing stop words, each once."""
    return list(dict.fromkeys(t for t in tokens(text) if _telling(t)))


def summarize(texts: Iterable[str], **kwargs) -> TermSummary:
    """The term summary of a knowledge base's passage texts. When there are
    more terms than the filter holds, the terms used by the most passages go
    first (then alphabetical): the filter keeps the domain's common words."""
    df: Counter = Counter()
    for text in texts:
        df.update(set(routing_terms(text)))
    ordered = sorted(df, key=lambda t: (-df[t], t))
    return TermSummary.build(ordered, **kwargs)


@dataclass(frozen=True)
class Route:
    """Where a query goes: its ``domain``, whether it was ``inferred`` from
    the question, and the scores of the domains it was chosen among (best
    first, at most 8)."""

    domain: str
    inferred: bool = False
    score: float = 0.0
    scores: tuple[tuple[str, float], ...] = ()
    reason: str = ""

    def to_json(self) -> dict:
        return {"domain": self.domain, "inferred": self.inferred, "score": round(self.score, 4),
                "scores": [[d, round(s, 4)] for d, s in self.scores], "reason": self.reason}


def domain_summaries(cards: Iterable) -> dict[str, list[TermSummary]]:
    """Per domain, the term summaries announced for it by ``cards`` (model
    cards; those without a usable summary, and "general", are left out)."""
    out: dict[str, list[TermSummary]] = {}
    seen: set = set()
    for card in cards:
        bits, hashes = getattr(card, "terms", b""), getattr(card, "terms_hashes", 0)
        if not bits or not hashes:
            continue
        try:
            summary = TermSummary(bytes(bits), int(hashes))
        except SummaryError:
            continue
        if summary.false_positive_rate > MAX_FALSE_POSITIVE_RATE:
            continue  # saturated (or made to attract every question): says nothing
        for domain in card.domains:
            if domain != GENERAL and (domain, summary) not in seen:
                seen.add((domain, summary))
                out.setdefault(domain, []).append(summary)
    return out


def score(question: str, summaries: Mapping[str, Sequence[TermSummary]]) -> dict[str, float]:
    """Each domain's share (by weight) of the question's terms it knows."""
    terms = routing_terms(question)
    if not terms or not summaries:
        return {}
    known = {d: {t for t in terms if any(t in s for s in ss)} for d, ss in summaries.items()}
    n = len(summaries)
    weight = {}
    for t in terms:
        df = sum(1 for k in known.values() if t in k)
        weight[t] = math.log(1 + n / df) if df else math.log(1 + n)
    total = sum(weight.values())
    return {d: sum(weight[t] for t in k) / total for d, k in known.items()}


def infer(question: str, cards: Iterable, *, threshold: float = DEFAULT_THRESHOLD,
          fallback: str = GENERAL) -> Route:
    """The domain ``question`` belongs to, judged by the term summaries on
    ``cards``; ``fallback`` when none knows enough of it or two tie."""
    scores = score(question, domain_summaries(cards))
    ranked = tuple(sorted(scores.items(), key=lambda kv: (-kv[1], kv[0])))[:8]
    if not ranked or ranked[0][1] == 0:
        return Route(fallback, True, 0.0, ranked, "no announced domain knows the question's terms")
    best, top = ranked[0]
    if top < threshold:
        return Route(fallback, True, top, ranked, f"best domain {best!r} knows {top:.0%} of the question's "
                                                   f"terms (< {threshold:.0%})")
    if len(ranked) > 1 and ranked[1][1] >= top:
        return Route(fallback, True, top, ranked, f"domains {best!r} and {ranked[1][0]!r} tie")
    return Route(best, True, top, ranked, f"{best!r} knows {top:.0%} of the question's terms")


def resolve(domain: Optional[str], question: str, cards: Iterable, **kwargs) -> Route:
    """The request's domain as it is (lower-case) when it names one;
    otherwise the one :func:`infer` finds for ``question``."""
    if domain:
        return Route(domain.lower(), False, 1.0, (), "named by the request")
    return infer(question, cards, **kwargs)


def last_user_text(messages: Sequence[tuple[str, str]]) -> str:
    """The question of a chat: its last user message ("" if none)."""
    for role, content in reversed(messages):
        if role == "user":
            return content
    return ""
