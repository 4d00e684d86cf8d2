"""The consensus core's vocabulary: the steps of a round, its limits, the
events a driver feeds :class:`p2pnet.consensus.core.Core` and the actions it
gets back, the records it keeps across restarts (:class:`Tip`,
:class:`SignState`), and what it asks of the application. Pure data; no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Protocol, Tuple

from p2pnet import wire

# steps of a round
WAIT = 0  # new height, waiting for txs (or the empty-block interval)
PROPOSE = 1
PREVOTE_STEP = 2
PRECOMMIT_STEP = 3
COMMIT = 4
STEP_NAMES = {WAIT: "wait", PROPOSE: "propose", PREVOTE_STEP: "prevote", PRECOMMIT_STEP: "precommit",
              COMMIT: "commit"}
# HRS step numbers in a SignState
SIGN_PROPOSAL, SIGN_PREVOTE, SIGN_PRECOMMIT = 1, 2, 3

MAX_ROUNDS_AHEAD = 1000
MAX_FUTURE_EVENTS = 2000
SYNC_RETRY_MS = 1000
REBROADCAST_VOTES = 6
MAX_CONFLICTING_VOTES = 3


def decode_block(data: bytes) -> wire.Block:
    return wire.Block.from_obj(wire.unpackb(data, max_bytes=1 << 30))


class Application(Protocol):
    """What consensus asks of the state machine it orders transactions for."""

    def state_hash(self) -> bytes:
        """Hash of the app state after the last committed block."""

    def has_txs(self) -> bool:
        """Whether txs are waiting to be proposed."""

    def propose_txs(self, height: int) -> Tuple[bytes, ...]:
        """Txs for a new block at ``height``."""

    def validate_txs(self, height: int, txs: Tuple[bytes, ...]) -> Optional[str]:
        """None if the txs may form block ``height`` on the current state, else why not."""


class VoteSigner(Protocol):
    peer_id: bytes

    def sign_bytes(self, data: bytes) -> bytes: ...


# ----------------------------------------------------------------- records


@dataclass(frozen=True)
class Tip:
    """The last committed block (height 0: genesis)."""

    height: int
    block_hash: bytes
    time_ms: int
    commit: Optional[wire.Commit]


@dataclass(frozen=True)
class SignState:
    """The last thing this validator signed, and its lock; persisted before
    the signed message leaves, reloaded on restart (double-sign protection)."""

    height: int
    round: int
    step: int
    block_hash: bytes
    signature: bytes
    locked_round: int = -1
    locked_block: bytes = b""  # packed wire.Block
    votes: Tuple[bytes, ...] = ()
    """our latest votes at this height (packed), the newest last: after a
    restart we send them again, since peers may never have got them"""

    def hrs(self) -> Tuple[int, int, int]:
        return (self.height, self.round, self.step)

    def to_bytes(self) -> bytes:
        return wire.packb([self.height, self.round, self.step, self.block_hash, self.signature,
                           self.locked_round, self.locked_block, list(self.votes)])

    @classmethod
    def from_bytes(cls, data: bytes) -> "SignState":
        h, r, s, bh, sig, lr, lb, votes = wire.unpackb(data, max_bytes=1 << 30)
        return cls(h, r, s, bh, sig, lr, lb, tuple(votes))


# ----------------------------------------------------------------- events


@dataclass(frozen=True)
class Start:
    """Begin (after construction or restart)."""


@dataclass(frozen=True)
class ProposalIn:
    sender: bytes  # the envelope's signer
    proposal: wire.Proposal


@dataclass(frozen=True)
class VoteIn:
    vote: wire.Vote


@dataclass(frozen=True)
class _CheckedVoteIn(VoteIn):
    """A vote whose signature was checked already (kept for the next height)."""


@dataclass(frozen=True)
class TimeoutIn:
    height: int
    round: int
    step: str  # wait | propose | prevote | precommit | commit


@dataclass(frozen=True)
class TxsAvailable:
    pass


@dataclass(frozen=True)
class BlockIn:
    """A block fetched from a peer, with the commit that certifies it."""

    block: wire.Block
    commit: wire.Commit


Event = object

# ----------------------------------------------------------------- actions


@dataclass(frozen=True)
class Broadcast:
    message: wire.Message


@dataclass(frozen=True)
class PersistSigned:
    record: SignState


@dataclass(frozen=True)
class CommitBlock:
    block: wire.Block
    commit: wire.Commit


@dataclass(frozen=True)
class ScheduleTimeout:
    height: int
    round: int
    step: str
    delay_ms: int

    def event(self) -> TimeoutIn:
        return TimeoutIn(self.height, self.round, self.step)


@dataclass(frozen=True)
class RequestBlocks:
    from_height: int
    to_height: int
    peers: Tuple[bytes, ...]  # most promising first


@dataclass(frozen=True)
class Misbehaviour:
    validator: bytes
    reason: str


Action = object
