"""The consensus package's one root exception."""

from __future__ import annotations

from p2pnet.errors import P2PNetError


class ConsensusError(P2PNetError):
    """Base of every error the consensus and ledger code raises on purpose."""


class GenesisError(ConsensusError):
    """A genesis file that cannot be used; the message names the bad key."""


class LedgerError(ConsensusError):
    """The ledger store cannot be opened, read or written."""


class MempoolFull(ConsensusError):
    """The mempool refuses a transaction because it is at its bound."""
