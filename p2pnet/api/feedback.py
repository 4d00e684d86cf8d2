"""``POST /v1/feedback {"query_id": "...", "accept": true}``: a user's verdict
on an answer this node gave, recorded as a rating (signal "feedback") for the
expert whose answer was chosen. 404 for an unknown or expired query id, 409
when the query already has feedback."""

from __future__ import annotations

from typing import Protocol

from p2pnet.api.errors import HttpError
from p2pnet.api.http import Request, Response, Router
from p2pnet.api.openai_schema import query_error
from p2pnet.query import QueryError

MAX_QUERY_ID_CHARS = 64


class FeedbackService(Protocol):
    def feedback(self, query_id: str, accept: bool) -> dict: ...


def parse_feedback(body) -> tuple[str, bool]:
    """(query_id, accept) from the request body; HttpError(400) if malformed."""
    if not isinstance(body, dict):
        raise HttpError(400, "the request body must be a JSON object", code="invalid_type")
    unknown = sorted(set(body) - {"query_id", "accept"})
    if unknown:
        raise HttpError(400, f"unsupported parameter '{unknown[0]}'", param=unknown[0], code="unsupported_parameter")
    query_id, accept = body.get("query_id"), body.get("accept")
    if not isinstance(query_id, str) or not 0 < len(query_id) <= MAX_QUERY_ID_CHARS:
        raise HttpError(400, "'query_id' must be the query id string of an answer", param="query_id",
                        code="invalid_value")
    if not isinstance(accept, bool):
        raise HttpError(400, "'accept' must be true or false", param="accept", code="invalid_type")
    return query_id.lower(), accept


def mount_feedback(router: Router, service: FeedbackService) -> None:
    async def feedback(request: Request) -> Response:
        query_id, accept = parse_feedback(request.json())
        try:
            return Response.json(200, service.feedback(query_id, accept))
        except QueryError as exc:
            raise query_error(exc) from None

    router.add("POST", "/v1/feedback", feedback)


class FeedbackRoutes:
    """A node service (see p2pnet.services) that mounts the route."""

    def __init__(self, service: FeedbackService) -> None:
        self.service = service

    def mount(self, router: Router) -> None:
        mount_feedback(router, self.service)
