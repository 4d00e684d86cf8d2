"""Errors of the experts package: models, expert specs, scripted failures.

The query errors (an expected failure to answer a query: BadQuery, Busy,
DeadlineExceeded...) are not here: they belong to the query vocabulary,
:mod:`p2pnet.query`, shared by every layer that asks or answers."""

from p2pnet.errors import P2PNetError


class ExpertsError(P2PNetError):
    """Root of the experts package."""


class ModelError(ExpertsError):
    """A model file is missing, corrupt, or cannot be loaded."""


class ChecksumMismatch(ModelError):
    """A model file does not have its pinned sha256."""


class ExpertSpecError(ExpertsError, ValueError):
    """A malformed ``--expert`` value; the message names the bad key."""


class ScriptedFailure(ExpertsError):
    """The scripted backend failed on purpose (tests and simulations)."""


class KnowledgeError(ExpertsError, ValueError):
    """A knowledge base that cannot be used: a missing or unreadable path, an
    empty or malformed file. The message names the file (and line)."""
