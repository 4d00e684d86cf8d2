"""Running a scenario: the workload driver, in virtual time.

``run_scenario`` calls ``trio.run`` with ``MockClock(autojump_threshold=0)``:
expert latency and network delays cost no wall time. Query arrivals are a
Poisson process; every draw comes from RNGs seeded by the scenario's seed, and
arrival times and delays are continuous, so no two events share an instant
and a run is reproducible."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Optional

import trio
import trio.testing

from p2pnet.query import ChatRequest, QueryError
from p2pnet.sim.metrics import QueryRecord, summarize
from p2pnet.sim.scenario import Scenario
from p2pnet.experts.signals import Probe
from p2pnet.sim.world import World, _seed, question, right_answer

SETTLE_S = 5.0
"""Virtual seconds for the first announcements to land."""


@dataclass
class _Planned:
    index: int
    domain: str
    probe: bool
    question: str
    answer: str
    feedback: bool


class Driver:
    """``progress(done)``, if given, is called with the number of queries
    issued so far, every 1% of the workload and at the end."""

    def __init__(self, sc: Scenario, progress: Optional[Callable[[int], None]] = None) -> None:
        self.sc = sc
        self.progress = progress
        self.rng = random.Random(_seed(sc.seed, "workload"))
        self.records: list[QueryRecord] = []
        self.blocks = 0
        self.escalated = 0  # queries whose single answer got a second expert (its confidence was low)

    def _plan(self, i: int) -> _Planned:
        wl = self.sc.workload
        names = sorted(wl.domains)
        domain = self.rng.choices(names, weights=[wl.domains[d] for d in names])[0]
        probe = self.rng.random() < wl.probe_rate
        feedback = bool(wl.feedback_rate) and self.rng.random() < wl.feedback_rate and not probe
        q = question(i, domain)
        return _Planned(i, domain, probe, q, right_answer(q), feedback)

    async def run(self) -> dict:
        sc = self.sc
        async with trio.open_nursery() as nursery:
            world = self.world = World(sc, nursery)
            await world.start()
            world.events_at(0)
            await trio.sleep(SETTLE_S)
            start = trio.current_time()
            t = 0.0
            step = max(1, sc.workload.queries // 100)
            for i in range(sc.workload.queries):
                if self.progress is not None and i % step == 0:
                    self.progress(i)
                if i:
                    world.events_at(i)
                if i and i % sc.ledger.block_every == 0:
                    world.sequencer.cut_block()
                    self.blocks += 1
                t += self.rng.expovariate(sc.workload.rate)
                await trio.sleep_until(start + t)
                plan = self._plan(i)
                issuers = world.issuers()
                if plan.probe:
                    issuers = [p for p in issuers if p.validator] or issuers
                issuer = issuers[self.rng.randrange(len(issuers))]
                record = self._record(world, plan)
                self.records.append(record)
                nursery.start_soon(self._query, world, issuer, plan, record)
        world.sequencer.cut_block()
        self.blocks += 1
        if self.progress is not None:
            self.progress(sc.workload.queries)
        return summarize(self.records, sc, extra=self._totals(world))

    def _record(self, world: World, plan: _Planned) -> QueryRecord:
        """Ground truth at issue time: the oracle (the best live expert for the
        domain, cheaper first on ties) and a uniformly random live expert."""
        live = world.live_experts(plan.domain)
        best = max(live, key=lambda e: (e.accuracy, -e.expert.price_per_1k, -e.peer.index))
        return QueryRecord(plan.index, plan.domain, plan.probe,
                           oracle_correct=best.backend.is_correct(plan.question),
                           oracle_cost=best.expert.price_per_1k,
                           random_correct=sum(e.accuracy for e in live) / len(live))

    async def _query(self, world: World, issuer, plan: _Planned, record: QueryRecord) -> None:
        req = ChatRequest(model="p2pnet", messages=(("user", plan.question),), max_tokens=16,
                          domain=plan.domain, deadline_s=self.sc.workload.deadline_s,
                          respondents=(self.sc.workload.probe_respondents if plan.probe else None)
                          or self.sc.policy.respondents)
        probe = Probe(plan.question, plan.answer, plan.domain) if plan.probe else None
        started = trio.current_time()
        try:
            result = await issuer.coordinator.chat(req, probe=probe)
        except QueryError as exc:
            record.error = type(exc).__name__
            result = None
        if result is not None:
            record.correct = result.text.strip() == plan.answer
            record.latency_s = trio.current_time() - started
            record.escalated = result.provenance.escalated is not None
            self.escalated += record.escalated
            for r in result.provenance.respondents:
                e = world.by_key.get((r.peer_id, r.expert_id))
                record.respondents += 1
                if e is not None:
                    record.cost += e.expert.price_per_1k
                    record.adversary += e.group.adversary
                    record.groups += (e.group.name,)
            if plan.feedback:  # the user says whether the answer was right (signal "feedback")
                try:
                    issuer.coordinator.feedback(result.query_id, record.correct)
                except QueryError:
                    pass
        if issuer.dishonest:
            world.fake_ratings(issuer, plan.domain)

    def _totals(self, world: World) -> dict:
        seq, net = world.sequencer, world.net.stats
        return {
            "blocks": self.blocks, "escalated": self.escalated,
            "ratings_submitted": seq.submitted, "ratings_committed": seq.committed,
            "ratings_rejected": seq.rejected, "ratings_pending": seq.pending,
            "ratings_by_signal": dict(sorted(seq.by_signal.items())),
            "messages_delivered": net.delivered, "messages_lost": net.lost,
            "requests": net.requests, "requests_failed": net.requests_failed,
            "peers_total": len(world.peers), "experts_total": sum(len(p.experts) for p in world.peers),
        }


def run_scenario(sc: Scenario, seed: Optional[int] = None,
                 progress: Optional[Callable[[int], None]] = None) -> dict:
    """Run one scenario to completion in virtual time; returns the summary JSON.
    ``progress``: see :class:`Driver`."""
    sc = sc.with_seed(seed)
    driver = Driver(sc, progress)
    return trio.run(driver.run, clock=trio.testing.MockClock(autojump_threshold=0))
