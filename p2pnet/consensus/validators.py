"""The validator set: voting power, thresholds, proposer rotation, commit checks,
and the hashes a header links by."""

from __future__ import annotations

import hashlib
from typing import Callable, Dict, List, Optional, Sequence

from p2pnet import wire
from p2pnet.consensus.genesis import Validator

PREVOTE = 1
PRECOMMIT = 2
EMPTY_HASH = hashlib.sha256(b"").digest()

Verify = Callable[[bytes, bytes, bytes], bool]


def tx_root(txs: Sequence[bytes]) -> bytes:
    """sha256 over the list of the txs' sha256 hashes (msgpack-encoded)."""
    return hashlib.sha256(wire.packb([hashlib.sha256(t).digest() for t in txs])).digest()


def commit_hash(commit: Optional[wire.Commit]) -> bytes:
    return EMPTY_HASH if commit is None else commit.digest()


class ValidatorSet:
    """A fixed set of validators, sorted by peer ID.

    Proposer rotation is Tendermint's priority algorithm: at each step every
    validator's priority grows by its power, the highest (ties: lowest peer ID)
    proposes and loses the total power. With a fixed set the sequence repeats
    every ``total_power`` steps, each validator proposing ``power`` times;
    (height h, round r) is step ``h - 1 + r``.
    """

    def __init__(self, validators: Sequence[Validator]) -> None:
        self.validators = tuple(sorted(validators, key=lambda v: v.peer_id))
        if not self.validators:
            raise ValueError("empty validator set")
        self.by_id: Dict[bytes, Validator] = {v.peer_id: v for v in self.validators}
        self.total_power = sum(v.power for v in self.validators)
        self.quorum = self.total_power * 2 // 3 + 1
        """more than 2/3 of the power"""
        self.third = self.total_power // 3 + 1
        """more than 1/3 of the power: at least one honest validator"""
        self._sequence: List[bytes] = []
        self._priorities = [0] * len(self.validators)

    def __contains__(self, peer_id: bytes) -> bool:
        return peer_id in self.by_id

    def __len__(self) -> int:
        return len(self.validators)

    def power(self, peer_id: bytes) -> int:
        v = self.by_id.get(peer_id)
        return v.power if v else 0

    def power_of(self, peer_ids) -> int:
        return sum(self.power(p) for p in peer_ids)

    def proposer(self, height: int, round_: int) -> bytes:
        index = (height - 1 + round_) % self.total_power
        while len(self._sequence) <= index:
            pr = self._priorities
            for i, v in enumerate(self.validators):
                pr[i] += v.power
            best = max(range(len(pr)), key=lambda i: (pr[i], -i))
            pr[best] -= self.total_power
            self._sequence.append(self.validators[best].peer_id)
        return self._sequence[index]

    def verify_commit(self, chain_id: str, commit: Optional[wire.Commit], height: int,
                      block_hash: bytes, verify: Verify = wire.verify_signature) -> Optional[str]:
        """None if ``commit`` certifies ``block_hash`` at ``height``: distinct
        members, valid precommit signatures, more than 2/3 of the power."""
        if commit is None:
            return "no commit"
        if commit.height != height:
            return f"commit is for height {commit.height}, not {height}"
        if commit.block_hash != block_hash:
            return "commit is for another block"
        seen = set()
        power = 0
        for sig in commit.sigs:
            v = self.by_id.get(sig.validator)
            if v is None:
                return f"commit signer {wire.peer_id_str(sig.validator)[:16]} is not a validator"
            if sig.validator in seen:
                return "duplicate commit signer"
            seen.add(sig.validator)
            data = wire.Vote(chain_id, PRECOMMIT, height, commit.round, block_hash, sig.validator).sign_bytes()
            if not verify(v.pub_key, data, sig.signature):
                return f"bad commit signature from {wire.peer_id_str(sig.validator)[:16]}"
            power += v.power
        if power < self.quorum:
            return f"commit power {power} below quorum {self.quorum}"
        return None
