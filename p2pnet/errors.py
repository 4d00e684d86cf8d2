"""The root exception of p2pnet; each package derives its own from it."""


class P2PNetError(Exception):
    """Base class of every error p2pnet raises on purpose."""
