"""What handlers see: Request, Response, StreamingResponse and the Router.

No I/O here; the server (server.py) drives these over h11.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from typing import Any, Awaitable, Callable, Mapping
from urllib.parse import parse_qs, unquote, urlsplit

from p2pnet.api.errors import ApiError, HttpError

Headers = tuple[tuple[str, str], ...]
# A StreamingResponse's writer gets a `send(chunk)`; see StreamingResponse.
SendChunk = Callable[[bytes], Awaitable[None]]
Writer = Callable[[SendChunk], Awaitable[None]]
Handler = Callable[["Request"], Awaitable["Response | StreamingResponse"]]


def encode_json(obj: Any) -> bytes:
    """Compact UTF-8 JSON; NaN and infinities are refused (they are not JSON)."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def decode_json(body: bytes) -> Any:
    """Parse a JSON body, raising HttpError(400) on anything that is not JSON."""
    if not body:
        raise HttpError(400, "the request body must be JSON; it is empty", code="invalid_json")
    try:
        text = body.decode("utf-8")
        obj = json.loads(text, parse_constant=_refuse_constant)
    except UnicodeDecodeError:
        raise HttpError(400, "the request body is not UTF-8", code="invalid_json") from None
    except (ValueError, RecursionError) as exc:
        raise HttpError(400, f"the request body is not valid JSON: {exc}", code="invalid_json") from None
    if _SURROGATE_ESCAPE.search(text) and _has_lone_surrogate(obj):
        raise HttpError(400, "the request body holds a \\u escape of a lone UTF-16 surrogate, "
                             "which is not a character", code="invalid_json")
    return obj


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
"""Only such an escape can put a lone surrogate into a string that json.loads returns."""


def _has_lone_surrogate(obj: Any) -> bool:
    """Whether any string (key or value) in a parsed JSON value is not valid
    Unicode text (a lone surrogate, which UTF-8 cannot encode)."""
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # percent-decoded, without the query string
    query: Mapping[str, tuple[str, ...]]
    headers: Headers  # names lower-case, in arrival order
    body: bytes = b""
    path_params: Mapping[str, str] = field(default_factory=dict)  # set by the Router
    client: tuple[str, int] | None = None
    raw_path: str = ""  # as sent, still percent-encoded; "" means same as `path`

    @classmethod
    def from_target(
        cls,
        method: str,
        target: str,
        headers: Headers,
        body: bytes = b"",
        client: tuple[str, int] | None = None,
    ) -> Request:
        """Build a Request from a target such as ``/v1/models?x=1`` (or its absolute form)."""
        if target.startswith(("http://", "https://")):
            parts = urlsplit(target)
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        if not target.startswith("/"):
            raise HttpError(400, f"unsupported request target {target[:100]!r}", code="bad_request")
        raw_path, _, raw_query = target.partition("?")
        parsed = parse_qs(raw_query, keep_blank_values=True)
        return cls(
            method=method,
            path=unquote(raw_path),
            query={name: tuple(values) for name, values in parsed.items()},
            headers=headers,
            body=body,
            client=client,
            raw_path=raw_path,
        )

    def header(self, name: str) -> str | None:
        """The first value of a header, or None."""
        name = name.lower()
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def arg(self, name: str, default: str | None = None) -> str | None:
        """The first value of a query parameter, or `default`."""
        values = self.query.get(name)
        return values[0] if values else default

    def json(self) -> Any:
        """The body parsed as JSON; HttpError(400) if it is not JSON."""
        return decode_json(self.body)


@dataclass(frozen=True)
class Response:
    status: int
    headers: Headers = ()
    body: bytes = b""

    @classmethod
    def json(cls, status: int, obj: Any, headers: Headers = ()) -> Response:
        return cls(status, (("content-type", "application/json"), *headers), encode_json(obj))

    @classmethod
    def text(cls, status: int, text: str, headers: Headers = ()) -> Response:
        return cls(status, (("content-type", "text/plain; charset=utf-8"), *headers), text.encode())

    @classmethod
    def error(cls, error: HttpError) -> Response:
        return cls.json(error.status, error.body(), error.headers)


@dataclass(frozen=True)
class StreamingResponse:
    """A response whose body `write(send)` produces, sent with chunked encoding.

    The status line and headers go out with the first `send`, so a writer may
    still raise HttpError before its first `send` and the client gets a normal
    error response instead. When the client goes away the writer is cancelled.
    (A writer, not an async generator: it may open nurseries, which Trio does
    not allow across a generator's `yield`.)
    """

    status: int
    headers: Headers
    write: Writer

    @classmethod
    def event_stream(cls, write: Writer, status: int = 200, headers: Headers = ()) -> StreamingResponse:
        """A text/event-stream response; encode events with p2pnet.api.sse."""
        return cls(
            status,
            (("content-type", "text/event-stream"), ("cache-control", "no-cache"), *headers),
            write,
        )


@dataclass(frozen=True)
class _Route:
    method: str
    segments: tuple[str, ...]  # "{name}" matches one path segment
    handler: Handler

    def match(self, segments: tuple[str, ...]) -> dict[str, str] | None:
        if len(segments) != len(self.segments):
            return None
        params = {}
        for pattern, segment in zip(self.segments, segments):
            if pattern.startswith("{") and pattern.endswith("}"):
                params[pattern[1:-1]] = segment
            elif pattern != segment:
                return None
        return params


def _split_path(path: str) -> tuple[str, ...]:
    """`/a/b/` -> ("a", "b"); segments stay percent-encoded until matched."""
    return tuple(part for part in path.strip("/").split("/") if part) if path != "/" else ()


class Router:
    """Maps (method, path) to handlers. Paths may hold `{name}` segments."""

    def __init__(self) -> None:
        self._routes: list[_Route] = []

    def add(self, method: str, path: str, handler: Handler) -> None:
        route = _Route(method.upper(), _split_path(path), handler)
        if any(r.method == route.method and r.segments == route.segments for r in self._routes):
            raise ApiError(f"route {route.method} {path} is already registered")
        self._routes.append(route)

    def resolve(self, request: Request) -> tuple[Handler, Request]:
        """The handler for `request` and the request with its path_params set.

        Raises HttpError 404 (no such path) or 405 (path exists, not this method).
        """
        segments = _split_path(request.raw_path or request.path)
        allowed = []
        for route in self._routes:
            params = route.match(segments)
            if params is None:
                continue
            if route.method == request.method:
                decoded = {name: unquote(value) for name, value in params.items()}
                return route.handler, replace(request, path_params=decoded)
            allowed.append(route.method)
        if allowed:
            raise HttpError(
                405,
                f"method {request.method} is not allowed on {request.path}",
                code="method_not_allowed",
                headers=(("allow", ", ".join(sorted(set(allowed)))),),
            )
        raise HttpError(404, f"no such path: {request.path}", code="not_found")
