"""The ledger in the simulator: signed rating transactions go through the real
reputation rules (``decode_tx``, ``check_block_txs``, ``apply_txs``), ordered by
a single sequencer.

Consensus ordering itself is not simulated here: the BFT core has its own
simulator (p2pnet/consensus/sim.py) and tests. The sequencer stands for the
committed chain: every ``block_every`` queries it cuts a block of the ratings
received since the last one (at most ``max_ratings_per_rater_per_block`` per
rater and ``max_block_txs`` in all; the rest wait for the next block), in
(rater, nonce) order, and applies it. Coordinators read standings from the
latest state, as a real node reads its committed state."""

from __future__ import annotations

from collections import Counter

from p2pnet import wire
from p2pnet.consensus.genesis import Genesis
from p2pnet.consensus.reputation import (
    FP, RatingTx, apply_txs, check_block_txs, decode_tx, genesis_state, standings,
)


class Sequencer:
    def __init__(self, genesis: Genesis) -> None:
        self.state = genesis_state(genesis)
        self.params = genesis.params
        self._pending: list[RatingTx] = []
        self._text: dict[bytes, str] = {}
        self._standing: dict[tuple[str, str], tuple[float, float]] = {}
        self.prior = (self.params.prior_alpha / (self.params.prior_alpha + self.params.prior_beta), 0.0)
        self.submitted = 0
        self.rejected = 0
        self.committed = 0
        self.by_signal: Counter = Counter()

    def submit(self, raw: bytes) -> None:
        """Take one signed rating envelope (a coordinator's ``submit_rating``)."""
        self.submitted += 1
        try:
            tx = decode_tx(raw, self.params.max_tx_bytes)
        except ValueError:
            self.rejected += 1
            return
        self._pending.append(tx)
        self.by_signal[tx.rating.signal] += 1

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
        half = self.params.standing_half_evidence / FP
        table = {}
        for s in standings(self.state):
            c = min(s.confidence, 0.999999)
            table[(s.peer_id, s.domain)] = (s.score, half * c / (1.0 - c))
        self._standing = table

    def standing(self, peer: bytes, domain: str) -> tuple[float, float]:
        """(posterior mean, evidence in rating-weight units) of ``peer`` in
        ``domain``; evidence is recovered from the state's confidence
        ``E / (E + standing_half_evidence)``."""
        text = self._text.get(peer)
        if text is None:
            text = self._text[peer] = wire.peer_id_str(peer)
        return self._standing.get((text, domain), self.prior)

    @property
    def pending(self) -> int:
        return len(self._pending)
