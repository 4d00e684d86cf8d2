"""The reputation application as consensus sees it (core.Application), over a
mempool and the current reputation state."""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

from p2pnet import wire
from p2pnet.consensus.mempool import Mempool
from p2pnet.consensus.reputation import (
    RatingTx, ReputationState, apply_txs, check_block_txs, decode_block_txs,
)


class ReputationApp:
    """Proposes txs from the mempool, checks blocks' txs against the state, and
    applies committed blocks. Txs it has verified once (in the mempool or in a
    proposal) are not verified again."""

    def __init__(self, state: ReputationState, mempool: Mempool) -> None:
        self.state = state
        self.mempool = mempool
        self.params = state.rules.params
        mempool.committed_nonce = lambda rater: self.state.nonce(rater)
        self._checked: Dict[bytes, RatingTx] = {}

    # a cache of verified txs: decode_block_txs calls .get(hash)
    def get(self, h: bytes) -> Optional[RatingTx]:
        return self.mempool.get(h) or self._checked.get(h)

    def state_hash(self) -> bytes:
        return self.state.hash()

    def has_txs(self) -> bool:
        return len(self.mempool) > 0

    def propose_txs(self, height: int) -> Tuple[bytes, ...]:
        return self.mempool.reap(self.params.max_block_txs, height)

    def validate_txs(self, height: int, txs: Tuple[bytes, ...]) -> Optional[str]:
        try:
            decoded = decode_block_txs(txs, self.params, cache=self)
        except ValueError as exc:
            return str(exc)
        err = check_block_txs(self.state, decoded)
        if err is None and len(self._checked) < 100_000:
            for tx in decoded:
                self._checked[tx.tx_hash] = tx
        return err

    def execute(self, block: wire.Block) -> Tuple[ReputationState, List[RatingTx]]:
        """The state after ``block`` (not yet adopted); ValueError if its txs
        break a rule."""
        decoded = decode_block_txs(block.txs, self.params, cache=self)
        err = check_block_txs(self.state, decoded)
        if err:
            raise ValueError(err)
        return apply_txs(self.state, block.header.height, decoded), decoded

    def adopt(self, state: ReputationState, committed: List[RatingTx]) -> None:
        """Make ``state`` current (after it was stored) and clean the mempool."""
        self.state = state
        self.mempool.update(committed)
        self._checked.clear()
