"""Per-query records and the summary a simulation reports. Pure functions.

- accuracy: share of user queries (probes excluded) whose delivered answer is
  the right one; a failed query counts as wrong.
- oracle: the best live expert for the query's domain asked alone; its
  correctness on the very same question is known exactly.
- random: one uniformly random live expert for the domain, computed
  analytically: the mean accuracy of the live experts for the domain (not run).
- cost: each expert asked costs its ``price`` (answers are short and alike);
  probes' costs count against the policy, the oracle never probes.
- adversary share: the slots of user queries that went to adversary experts.
  Probes are the validators' measurements and go on purpose to experts whose
  verdict is open (adversaries among them); their share is reported apart,
  as ``probe_adversary_share``, and their cost counts in ``cost``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

TAIL = 0.2
"""Headline numbers are over the last 20% of queries."""
BELOW = 0.05


@dataclass
class QueryRecord:
    index: int
    domain: str
    probe: bool
    oracle_correct: bool
    oracle_cost: float
    random_correct: float
    correct: bool = False
    cost: float = 0.0
    respondents: int = 0
    adversary: int = 0
    error: str = ""
    groups: tuple = ()  # expert group of each respondent
    latency_s: Optional[float] = None  # virtual seconds from the ask to the answer (answered queries)
    escalated: bool = False  # its single answer got a second expert (low confidence)


def _ratio(a: float, b: float) -> Optional[float]:
    return round(a / b, 4) if b else None


def _stats(recs: Sequence[QueryRecord]) -> dict:
    users = [r for r in recs if not r.probe]
    n = len(users)
    slots = sum(r.respondents for r in recs)
    user_slots = sum(r.respondents for r in users)
    probe_slots = slots - user_slots
    return {
        "queries": len(recs),
        "accuracy": round(sum(r.correct for r in users) / n, 4) if n else None,
        "accuracy_oracle": round(sum(r.oracle_correct for r in users) / n, 4) if n else None,
        "accuracy_random": round(sum(r.random_correct for r in users) / n, 4) if n else None,
        "cost": round(sum(r.cost for r in recs), 4),
        "cost_best": round(sum(r.oracle_cost for r in users), 4),
        "adversary_share": round(sum(r.adversary for r in users) / user_slots, 4) if user_slots else 0.0,
        "probe_adversary_share": (round(sum(r.adversary for r in recs if r.probe) / probe_slots, 4)
                                  if probe_slots else 0.0),
        "mean_respondents": round(slots / len(recs), 4) if recs else 0.0,
        "failed": sum(1 for r in recs if r.error),
    }


def _shares(keys) -> dict:
    """Each key's share of all the keys given (one per respondent slot), sorted by key."""
    counts: dict = {}
    for key in keys:
        counts[key] = counts.get(key, 0) + 1
    total = sum(counts.values()) or 1
    return {k: round(v / total, 4) for k, v in sorted(counts.items())}


def traffic(recs: Sequence[QueryRecord]) -> dict:
    """Share of respondent slots per expert group and domain."""
    return _shares(f"{r.domain}/{g}" for r in recs for g in r.groups)


def group_share(recs: Sequence[QueryRecord]) -> dict:
    """Share of user queries' respondent slots per expert group (probes excluded)."""
    return _shares(g for r in recs if not r.probe for g in r.groups)


def windows(records: Sequence[QueryRecord], count: int) -> list[dict]:
    size = max(1, -(-len(records) // count))
    out = []
    for start in range(0, len(records), size):
        chunk = records[start:start + size]
        out.append({"end": start + len(chunk), **_stats(chunk), "group_share": group_share(chunk)})
    return out


def until_below(series: Sequence[dict], level: float = BELOW) -> Optional[int]:
    """Queries until the adversary share stays below ``level`` for good (the
    end of the last window at or above it); None if the last window is not below."""
    if not series or series[-1]["adversary_share"] >= level:
        return None
    last_bad = max((i for i, w in enumerate(series) if w["adversary_share"] >= level), default=None)
    return 0 if last_bad is None else series[last_bad]["end"]


def _percentile(values: list, q: float) -> Optional[float]:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def latency(records: Sequence[QueryRecord]) -> dict:
    """Answered user queries' latency in virtual ms (p50, p95): all of them,
    those escalated for a low confidence, and the rest."""
    users = [r for r in records if not r.probe and r.latency_s is not None]
    out = {}
    for name, group in (("all", users), ("escalated", [r for r in users if r.escalated]),
                        ("not_escalated", [r for r in users if not r.escalated])):
        ms = [r.latency_s * 1000 for r in group]
        p50, p95 = _percentile(ms, 0.5), _percentile(ms, 0.95)
        out[name] = {"queries": len(ms), "p50": None if p50 is None else round(p50, 1),
                     "p95": None if p95 is None else round(p95, 1)}
    return out


def _after(records: Sequence[QueryRecord], warmup: int) -> dict:
    """Accuracy and cost after the first ``warmup`` queries, against the oracle."""
    s = _stats(records[warmup:])
    return {"from_query": warmup, **s, "accuracy_vs_oracle": _ratio(s["accuracy"] or 0.0, s["accuracy_oracle"] or 0.0),
            "cost_vs_best": _ratio(s["cost"], s["cost_best"])}


def summarize(records: Sequence[QueryRecord], sc, extra: Optional[dict] = None) -> dict:
    tail = records[int(len(records) * (1 - TAIL)):]
    t, whole = _stats(tail), _stats(records)
    series = windows(records, sc.workload.windows)
    has_adversaries = any(g.adversary for g in sc.experts)
    return {
        "scenario": sc.name,
        "seed": sc.seed,
        "policy": sc.policy.name,
        "standings": sc.ledger.standings,
        "peers": sc.network.peers,
        "queries": len(records),
        "accuracy_vs_oracle": _ratio(t["accuracy"] or 0.0, t["accuracy_oracle"] or 0.0),
        "accuracy_random": t["accuracy_random"],
        "cost_vs_best": _ratio(t["cost"], t["cost_best"]),
        "adversary_share": t["adversary_share"],
        "queries_until_adversary_below_5pct": until_below(series) if has_adversaries else None,
        "after_warmup": _after(records, sc.workload.warmup),
        "tail": t,
        "tail_traffic": traffic(tail),
        "whole_run_traffic": traffic(records),
        "whole_run": whole,
        "latency_ms": latency(records),
        "totals": extra or {},
        "series": series,
    }
