"""The ledger in the simulator: signed rating transactions go through the real
reputation rules, ordered either by the real BFT consensus (:class:`BftLedger`,
the default) or by a single sequencer (:class:`Sequencer`, ``[ledger]
consensus = "sequencer"``).

- :class:`BftLedger`: the scenario's validators run the real replica (core,
  mempool, reputation app, in-memory ledger) over the consensus simulator's
  network (p2pnet/consensus/sim.py: its own virtual milliseconds, seeded
  delays). A rating reaches every validator's mempool at once (gossip is not
  modelled for txs); every ``block_every`` queries the validators run until
  they all commit the next height, and the state of validator 0 is what
  coordinators read.
- :class:`Sequencer`: every ``block_every`` queries it cuts a block of the
  ratings received since the last one (at most
  ``max_ratings_per_rater_per_block`` per rater and ``max_block_txs`` in all;
  the rest wait), in (rater, nonce) order, and applies it with
  ``check_block_txs`` and ``apply_txs``. Much cheaper with many validators.

Coordinators read standings from the latest committed state, as a real node
does."""

from __future__ import annotations

from collections import Counter
from typing import Optional

from p2pnet import wire
from p2pnet.consensus.genesis import Genesis
from p2pnet.consensus.sim import Simulation
from p2pnet.consensus.reputation import (
    RatingTx, apply_txs, check_block_txs, decode_tx, genesis_state, standing_view,
)


class Sequencer:
    def __init__(self, genesis: Genesis) -> None:
        self.state = genesis_state(genesis)
        self.params = genesis.params
        self._pending: list[RatingTx] = []
        self._standing: dict[tuple[bytes, str], tuple[float, float, float]] = {}
        self.prior = (self.params.prior_alpha / (self.params.prior_alpha + self.params.prior_beta), 0.0, 0.0)
        self.submitted = 0
        self.rejected = 0
        self.committed = 0
        self.by_signal: Counter = Counter()

    def submit(self, raw: bytes) -> None:
        """Take one signed rating envelope (a coordinator's ``submit_rating``)."""
        opened = self._open(raw)
        if opened is not None:
            self._pending.append(opened[0])

    def _open(self, raw: bytes) -> Optional[tuple[RatingTx, wire.Envelope]]:
        """Count one submitted rating and check it; (tx, its envelope), or None
        (counted as rejected)."""
        self.submitted += 1
        try:
            env = wire.open_envelope(raw, max_bytes=self.params.max_tx_bytes)
            tx = decode_tx(raw, self.params.max_tx_bytes, env)
        except (wire.WireError, ValueError):
            self.rejected += 1
            return None
        self.by_signal[tx.rating.signal] += 1
        return tx, env

    def cut_block(self) -> int:
        """Apply one block of pending ratings; returns how many it held."""
        p = self.params
        self._pending.sort(key=lambda tx: (tx.rater, tx.nonce))
        per_rater: dict[bytes, int] = {}
        block, rest = [], []
        for tx in self._pending:
            n = per_rater.get(tx.rater, 0)
            if n < p.max_ratings_per_rater_per_block and len(block) < p.max_block_txs:
                per_rater[tx.rater] = n + 1
                block.append(tx)
            else:
                rest.append(tx)
        self._pending = rest
        err = check_block_txs(self.state, block)
        if err:  # the sequencer builds valid blocks; anything else is a bug
            raise RuntimeError(f"simulated block rejected: {err}")
        self.state = apply_txs(self.state, self.state.height + 1, block)
        self.committed += len(block)
        self._refresh()
        return len(block)

    def _refresh(self) -> None:
        self._standing = {}  # a new committed state: standings are read afresh

    def standing(self, peer: bytes, domain: str) -> tuple[float, float, float]:
        """(posterior mean, evidence, probe evidence) of ``peer`` in ``domain`` in the latest
        committed state: ``reputation.standing_view``, the function a node's
        coordinator reads too (cached until the next block)."""
        key = (peer, domain)
        found = self._standing.get(key)
        if found is None:
            found = self._standing[key] = standing_view(self.state, peer, domain)
        return found

    @property
    def pending(self) -> int:
        return len(self._pending)


class BftLedger(Sequencer):
    """The same interface as :class:`Sequencer`; blocks come from the real BFT
    core. ``signers``: the validators' signers, one per genesis validator."""

    def __init__(self, genesis: Genesis, signers, seed: int, stall_ms: int = 600_000) -> None:
        super().__init__(genesis)
        self.bft = Simulation(seed, n=len(signers), genesis=genesis, signers=signers)
        self.stall_ms = stall_ms
        self._counted = 0  # committed heights whose txs are counted

    def submit(self, raw: bytes) -> None:
        opened = self._open(raw)
        if opened is not None and not any(ok for ok, _reason in self.bft.offer_tx(raw, opened[1])):
            self.rejected += 1

    def cut_block(self) -> int:
        """Run the validators until all of them committed the next height;
        returns how many ratings that block held."""
        node = self.bft.nodes[0]
        target = node.ledger.height() + 1
        if not self.bft.run_until_height(target, self.bft.now + self.stall_ms):
            raise RuntimeError(f"simulated consensus stalled before height {target}")
        top = node.ledger.height()
        held = sum(len(node.ledger.block(h).txs) for h in range(self._counted + 1, top + 1))
        self._counted = top
        self.committed += held
        self.state = node.replica.state
        self._refresh()
        return held

    @property
    def pending(self) -> int:
        return len(self.bft.nodes[0].replica.mempool)
