"""A deterministic simulated network for consensus: N replicas running the real
core, mempool, reputation and ledger code, virtual time, a seeded RNG.

Faults: drop / delay / duplicate / reorder (random delays), partitions and
heal, crash and restart (a restart reloads the ledger, so the sign record, so
it never signs twice), and byzantine validators that equivocate, propose
invalid blocks, or withhold their votes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import heapq
import random
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Set, Tuple

from p2pnet import wire
from p2pnet.consensus import core as c
from p2pnet.consensus.genesis import Genesis, Params, generate_genesis
from p2pnet.consensus.replica import Replica
from p2pnet.consensus.store import MemoryLedger
from p2pnet.consensus.validators import commit_hash, tx_root

HONEST = "honest"
EQUIVOCATE = "equivocate"
INVALID = "invalid"
SILENT = "silent"
BYZANTINE_KINDS = (EQUIVOCATE, INVALID, SILENT)


def validator_seed(i: int) -> bytes:
    return hashlib.sha256(b"p2pnet-sim-validator-%d" % i).digest()


def rater_seed(i: int) -> bytes:
    return hashlib.sha256(b"p2pnet-sim-rater-%d" % i).digest()


def make_signer(seed: bytes) -> wire.Signer:
    """A signer whose seq (tx nonce) sequence is deterministic."""
    return wire.Signer(seed, clock=lambda: 1000.0)


def sim_params(**overrides) -> Params:
    base = dict(timeout_propose_ms=300, timeout_propose_delta_ms=100, timeout_prevote_ms=200,
                timeout_prevote_delta_ms=100, timeout_precommit_ms=200, timeout_precommit_delta_ms=100,
                timeout_commit_ms=0, create_empty_blocks_interval_ms=0)
    base.update(overrides)
    return Params(**base)


def sim_genesis(n: int, params: Optional[Params] = None, powers: Optional[Sequence[int]] = None) -> Genesis:
    keys = [make_signer(validator_seed(i)).public_key for i in range(n)]
    return generate_genesis(keys, powers or [10] * n, chain_id="p2pnet-sim", genesis_time_ms=0,
                            params=params or sim_params())


def make_ratings(count: int, raters: int = 3, respondents: int = 3) -> List[bytes]:
    """Signed rating txs, deterministic."""
    rs = [make_signer(rater_seed(i)) for i in range(raters)]
    resp = [make_signer(rater_seed(1000 + i)).peer_id for i in range(respondents)]
    out = []
    for k in range(count):
        r = wire.Rating(query_hash=hashlib.sha256(b"q%d" % k).digest(), respondent=resp[k % respondents],
                        expert_id="e%d" % (k % respondents), domain="code" if k % 2 else "math",
                        answer_hash=hashlib.sha256(b"a%d" % k).digest(), score=(k % 5) / 4)
        out.append(rs[k % raters].seal(r, ts_ms=0))
    return out


class CachedVerify:
    """Signature checks are pure: one cache shared by all simulated nodes."""

    def __init__(self) -> None:
        self._cache: Dict[Tuple[bytes, bytes, bytes], bool] = {}

    def __call__(self, pk: bytes, data: bytes, sig: bytes) -> bool:
        key = (pk, data, sig)
        v = self._cache.get(key)
        if v is None:
            v = self._cache[key] = wire.verify_signature(pk, data, sig)
        return v


@dataclass
class SimNode:
    index: int
    signer: wire.Signer
    kind: str
    ledger: object
    replica: Optional[Replica] = None
    incarnation: int = 0
    commits: Dict[int, bytes] = field(default_factory=dict)

    @property
    def alive(self) -> bool:
        return self.replica is not None

    @property
    def peer_id(self) -> bytes:
        return self.signer.peer_id


class Simulation:
    def __init__(self, seed: int, n: int = 4, byzantine: Optional[Dict[int, str]] = None,
                 params: Optional[Params] = None, drop: float = 0.0, dup: float = 0.0,
                 delay_ms: Tuple[int, int] = (1, 30), ledger_factory: Optional[Callable] = None,
                 powers: Optional[Sequence[int]] = None, followers: int = 0,
                 corrupt_kinds: Sequence[str] = ("state_hash", "tx_root", "last_commit", "future", "bad_tx"),
                 genesis: Optional[Genesis] = None, signers: Optional[Sequence[wire.Signer]] = None
                 ) -> None:
        """``genesis`` and ``signers`` (one per validator, in the genesis
        order): run a given validator set instead of ``n`` generated ones."""
        if (genesis is None) != (signers is None) or (signers is not None and len(signers) != n):
            raise ValueError("genesis and signers go together, one signer per validator (n)")
        self.rng = random.Random(seed)
        self.genesis = genesis or sim_genesis(n, params, powers)
        self.params = self.genesis.params
        self.drop, self.dup, self.delay_ms = drop, dup, delay_ms
        self.now = 0
        self._queue: List[tuple] = []
        self._seq = 0
        self.verify = CachedVerify()
        self.cut: Set[Tuple[int, int]] = set()
        self.corrupt_kinds = tuple(corrupt_kinds)
        self.signed: Dict[Tuple[bytes, int, int, int], Set[bytes]] = {}
        """(validator, height, round, vote type) -> block hashes its node signed"""
        byzantine = byzantine or {}
        make_ledger = ledger_factory or (lambda i, g: MemoryLedger(g))
        self.nodes: List[SimNode] = []
        def signer_of(i: int) -> wire.Signer:
            return signers[i] if signers is not None and i < n else make_signer(validator_seed(i))

        by_peer = {signer_of(i).peer_id: i for i in range(n)}
        self.by_peer = by_peer
        for i in range(n + followers):
            signer = signer_of(i)  # i >= n: not in the genesis, a follower
            by_peer[signer.peer_id] = i
            self.nodes.append(SimNode(i, signer, byzantine.get(i, HONEST), make_ledger(i, self.genesis)))
        self.delivered = 0
        self.misbehaviour: Dict[str, int] = {}
        for node in self.nodes:
            self._boot(node)

    # ---------------------------------------------------------------- plumbing
    def _push(self, at: int, node: int, incarnation: int, item) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (at, self._seq, node, incarnation, item))

    def _boot(self, node: SimNode) -> None:
        node.incarnation += 1
        node.replica = Replica(self.genesis, node.ledger, node.signer, verify=self.verify)
        self._handle(node, node.replica.start(self.now))

    def _handle(self, node: SimNode, actions: List[c.Action]) -> None:
        for a in actions:
            if isinstance(a, c.Broadcast):
                self._broadcast(node, a.message)
            elif isinstance(a, c.ScheduleTimeout):
                self._push(self.now + a.delay_ms, node.index, node.incarnation, a.event())
            elif isinstance(a, c.CommitBlock):
                h = a.block.header.height
                node.commits[h] = a.block.hash()
            elif isinstance(a, c.RequestBlocks):
                self._request(node, a)
            elif isinstance(a, c.Misbehaviour):
                self.misbehaviour[a.reason.split(" ")[0]] = self.misbehaviour.get(a.reason.split(" ")[0], 0) + 1

    def linked(self, a: int, b: int) -> bool:
        return (a, b) not in self.cut

    def _send(self, src: SimNode, dst: int, item) -> None:
        if dst == src.index or not self.linked(src.index, dst) or self.rng.random() < self.drop:
            return
        lo, hi = self.delay_ms
        copies = 2 if self.rng.random() < self.dup else 1
        for _ in range(copies):
            self._push(self.now + self.rng.randint(lo, hi), dst, 0, ("msg", src.peer_id, item))

    def _broadcast(self, node: SimNode, message: wire.Message) -> None:
        if isinstance(message, wire.Vote) and message.validator == node.peer_id:
            key = (node.peer_id, message.height, message.round, message.vote_type)
            self.signed.setdefault(key, set()).add(message.block_hash)
        if node.kind == SILENT and isinstance(message, (wire.Vote, wire.Proposal)):
            return
        if node.kind == INVALID and isinstance(message, wire.Proposal):
            message = self._corrupt(node, message)
        own = isinstance(message, wire.Proposal) or (isinstance(message, wire.Vote)
                                                      and message.validator == node.peer_id)
        if node.kind == EQUIVOCATE and own:
            others = [i for i in range(len(self.nodes)) if i != node.index]
            self.rng.shuffle(others)
            half = set(others[: len(others) // 2])
            alt = self._conflicting(node, message)
            for i in others:
                self._send(node, i, alt if i in half else message)
            return
        for i in range(len(self.nodes)):
            self._send(node, i, message)

    def _conflicting(self, node: SimNode, m: wire.Message) -> wire.Message:
        if isinstance(m, wire.Proposal):
            hdr = dataclasses.replace(m.block.header, time_ms=m.block.header.time_ms + 1)
            return dataclasses.replace(m, block=dataclasses.replace(m.block, header=hdr))
        other = b"" if m.block_hash else hashlib.sha256(b"%d" % self.rng.getrandbits(64)).digest()
        unsigned = dataclasses.replace(m, block_hash=other, signature=b"")
        return dataclasses.replace(unsigned, signature=node.signer.sign_bytes(unsigned.sign_bytes()))

    def _corrupt(self, node: SimNode, p: wire.Proposal) -> wire.Proposal:
        b = p.block
        kind = self.rng.choice(self.corrupt_kinds)
        hdr = b.header
        txs = b.txs
        if kind == "state_hash":
            hdr = dataclasses.replace(hdr, state_hash=b"\x01" * 32)
        elif kind == "tx_root":
            hdr = dataclasses.replace(hdr, tx_root=b"\x02" * 32)
        elif kind == "future":
            hdr = dataclasses.replace(hdr, time_ms=self.now + 10 * self.params.max_clock_drift_ms)
        elif kind == "bad_tx":
            txs = txs + (b"\x93garbage",)
            hdr = dataclasses.replace(hdr, tx_root=tx_root(txs))
        elif kind == "last_commit" and b.last_commit is not None:
            lc = b.last_commit
            forged = dataclasses.replace(lc, sigs=tuple(
                dataclasses.replace(s, signature=bytes(64)) for s in lc.sigs))
            hdr = dataclasses.replace(hdr, last_commit_hash=commit_hash(forged))
            b = dataclasses.replace(b, last_commit=forged)
        return dataclasses.replace(p, block=dataclasses.replace(b, header=hdr, txs=txs))

    def _request(self, node: SimNode, req: c.RequestBlocks) -> None:
        hinted = [self.by_peer[p] for p in req.peers if p in self.by_peer]
        rest = [i for i in range(len(self.nodes)) if i not in hinted and i != node.index]
        self.rng.shuffle(rest)
        for i in (hinted + rest)[:3]:
            peer = self.nodes[i]
            if not peer.alive or not self.linked(node.index, i) or not self.linked(i, node.index):
                continue
            batch = peer.ledger.blocks_for_sync(req.from_height, req.to_height)
            if batch.blocks:
                at = self.now + 2 * self.rng.randint(*self.delay_ms)
                self._push(at, node.index, node.incarnation, ("batch", batch))
                return

    # ---------------------------------------------------------------- control
    def submit_tx(self, i: int, raw: bytes) -> Tuple[bool, str]:
        node = self.nodes[i]
        if not node.alive:
            return False, "down"
        ok, reason, actions = node.replica.tx_in(raw, self.now)
        if ok:
            for j in range(len(self.nodes)):
                self._send(node, j, ("tx", raw))
        self._handle(node, actions)
        return ok, reason

    def offer_tx(self, raw: bytes, env=None) -> List[Tuple[bool, str]]:
        """Hand a tx to every alive node's mempool at once (gossip already
        done; ``env``: the bytes opened once, see ``Replica.tx_in``); returns
        each node's (accepted, reason)."""
        out = []
        for node in self.nodes:
            if not node.alive:
                out.append((False, "down"))
                continue
            ok, reason, actions = node.replica.tx_in(raw, self.now, env)
            self._handle(node, actions)
            out.append((ok, reason))
        return out

    def partition(self, *groups: Sequence[int]) -> None:
        self.cut = {(a, b) for g1 in groups for g2 in groups if g1 is not g2 for a in g1 for b in g2}

    def heal(self) -> None:
        self.cut = set()

    def crash(self, i: int) -> None:
        self.nodes[i].replica = None

    def restart(self, i: int) -> None:
        node = self.nodes[i]
        if node.replica is None:
            self._boot(node)

    def run_until(self, t: int) -> None:
        while self._queue and self._queue[0][0] <= t:
            at, _, ni, inc, item = heapq.heappop(self._queue)
            self.now = at
            node = self.nodes[ni]
            if not node.alive or (inc and inc != node.incarnation):
                continue
            self._deliver(node, item)
        self.now = max(self.now, t)

    def run_until_height(self, h: int, deadline: int, nodes: Optional[Sequence[int]] = None) -> bool:
        """Run until every listed (default: honest, alive) node committed ``h``;
        False if ``deadline`` comes first."""
        watch = list(nodes) if nodes is not None else self.honest_alive()
        while True:
            if all(h in self.nodes[i].commits or self.nodes[i].ledger.height() >= h for i in watch):
                return True
            if not self._queue or self._queue[0][0] > deadline:
                self.now = max(self.now, deadline)
                return False
            self.run_until(self._queue[0][0])

    def _deliver(self, node: SimNode, item) -> None:
        rep = node.replica
        if isinstance(item, c.TimeoutIn):
            self._handle(node, rep.step(item, self.now))
            return
        kind = item[0]
        self.delivered += 1
        if kind == "batch":
            rep.add_synced(item[1])
            self._handle(node, rep.step(c.TxsAvailable(), self.now))
            return
        _, sender, payload = item
        if isinstance(payload, tuple) and payload[0] == "tx":
            _ok, _reason, actions = rep.tx_in(payload[1], self.now)
            self._handle(node, actions)
        elif isinstance(payload, wire.Proposal):
            self._handle(node, rep.step(c.ProposalIn(sender, payload), self.now))
        elif isinstance(payload, wire.Vote):
            self._handle(node, rep.step(c.VoteIn(payload), self.now))

    # ---------------------------------------------------------------- checks
    def honest(self) -> List[int]:
        return [n.index for n in self.nodes if n.kind == HONEST]

    def honest_alive(self) -> List[int]:
        return [n.index for n in self.nodes if n.kind == HONEST and n.alive]

    def safety_violation(self) -> Optional[str]:
        """None if no two honest nodes committed different blocks at one
        height and no honest validator signed two votes at one (h, r, type)."""
        honest_ids = {self.nodes[i].peer_id for i in self.honest()}
        for (v, h, r, t), hashes in self.signed.items():
            if v in honest_ids and len(hashes) > 1:
                return f"honest node {self.by_peer[v]} signed {len(hashes)} votes at h={h} r={r} type={t}"
        seen: Dict[int, Tuple[int, bytes]] = {}
        for i in self.honest():
            for h, bh in self.nodes[i].commits.items():
                if h in seen and seen[h][1] != bh:
                    return f"height {h}: node {seen[h][0]} and node {i} committed different blocks"
                seen.setdefault(h, (i, bh))
        return None

    def max_height(self, nodes: Optional[Sequence[int]] = None) -> int:
        return max(self.nodes[i].ledger.height() for i in (nodes if nodes is not None else self.honest()))


