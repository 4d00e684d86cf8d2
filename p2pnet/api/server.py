"""A small HTTP/1.1 server on Trio + h11, run inside the node's own Trio loop.

    server = HttpServer(router, port=0)
    url = await nursery.start(server.run)     # "http://127.0.0.1:PORT"

Every limit is bounded: connections (over the limit a client gets 503 "busy"
and is closed), header and body sizes, the time to receive a request and to
send a response. Handlers' HttpErrors become OpenAI-style JSON error answers;
any other exception becomes a 500 and one log record, and the server goes on.
"""

from __future__ import annotations

import errno
import hmac
import ipaddress
import logging
from collections import Counter
from dataclasses import replace
from http import HTTPStatus
from typing import Any

import h11
import trio

from p2pnet.api.errors import ApiError, HttpError, InsecureBindError
from p2pnet.api.http import Headers, Request, Response, Router, StreamingResponse

_RECEIVE_SIZE = 64 * 1024
_LINGER_S = 1.0  # a closing connection waits this long for the client to read our answer
_ACCEPT_PAUSE_S = 0.1  # after running out of file descriptors
_ACCEPT_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
_STREAM_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Closed(Exception):
    """The client went away, or stopped reading what we send: drop the connection."""


class _ReadTimeout(Exception):
    """The client did not send the whole request in time."""


def _encode_headers(headers: Headers) -> list[tuple[bytes, bytes]]:
    return [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers]


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


