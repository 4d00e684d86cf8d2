"""Errors of the experts package. Query errors carry the HTTP status and the
OpenAI error ``type``/``code`` that the API reports for them."""

from p2pnet.errors import P2PNetError


class ExpertsError(P2PNetError):
    """Root of the experts package."""


class ModelError(ExpertsError):
    """A model file is missing, corrupt, or cannot be loaded."""


class QueryError(ExpertsError):
    status = 500
    error_type = "server_error"
    code = "internal_error"


class BadQuery(QueryError):
    status = 400
    error_type = "invalid_request_error"
    code = "invalid_request"


class UnknownModel(QueryError):
    status = 404
    error_type = "invalid_request_error"
    code = "model_not_found"


class NoExpertAvailable(QueryError):
    status = 503
    error_type = "server_error"
    code = "no_expert_available"


class Busy(QueryError):
    """A bounded queue is full: try again later."""

    status = 503
    error_type = "server_error"
    code = "busy"


class DeadlineExceeded(QueryError):
    status = 504
    error_type = "server_error"
    code = "deadline_exceeded"


class ChecksumMismatch(ModelError):
    """A model file does not have its pinned sha256."""


class ExpertSpecError(ExpertsError, ValueError):
    """A malformed ``--expert`` value; the message names the bad key."""


class ScriptedFailure(ExpertsError):
    """The scripted backend failed on purpose (tests and simulations)."""