# -------------------------------------------------------------------- scenarios

LIVENESS_BOUND_MS = 60_000
"""After the last fault heals, every honest node commits two more blocks within this much virtual time."""


@dataclass
class ScenarioResult:
    seed: int
    n: int
    description: str
    safety: Optional[str]
    live: bool
    heal_height: int
    final_height: int
    heal_ms: int
    recovered_ms: int
    sim: "Simulation" = field(repr=False, default=None)


_TXS_CACHE: Dict[int, List[bytes]] = {}


def scenario_txs(count: int = 24) -> List[bytes]:
    if count not in _TXS_CACHE:
        _TXS_CACHE[count] = make_ratings(count, raters=4, respondents=3)
    return _TXS_CACHE[count]


def run_scenario(seed: int, n: int, ledger_factory: Optional[Callable] = None) -> ScenarioResult:
    """One seeded scenario: f' <= f byzantine validators of random kinds,
    lossy/duplicating/reordering links, then one fault (a partition, crashes
    and restarts, or both) that heals. Checks safety on the whole run and
    liveness after the heal."""
    rng = random.Random(seed * 7919 + n)
    f = (n - 1) // 3
    nbyz = rng.randint(0, f)
    order = list(range(n))
    rng.shuffle(order)
    byzantine = {i: rng.choice(BYZANTINE_KINDS) for i in order[:nbyz]}
    honest = order[nbyz:]
    drop = rng.choice([0.0, 0.0, 0.02, 0.1])
    dup = rng.choice([0.0, 0.05])
    delay = (1, rng.choice([10, 40, 150]))
    params = sim_params(create_empty_blocks_interval_ms=rng.choice([0, 0, 400]))
    sim = Simulation(seed, n, byzantine, params=params, drop=drop, dup=dup, delay_ms=delay,
                     ledger_factory=ledger_factory)
    txs = scenario_txs()
    for k in range(rng.randint(0, 12)):
        sim.run_until(rng.randint(0, 3000))
        sim.submit_tx(rng.randrange(n), txs[rng.randrange(len(txs))])
    sim.run_until(rng.randint(500, 2500))
    fault = rng.choice(["partition", "crash", "both", "none"])
    desc = f"byz={byzantine} drop={drop} dup={dup} delay={delay} fault={fault}"
    if fault in ("partition", "both"):
        split = rng.randint(1, n - 1)
        sim.partition(order[:split], order[split:])
    crashed: List[int] = []
    if fault in ("crash", "both"):
        crashed = rng.sample(honest, rng.randint(1, max(1, len(honest) - 1)))
        for i in crashed:
            sim.crash(i)
    for k in range(rng.randint(0, 4)):
        sim.run_until(sim.now + rng.randint(0, 1500))
        sim.submit_tx(rng.randrange(n), txs[rng.randrange(len(txs))])
    sim.run_until(sim.now + rng.randint(200, 4000))
    sim.heal()
    for i in crashed:
        sim.restart(i)
    heal_ms = sim.now
    heal_height = sim.max_height()
    target = heal_height + 2
    live = sim.run_until_height(target, heal_ms + LIVENESS_BOUND_MS)
    return ScenarioResult(seed, n, desc, sim.safety_violation(), live, heal_height,
                          min(sim.nodes[i].ledger.height() for i in sim.honest()),
                          heal_ms, sim.now - heal_ms, sim)