class HttpServer:
    def __init__(
        self,
        router: Router,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str | None = None,
        *,
        max_connections: int = 64,
        max_header_bytes: int = 16 * 1024,
        max_body_bytes: int = 1024 * 1024,
        read_timeout_s: float = 30.0,
        write_timeout_s: float = 30.0,
        logger: logging.Logger | None = None,
    ) -> None:
        if not api_key and not is_loopback(host):
            raise InsecureBindError(
                f"refusing to listen on {host!r} without an API key: "
                "anyone who can reach it could use this node; set an API key or bind 127.0.0.1"
            )
        for name, value in (
            ("max_connections", max_connections),
            ("max_header_bytes", max_header_bytes),
            ("max_body_bytes", max_body_bytes),
            ("read_timeout_s", read_timeout_s),
            ("write_timeout_s", write_timeout_s),
        ):
            if not value > 0:
                raise ValueError(f"{name} must be positive, not {value!r}")
        self._router = router
        self._host = host
        self._port = port
        self._api_key = api_key.encode() if api_key else None
        self._max_connections = max_connections
        self._max_header_bytes = max_header_bytes
        self._max_body_bytes = max_body_bytes
        self._read_timeout_s = read_timeout_s
        self._write_timeout_s = write_timeout_s
        self._log = logger or logging.getLogger(__name__)
        self.url: str | None = None  # set once listening
        self._active = 0
        self._rejecting = 0
        self._connections_total = 0
        self._rejected_busy = 0
        self._abandoned = 0  # requests whose client left before the answer was complete
        self._responses: Counter[int] = Counter()

    def stats(self) -> dict[str, Any]:
        return {
            "connections_active": self._active,
            "connections_total": self._connections_total,
            "rejected_busy": self._rejected_busy,
            "requests_abandoned": self._abandoned,
            "requests_by_status": dict(self._responses),
        }

    async def run(self, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen and serve until cancelled; `task_status.started(url)` once bound."""
        try:
            listeners = await trio.open_tcp_listeners(self._port, host=self._host)
        except OSError as exc:
            raise ApiError(f"cannot listen on {self._host}:{self._port}: {exc.strerror or exc}") from exc
        try:
            port = listeners[0].socket.getsockname()[1]
            host = f"[{self._host}]" if ":" in self._host else self._host
            self.url = f"http://{host}:{port}"
            async with trio.open_nursery() as nursery:
                for listener in listeners:
                    nursery.start_soon(self._accept_loop, listener, nursery)
                task_status.started(self.url)
        finally:
            with trio.CancelScope(shield=True):
                for listener in listeners:
                    await listener.aclose()

    # -- connections ----------------------------------------------------------

    async def _accept_loop(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno not in _ACCEPT_ERRNOS:
                    raise
                self._log.error("accept failed (%s); pausing", exc)
                await trio.sleep(_ACCEPT_PAUSE_S)
                continue
            self._connections_total += 1
            if self._active < self._max_connections:
                self._active += 1
                nursery.start_soon(self._connection_task, stream)
            else:
                self._rejected_busy += 1
                if self._rejecting < self._max_connections:
                    self._rejecting += 1
                    nursery.start_soon(self._reject_busy, stream)
                else:
                    await stream.aclose()

    async def _connection_task(self, stream: trio.SocketStream) -> None:
        try:
            await self._serve_connection(stream)
        except Exception:  # a bug of ours: lose this connection, keep the server
            self._log.exception("HTTP connection failed")
        finally:
            self._active -= 1
            with trio.CancelScope(shield=True):
                await stream.aclose()

    async def _reject_busy(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        error = HttpError(503, "the node is busy: too many connections", code="busy")
        response = Response.error(error)
        headers = (*response.headers, ("retry-after", "1"))
        try:
            await self._send_response(conn, stream, Response(503, headers, response.body))
            await self._linger(stream)
        except _Closed:
            pass
        finally:
            self._rejecting -= 1
            with trio.CancelScope(shield=True):
                await stream.aclose()

    async def _serve_connection(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self._max_header_bytes)
        try:
            client = stream.socket.getpeername()[:2]
        except OSError:
            return
        try:
            while True:
                await self._serve_request(conn, stream, client)
                if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
                    conn.start_next_cycle()
                    continue
                if conn.our_state in (h11.DONE, h11.MUST_CLOSE) and conn.their_state is not h11.CLOSED:
                    await self._linger(stream)
                return
        except _Closed:
            return

    async def _linger(self, stream: trio.SocketStream) -> None:
        """Half-close, then read what the client still sends, so that closing
        does not reset the connection before the client has read our answer."""
        limit = self._max_header_bytes + self._max_body_bytes
        with trio.move_on_after(_LINGER_S):
            try:
                await stream.send_eof()
                drained = 0
                while drained <= limit:
                    data = await stream.receive_some(_RECEIVE_SIZE)
                    if not data:
                        return
                    drained += len(data)
            except _STREAM_ERRORS:
                return

    # -- one request ----------------------------------------------------------

    async def _serve_request(self, conn: h11.Connection, stream: trio.SocketStream, client: tuple) -> None:
        deadline = trio.current_time() + self._read_timeout_s
        head_only = False  # a HEAD request: the answer has headers and no body
        try:
            event = await self._receive_event(conn, stream, deadline)
            if isinstance(event, h11.ConnectionClosed):
                return
            assert isinstance(event, h11.Request), event
            head_only = event.method == b"HEAD"
            request = await self._read_request(conn, stream, event, client, deadline)
        except _ReadTimeout:
            if conn.their_state is h11.IDLE and not conn.trailing_data[0]:
                return  # an idle connection: drop it without a word
            error = HttpError(408, "the request did not arrive in time", code="request_timeout")
        except h11.RemoteProtocolError as exc:
            status = exc.error_status_hint
            code = "headers_too_large" if status == 431 else "bad_request"
            error = HttpError(status, f"malformed HTTP request: {exc}", code=code)
        except HttpError as exc:
            error = exc
        else:
            await self._respond(conn, stream, request)
            return
        await self._send_response(conn, stream, Response.error(error), head_only)

    async def _receive_event(self, conn: h11.Connection, stream: trio.SocketStream, deadline: float) -> Any:
        while True:
            event = conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            with trio.move_on_at(deadline) as scope:
                try:
                    data = await stream.receive_some(_RECEIVE_SIZE)
                except _STREAM_ERRORS:
                    raise _Closed from None
            if scope.cancelled_caught:
                raise _ReadTimeout
            conn.receive_data(data)

    async def _read_request(
        self,
        conn: h11.Connection,
        stream: trio.SocketStream,
        head: h11.Request,
        client: tuple,
        deadline: float,
    ) -> Request:
        # h11 bounds only heads that arrive in pieces; one read may hold a whole big head
        head_size = len(head.method) + len(head.target) + sum(len(n) + len(v) + 4 for n, v in head.headers)
        if head_size > self._max_header_bytes:
            raise HttpError(431, f"the request head is over {self._max_header_bytes} bytes", code="headers_too_large")
        headers = tuple((name.decode("latin-1"), value.decode("latin-1")) for name, value in head.headers)
        if self._api_key is not None and not self._authorized(headers):
            raise HttpError(
                401,
                "missing or wrong API key: send the header `Authorization: Bearer KEY`",
                code="invalid_api_key",
                headers=(("www-authenticate", "Bearer"),),
            )
        too_large = HttpError(
            413, f"the request body is over {self._max_body_bytes} bytes", code="body_too_large"
        )
        length = next((int(value) for name, value in head.headers if name == b"content-length"), None)
        if length is not None and length > self._max_body_bytes:
            raise too_large
        if conn.they_are_waiting_for_100_continue:
            await self._send(conn, stream, h11.InformationalResponse(status_code=100, headers=[]))
        body = bytearray()
        while True:
            event = await self._receive_event(conn, stream, deadline)
            if isinstance(event, h11.EndOfMessage):
                break
            if not isinstance(event, h11.Data):
                raise _Closed
            body += event.data
            if len(body) > self._max_body_bytes:
                raise too_large
        try:
            method = head.method.decode("ascii")
            target = head.target.decode("ascii")
        except UnicodeDecodeError:
            raise HttpError(400, "the request line is not ASCII", code="bad_request") from None
        return Request.from_target(method, target, headers, bytes(body), client)

    def _authorized(self, headers: Headers) -> bool:
        assert self._api_key is not None
        value = next((value for name, value in headers if name == "authorization"), "")
        scheme, _, token = value.partition(" ")
        presented = token.strip().encode("latin-1")
        # compare_digest whatever the scheme, so that timing says nothing
        return hmac.compare_digest(presented, self._api_key) and scheme.lower() == "bearer"

    async def _respond(self, conn: h11.Connection, stream: trio.SocketStream, request: Request) -> None:
        """Run the handler (and a streaming body's writer) while watching the
        client: if it leaves, they are cancelled."""
        pending: Response | None = None  # the response still to send, if any
        head_only = request.method == "HEAD"
        with trio.CancelScope() as client_gone:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._watch_for_disconnect, conn, stream, client_gone)
                # HEAD is GET without the body
                response = await self._call_handler(replace(request, method="GET") if head_only else request)
                if isinstance(response, StreamingResponse) and head_only:
                    pending = Response.error(HttpError(405, f"HEAD is not allowed on {request.path}: "
                                                            "its answer is a stream", code="method_not_allowed"))
                elif isinstance(response, StreamingResponse):
                    pending = await self._send_streaming(conn, stream, request, response, client_gone)
                else:
                    pending = response
                nursery.cancel_scope.cancel()
        if client_gone.cancelled_caught:
            self._abandoned += 1
            raise _Closed
        if pending is not None:
            await self._send_response(conn, stream, pending, head_only)

    async def _call_handler(self, request: Request) -> Response | StreamingResponse:
        try:
            handler, request = self._router.resolve(request)
            response = await handler(request)
            if not isinstance(response, (Response, StreamingResponse)):
                raise TypeError(f"handler returned {type(response).__name__}, not a Response")
            return response
        except HttpError as error:
            return Response.error(error)
        except Exception:
            self._log.exception("%s %s: handler failed", request.method, request.path)
            return Response.error(HttpError(500, "internal server error", code="internal_error"))

    # -- sending --------------------------------------------------------------

    async def _send(self, conn: h11.Connection, stream: trio.SocketStream, *events: Any) -> None:
        data = b"".join(conn.send(event) or b"" for event in events)
        with trio.move_on_after(self._write_timeout_s) as scope:
            try:
                await stream.send_all(data)
            except _STREAM_ERRORS:
                raise _Closed from None
        if scope.cancelled_caught:
            raise _Closed

    def _head(self, conn: h11.Connection, status: int, headers: Headers) -> h11.Response:
        if conn.their_state is not h11.DONE:
            # answering before the whole request was read: the connection ends here
            headers = (*headers, ("connection", "close"))
        self._responses[status] += 1
        return h11.Response(status_code=status, headers=_encode_headers(headers), reason=_reason(status))

    async def _send_response(self, conn: h11.Connection, stream: trio.SocketStream, response: Response,
                             head_only: bool = False) -> None:
        headers = (*response.headers, ("content-length", str(len(response.body))))
        head = self._head(conn, response.status, headers)
        if response.body and not head_only:
            await self._send(conn, stream, head, h11.Data(data=response.body), h11.EndOfMessage())
        else:
            await self._send(conn, stream, head, h11.EndOfMessage())

    async def _send_streaming(
        self,
        conn: h11.Connection,
        stream: trio.SocketStream,
        request: Request,
        response: StreamingResponse,
        client_gone: trio.CancelScope,
    ) -> Response | None:
        """Send the stream; returns the error response to send instead, if the
        writer failed before its first chunk."""
        head_sent = False

        async def send_or_cancel(*events: Any) -> None:
            try:
                await self._send(conn, stream, *events)
            except _Closed:
                client_gone.cancel()
                await trio.lowlevel.checkpoint()  # raises Cancelled into the writer

        async def send(chunk: bytes) -> None:
            nonlocal head_sent
            events: list[Any] = []
            if not head_sent:
                head_sent = True
                events.append(self._head(conn, response.status, response.headers))
            if chunk:
                events.append(h11.Data(data=chunk))
            await send_or_cancel(*events)

        try:
            await response.write(send)
        except HttpError as error:
            if not head_sent:
                return Response.error(error)
            self._log.warning("%s %s: stream cut: %s", request.method, request.path, error.message)
        except Exception:
            self._log.exception("%s %s: stream writer failed", request.method, request.path)
            if not head_sent:
                return Response.error(HttpError(500, "internal server error", code="internal_error"))
        else:
            if not head_sent:
                await send(b"")
            await send_or_cancel(h11.EndOfMessage())
        # after a failure mid-stream the body stays unterminated and the
        # connection closes (our state is not DONE): the client sees the cut
        return None

    async def _watch_for_disconnect(
        self, conn: h11.Connection, stream: trio.SocketStream, client_gone: trio.CancelScope
    ) -> None:
        """While a request is handled, notice when the client closes.

        Bytes that arrive meanwhile (a pipelined request) are kept for h11, up
        to one request's worth; past that, stop reading.
        """
        received = 0
        while received <= self._max_header_bytes + self._max_body_bytes:
            try:
                data = await stream.receive_some(_RECEIVE_SIZE)
            except _STREAM_ERRORS:
                data = b""
            if not data:
                client_gone.cancel()
                return
            conn.receive_data(data)
            received += len(data)
        await trio.sleep_forever()
