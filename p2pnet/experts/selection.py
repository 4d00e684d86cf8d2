"""Choosing respondents for a query. Pure functions of the candidates, their
standing, and an injected RNG; a policy explains its choice."""

from __future__ import annotations

import math
import random
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

from p2pnet.experts.directory import ExpertRef

# (respondent peer, domain) -> (posterior mean quality in [0,1], evidence count)
Standing = Callable[[bytes, str], tuple[float, float]]


def no_standing(peer: bytes, domain: str) -> tuple[float, float]:
    return (0.5, 0.0)


@dataclass(frozen=True)
class Selection:
    chosen: tuple[ExpertRef, ...]
    reason: str
    scores: tuple[tuple[str, str, float], ...] = ()  # (peer, expert_id, score) for provenance


class SelectionPolicy(ABC):
    name = "policy"

    @abstractmethod
    def score(self, ref: ExpertRef, domain: str, standing: Standing, total_evidence: float,
              rng: random.Random) -> float:
        """Higher is better."""

    def select(self, candidates: Sequence[ExpertRef], k: int, domain: str,
               standing: Standing = no_standing, rng: Optional[random.Random] = None) -> Selection:
        rng = rng or random.Random(0)
        if not candidates or k <= 0:
            return Selection((), "no candidates")
        free = [r for r in candidates if r.card.load < r.card.max_concurrency]
        pool = free or list(candidates)
        total = sum(standing(r.peer, domain)[1] for r in pool)
        scored = sorted(((self.score(r, domain, standing, total, rng), r) for r in pool),
                        key=lambda sr: (-sr[0], sr[1].peer, sr[1].card.expert_id))
        chosen = tuple(r for _, r in scored[:k])
        reason = (f"{self.name}: top {len(chosen)} of {len(pool)} "
                  f"{'free ' if free else 'busy '}experts for {domain!r}")
        return Selection(chosen, reason, tuple((r.peer_str, r.card.expert_id, round(s, 4)) for s, r in scored))


class UcbCostPolicy(SelectionPolicy):
    """quality - lambda * price, with a UCB exploration bonus and a load penalty.

    quality is the ledger's posterior mean for (peer, domain); the bonus
    ``c * sqrt(ln(1 + N) / (1 + n))`` gives newcomers a bounded share; a
    small random tie-break spreads load between equals."""

    name = "ucb-cost"

    def __init__(self, cost_weight: float = 0.1, exploration: float = 0.3, load_weight: float = 0.2) -> None:
        self.cost_weight = cost_weight
        self.exploration = exploration
        self.load_weight = load_weight

    def score(self, ref, domain, standing, total_evidence, rng) -> float:
        mean, n = standing(ref.peer, domain)
        bonus = self.exploration * math.sqrt(math.log1p(total_evidence) / (1.0 + n))
        load = ref.card.load / max(1, ref.card.max_concurrency)
        return mean + bonus - self.cost_weight * ref.card.price_per_1k - self.load_weight * load + rng.random() * 1e-3


class RandomPolicy(SelectionPolicy):
    """Uniformly random (the baseline the simulator compares against)."""

    name = "random"

    def score(self, ref, domain, standing, total_evidence, rng) -> float:
        return rng.random()


POLICIES = {"ucb-cost": UcbCostPolicy, "random": RandomPolicy}
