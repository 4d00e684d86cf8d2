"""The simulated population: peers with identities, scripted experts behind
real Responders, and a real Coordinator on every peer that asks questions.

Answers are closed-form numbers, so agreement between answers is exact and
a probe (``signals.Probe``) is graded exactly against its known answer."""

from __future__ import annotations

import dataclasses
import hashlib
import math
import random
from dataclasses import dataclass, field
from typing import Optional

import trio

from p2pnet import wire
from p2pnet.consensus.genesis import Params, generate_genesis
from p2pnet.experts.backend import Speed
from p2pnet.experts.coordinator import Coordinator
from p2pnet.experts.directory import Directory
from p2pnet.experts.expert import Expert
from p2pnet.experts.responder import Responder
from p2pnet.experts.scripted import ScriptedBackend, calibrated_confidence, claimed_confidence
from p2pnet.gossip import topics
from p2pnet.identity import Identity
from p2pnet.sim.ledger import BftLedger, Sequencer
from p2pnet.sim.net import SimNetwork, SimTransport
from p2pnet.sim.scenario import (
    ADVERSARIAL, COLLUDING, DISHONEST_RATERS, LAZY, SYBIL, ExpertGroup, Scenario, make_policy,
)

TRUTH_EVIDENCE = 1000.0
"""The evidence behind a true accuracy (``[ledger] standings = "truth"``):
enough that no policy explores around it."""

LIAR_CONFIDENCE = 0.95
"""What a lying expert (adversarial, colluding, sybil) says of every answer,
when its group's answers carry a confidence."""


def question(i: int, domain: str) -> str:
    return f"[{domain}] question {i}: which number?"


def _number(tag: str) -> int:
    return 100_000 + int.from_bytes(hashlib.sha256(tag.encode()).digest()[:8], "big") % 900_000


def right_answer(q: str) -> str:
    return str(_number(f"right:{q}"))


def _wrong(tag: str):
    """An answer that is wrong for every question; the same ``tag`` lies the same way."""
    def wrong(q: str) -> str:
        n = _number(f"{tag}:{q}")
        return str(n + 1 if str(n) == right_answer(q) else n)
    return wrong


@dataclass
class SimExpert:
    expert: Expert
    backend: ScriptedBackend
    domain: str
    group: ExpertGroup
    peer: "SimPeer"

    @property
    def accuracy(self) -> float:
        return self.backend.accuracy


@dataclass(eq=False)
class SimPeer:
    """A simulated node: what Coordinator and Responder need of ``node``."""

    index: int
    identity: Identity
    signer: wire.Signer
    network: Optional[SimTransport] = None
    group: Optional[ExpertGroup] = None
    experts: list = field(default_factory=list)  # SimExpert
    coordinator: Optional[Coordinator] = None
    validator: bool = False
    joins_at: int = 0
    leaves_at: Optional[int] = None
    live: bool = False

    @property
    def peer_id(self) -> bytes:
        return self.identity.peer_id

    @property
    def dishonest(self) -> bool:
        return self.group is not None and self.group.behaviour in DISHONEST_RATERS


def _seed(seed: int, *parts) -> bytes:
    return hashlib.sha256(":".join(map(str, ("p2pnet-sim", seed) + parts)).encode()).digest()


