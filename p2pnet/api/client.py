"""A small synchronous JSON client for the CLI (stdlib urllib, no event loop).

Errors: NodeUnreachable when nothing answers, HttpError (with the server's
message, status and code) when the node answers with an error status; both
are ApiError.
"""

from __future__ import annotations

import http.client
import json
import socket
import urllib.error
import urllib.request
from typing import Any, Iterator
from urllib.parse import urlsplit

from p2pnet.api import sse
from p2pnet.api.errors import ApiError, HttpError, NodeUnreachable

def _base(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _bad_url(url: str, reason: Any) -> ApiError:
    return ApiError(f"{url!r} is not a usable node URL ({reason}); give one like http://127.0.0.1:8700")


def _request(url: str, obj: Any, api_key: str | None, accept: str) -> urllib.request.Request:
    try:
        scheme = urlsplit(url).scheme
    except ValueError as exc:
        raise _bad_url(url, exc) from None
    if scheme not in ("http", "https"):
        raise _bad_url(url, "not http:// or https://")
    headers = {"Accept": accept}
    data = None
    if obj is not None:
        data = json.dumps(obj).encode()
        headers["Content-Type"] = "application/json"
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return urllib.request.Request(url, data=data, headers=headers, method="GET" if obj is None else "POST")


def _error_from_response(error: urllib.error.HTTPError) -> HttpError:
    raw = error.read(64 * 1024)
    try:
        body = json.loads(raw)
        detail = body["error"]
        return HttpError(
            error.code,
            str(detail["message"]),
            error_type=detail.get("type"),
            code=detail.get("code"),
            param=detail.get("param"),
        )
    except (ValueError, TypeError, KeyError):
        text = raw.decode("utf-8", "replace").strip()[:200] or error.reason
        return HttpError(error.code, f"HTTP {error.code}: {text}")


def _open(request: urllib.request.Request, timeout: float):
    url = request.full_url
    try:
        # the node is named explicitly (mostly loopback): no HTTP proxy from the environment
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        return opener.open(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        with exc:
            raise _error_from_response(exc) from None
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, ConnectionRefusedError):
            raise NodeUnreachable(
                f"no node is answering at {_base(url)} — is it running? (start one with `p2pnet node start`)"
            ) from None
        if isinstance(exc.reason, (socket.timeout, TimeoutError)):
            raise NodeUnreachable(f"the node at {_base(url)} did not answer within {timeout} s") from None
        raise NodeUnreachable(f"cannot reach {_base(url)}: {exc.reason}") from None
    except (socket.timeout, TimeoutError):
        raise NodeUnreachable(f"the node at {_base(url)} did not answer within {timeout} s") from None
    except (ConnectionError, OSError) as exc:
        raise NodeUnreachable(f"the connection to {_base(url)} failed: {exc}") from None
    except (ValueError, http.client.InvalidURL) as exc:  # a port that is no number, control characters
        raise _bad_url(url, exc) from None


def _read_json(response, url: str, timeout: float) -> Any:
    try:
        with response:
            raw = response.read()
    except (socket.timeout, TimeoutError):
        raise NodeUnreachable(f"the node at {_base(url)} did not answer within {timeout} s") from None
    except OSError as exc:
        raise NodeUnreachable(f"the connection to {_base(url)} failed: {exc}") from None
    try:
        return json.loads(raw)
    except ValueError:
        raise ApiError(f"{url} answered something that is not JSON") from None


def get_json(url: str, timeout: float = 10.0, api_key: str | None = None) -> Any:
    return _read_json(_open(_request(url, None, api_key, "application/json"), timeout), url, timeout)


def post_json(url: str, obj: Any, timeout: float = 60.0, api_key: str | None = None) -> Any:
    return _read_json(_open(_request(url, obj, api_key, "application/json"), timeout), url, timeout)


def stream_json(url: str, obj: Any, timeout: float = 60.0, api_key: str | None = None) -> Iterator[Any]:
    """POST `obj` and yield each server-sent event's JSON data until `[DONE]`.

    `timeout` bounds each wait for data, not the whole stream. An event
    holding an "error" object raises HttpError.
    """
    response = _open(_request(url, obj, api_key, "text/event-stream"), timeout)
    with response:
        try:
            for data in sse.iter_event_data(response):
                if data == "[DONE]":
                    return
                try:
                    event = json.loads(data)
                except ValueError:
                    raise ApiError(f"{url} streamed an event that is not JSON: {data[:100]!r}") from None
                if isinstance(event, dict) and isinstance(event.get("error"), dict):
                    detail = event["error"]  # an error after the stream started: no status of its own
                    raise HttpError(
                        500 if detail.get("type") == "server_error" else 400,
                        str(detail.get("message")),
                        error_type=detail.get("type"),
                        code=detail.get("code"),
                        param=detail.get("param"),
                    )
                yield event
        except (socket.timeout, TimeoutError):
            raise NodeUnreachable(f"the node at {_base(url)} stopped sending for {timeout} s") from None
        except (OSError, http.client.HTTPException) as exc:  # a cut chunked body: IncompleteRead
            raise NodeUnreachable(f"the stream from {_base(url)} broke: {exc}") from None
    raise ApiError(f"the stream from {_base(url)} ended without [DONE]")
