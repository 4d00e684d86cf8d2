"""Errors of the api package (the node's HTTP server, its routes and its client)."""

from p2pnet.errors import P2PNetError


class ApiError(P2PNetError):
    """Root of the api package."""


class InsecureBindError(ApiError):
    """The server was asked to listen beyond loopback without an API key."""


class NodeUnreachable(ApiError):
    """The client found no node answering at the URL it was given."""


class HttpError(ApiError):
    """An HTTP error answer, in OpenAI's error shape.

    Handlers raise it and the server answers with it; the client raises it
    when the server answered with an error status.
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        error_type: str | None = None,
        code: str | None = None,
        param: str | None = None,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type or (
            "invalid_request_error" if status < 500 else "server_error"
        )
        self.code = code
        self.param = param
        self.headers = headers

    def body(self) -> dict:
        """The JSON body OpenAI's API answers errors with."""
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code,
            }
        }
