"""Errors of the gossip package."""

from p2pnet.errors import P2PNetError


class GossipError(P2PNetError):
    """Root of the gossip package."""


class OutboxFull(GossipError):
    """The bounded outbound queue is full: the caller should back off."""


class RpcFailed(GossipError):
    """A direct request got no valid answer."""

    def __init__(self, message: str, code: str = "failed") -> None:
        super().__init__(message)
        self.code = code