class World:
    """Builds and holds every peer. Call :meth:`start` inside the run."""

    def __init__(self, sc: Scenario, nursery: trio.Nursery) -> None:
        self.sc = sc
        self.nursery = nursery
        self.net = SimNetwork(nursery, random.Random(_seed(sc.seed, "net")),
                              latency_s=sc.network.latency_ms / 1000, jitter=sc.network.jitter,
                              loss=sc.network.loss)
        self.policy = make_policy(sc.policy)
        # announcements have converged and stay true while their expert is live (a real node
        # re-announces every refresh period; the simulator announces once, on joining)
        self.directory = Directory(max_age_s=math.inf, max_entries=1_000_000, honour_ttl=False)
        self.rng = random.Random(_seed(sc.seed, "world"))
        self.peers: list[SimPeer] = []
        self.by_key: dict[tuple[str, str], SimExpert] = {}
        self.by_domain: dict[tuple[bytes, str], SimExpert] = {}
        self.rings: dict[str, frozenset] = {}
        self.fake_counter = 0
        n_users = sc.network.peers - sc.expert_peers
        for i in range(n_users):
            self._new_peer(validator=i < sc.ledger.validators)
        for g in sc.experts:
            waves = 1
            if g.rotate_every:
                waves = max(1, math.ceil((sc.workload.queries - g.joins_at) / g.rotate_every))
            for w in range(waves):
                joins = g.joins_at + w * (g.rotate_every or 0)
                leaves = joins + g.rotate_every if g.rotate_every else None
                for _ in range(g.count):
                    peer = self._new_peer(group=g)
                    peer.joins_at, peer.leaves_at = joins, leaves
        validators = [p.identity.public_key for p in self.peers if p.validator]
        params = Params(**dict(sc.ledger.params))
        self.genesis = generate_genesis(validators, chain_id="p2pnet-sim", genesis_time_ms=0, params=params)
        if sc.ledger.consensus == "bft":
            # the validators' consensus keys (a fixed clock: vote signatures do not depend on it)
            signers = [wire.Signer(p.identity.seed, clock=lambda: 1000.0) for p in self.peers if p.validator]
            self.sequencer = BftLedger(self.genesis, signers, seed=int.from_bytes(_seed(sc.seed, "bft")[:8], "big"))
        else:
            self.sequencer = Sequencer(self.genesis)
        self.net.announce_sink = self.peers[0].peer_id
        for g in sc.experts:
            self.rings[g.name] = frozenset(p.peer_id for p in self.peers if p.group is g)

    def _new_peer(self, validator: bool = False, group: Optional[ExpertGroup] = None) -> SimPeer:
        identity = Identity(_seed(self.sc.seed, "peer", len(self.peers)))
        peer = SimPeer(len(self.peers), identity, wire.Signer(identity.seed, clock=trio.current_time),
                       group=group, validator=validator)
        self.peers.append(peer)
        return peer

    # ------------------------------------------------------------ starting

    def true_standing(self, peer: bytes, domain: str) -> tuple[float, float, float]:
        """An expert's true accuracy now, as if the ledger knew it exactly."""
        e = self.by_domain.get((peer, domain))
        return (e.accuracy, TRUTH_EVIDENCE, TRUTH_EVIDENCE) if e is not None else self.sequencer.prior

    async def start(self) -> None:
        standing = self.true_standing if self.sc.ledger.standings == "truth" else self.sequencer.standing
        for peer in self.peers:
            peer.network = self.net.attach(peer.peer_id, peer.signer)
            if peer.group is not None:
                await self._start_experts(peer)
                Responder(peer, [e.expert for e in peer.experts], self.nursery, clock=trio.current_time)
            if peer.group is None or peer.group.behaviour != SYBIL:
                peer.coordinator = Coordinator(
                    peer, local_experts=[e.expert for e in peer.experts], policy=self.policy,
                    standing=standing,
                    submit_rating=lambda raw, peer=peer: self.on_rating(peer, raw),
                    default_respondents=2, default_deadline_s=self.sc.workload.deadline_s,
                    rng=random.Random(_seed(self.sc.seed, "coordinator", peer.index)), clock=trio.current_time)
                peer.coordinator.directory = self.directory  # announcements have converged
        for peer in self.peers:
            if peer.group is None:
                peer.live = True

    async def _start_experts(self, peer: SimPeer) -> None:
        g = peer.group
        latency = g.latency_ms / 1000 * (0.8 + 0.4 * self.rng.random())
        liar = g.behaviour in (ADVERSARIAL, SYBIL, COLLUDING)
        for d in g.domains:
            # copies of one model: right, wrong and unsure on the same questions on every host
            who = ("model", g.name) if g.copies else ("expert", peer.index)
            seed = int.from_bytes(_seed(self.sc.seed, *who, d)[:8], "big")
            confidence = None
            if g.confidence_auc is not None:
                confidence = (claimed_confidence(LIAR_CONFIDENCE) if liar
                              else calibrated_confidence(g.confidence_auc, seed))
            if liar:
                wrong = _wrong(f"lie:{g.name}")  # a ring lies the same way
            elif g.behaviour == LAZY:
                wrong = "not sure"
            else:
                wrong = _wrong(f"wrong:{who[1]}:{d}")
            backend = ScriptedBackend(rule=right_answer, wrong=wrong, accuracy=g.accuracy[d], seed=seed,
                                      latency=latency, model=f"sim-{g.name}"[:64], confidence=confidence)
            expert = Expert(f"{g.name}-{d}"[:64], backend, domains=(d,), price_per_1k=g.price_for(d),
                            max_concurrency=g.max_concurrency)
            await expert.start(speed=Speed(1000.0, 100.0))
            sim = SimExpert(expert, backend, d, g, peer)
            peer.experts.append(sim)
            self.by_key[(wire.peer_id_str(peer.peer_id), expert.expert_id)] = sim
            self.by_domain[(peer.peer_id, d)] = sim

    # --------------------------------------------------------------- events

    def events_at(self, q: int) -> None:
        """Joins, departures and degradations scheduled at query ``q``."""
        for peer in self.peers:
            if peer.group is None:
                continue
            if not peer.live and peer.joins_at == q:
                peer.live = True
                peer.network.publish_nowait(topics.ANNOUNCE, wire.Announce(
                    addrs=(), cards=tuple(e.expert.card() for e in peer.experts)))
            elif peer.live and peer.leaves_at == q:
                peer.live = False
                self.directory.forget(peer.peer_id)
            if peer.group.degrades_at == q:
                for e in peer.experts:
                    e.backend.accuracy = min(e.backend.accuracy, peer.group.degraded_accuracy)

    def live_experts(self, domain: str) -> list[SimExpert]:
        return [e for p in self.peers if p.live for e in p.experts if e.domain == domain]

    def issuers(self) -> list[SimPeer]:
        return [p for p in self.peers if p.live and p.coordinator is not None]

    # -------------------------------------------------------------- ratings

    def on_rating(self, peer: SimPeer, raw: bytes) -> None:
        """A coordinator's signed rating on its way to the ledger; a dishonest
        rater re-signs it with its ring's scores (1.0 for the ring, 0.0 for
        everyone else)."""
        if not peer.dishonest:
            self.sequencer.submit(raw)
            return
        rating = wire.open_envelope(raw).message
        ring = self.rings[peer.group.name]
        rating = dataclasses.replace(rating, score=1.0 if rating.respondent in ring else 0.0)
        self.sequencer.submit(peer.signer.seal(rating))

    def fake_ratings(self, peer: SimPeer, domain: str) -> None:
        """A dishonest rater praises ring members it never asked."""
        ring = sorted(p for p in self.rings[peer.group.name] if p != peer.peer_id)
        members = [e for e in self.live_experts(domain) if e.peer.peer_id in ring]
        for e in members[: peer.group.fake_ratings]:
            self.fake_counter += 1
            rating = wire.Rating(
                query_hash=hashlib.sha256(f"fake:{self.fake_counter}".encode()).digest(),
                respondent=e.peer.peer_id, expert_id=e.expert.expert_id, domain=domain,
                answer_hash=b"", score=1.0)
            self.sequencer.submit(peer.signer.seal(rating))
