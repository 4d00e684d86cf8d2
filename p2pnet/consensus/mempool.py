"""Pending rating transactions: checked on admission, bounded, reaped in a
deterministic order."""

from __future__ import annotations

from typing import Callable, Dict, Iterable, List, Optional, Tuple

from p2pnet.consensus.genesis import Params
from p2pnet.consensus.reputation import RatingTx, decode_tx, tx_hash

OK = "ok"


class Mempool:
    """Admits a tx only if it is small enough, opens with a valid signature, is
    a transaction type, its nonce (envelope seq) is above the rater's committed
    nonce and not pending already, and it is new. Refuses (never grows) when
    ``max_txs`` or ``max_bytes`` is reached.

    ``committed_nonce(rater)`` reads the last committed nonce; the owner points
    it at the current reputation state.
    """

    def __init__(self, params: Params, committed_nonce: Callable[[bytes], int] = lambda r: 0,
                 max_txs: int = 20_000, max_bytes: int = 16 << 20) -> None:
        self.params = params
        self.committed_nonce = committed_nonce
        self.max_txs = max_txs
        self.max_bytes = max_bytes
        self._txs: Dict[bytes, RatingTx] = {}
        self._by_rater: Dict[bytes, Dict[int, RatingTx]] = {}
        self._bytes = 0
        self.rejected: Dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._txs)

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def get(self, h: bytes) -> Optional[RatingTx]:
        """The verified tx with this hash, if pending (a cache for block checks)."""
        return self._txs.get(h)

    def _refuse(self, reason: str) -> Tuple[bool, str]:
        key = reason.split(":", 1)[0]
        self.rejected[key] = self.rejected.get(key, 0) + 1
        return False, reason

    def add(self, raw: bytes, env=None) -> Tuple[bool, str]:
        """Try to admit one tx (its envelope bytes; ``env``: the same bytes
        already opened by wire.open_envelope). Returns (accepted, reason)."""
        if not isinstance(raw, (bytes, bytearray)):
            return self._refuse("malformed: not bytes")
        raw = bytes(raw)
        if len(raw) > self.params.max_tx_bytes:
            return self._refuse(f"oversize: {len(raw)} > {self.params.max_tx_bytes} bytes")
        if tx_hash(raw) in self._txs:
            return self._refuse("duplicate: already pending")
        if len(self._txs) >= self.max_txs or self._bytes + len(raw) > self.max_bytes:
            return self._refuse("full: mempool at its bound, retry later")
        try:
            tx = decode_tx(raw, self.params.max_tx_bytes, env)
        except ValueError as exc:
            return self._refuse(f"invalid: {exc}")
        if tx.nonce <= self.committed_nonce(tx.rater):
            return self._refuse("replay: nonce not above the rater's committed nonce")
        pending = self._by_rater.setdefault(tx.rater, {})
        if tx.nonce in pending:
            return self._refuse("replay: nonce already pending")
        pending[tx.nonce] = tx
        self._txs[tx.tx_hash] = tx
        self._bytes += len(raw)
        return True, OK

    def reap(self, max_txs: int, height: int = 0) -> Tuple[bytes, ...]:
        """Txs for a block: raters in turn (sorted by id, starting at an offset
        that rotates with ``height``), each rater's txs by nonce, at most
        ``max_ratings_per_rater_per_block`` per rater."""
        cap = self.params.max_ratings_per_rater_per_block
        raters = sorted(self._by_rater)
        if not raters:
            return ()
        start = height % len(raters)
        raters = raters[start:] + raters[:start]
        queues = {r: sorted(self._by_rater[r]) for r in raters}
        out: List[bytes] = []
        for i in range(cap):
            added = False
            for r in raters:
                q = queues[r]
                if i < len(q):
                    if len(out) >= max_txs:
                        return tuple(out)
                    out.append(self._by_rater[r][q[i]].raw)
                    added = True
            if not added:
                break
        return tuple(out)

    def remove(self, hashes: Iterable[bytes]) -> None:
        for h in hashes:
            tx = self._txs.pop(h, None)
            if tx is not None:
                self._bytes -= len(tx.raw)
                pending = self._by_rater.get(tx.rater)
                if pending is not None:
                    pending.pop(tx.nonce, None)
                    if not pending:
                        del self._by_rater[tx.rater]

    def update(self, committed: Iterable[RatingTx]) -> None:
        """After a commit: drop the committed txs and the pending txs of their
        raters whose nonce is now at or below the committed nonce."""
        committed = list(committed)
        self.remove(tx.tx_hash for tx in committed)
        stale = []
        for r in {tx.rater for tx in committed}:
            floor = self.committed_nonce(r)
            stale.extend(tx.tx_hash for n, tx in self._by_rater.get(r, {}).items() if n <= floor)
        self.remove(stale)
