"""A small HTTP/1.1 server on Trio + h11, run inside the node's own Trio loop.

    server = HttpServer(router, port=0)
    url = await nursery.start(server.run)     # "http://127.0.0.1:PORT"

Every limit is bounded: connections, in pools (limits.py) that keep a
slowloris wave or one greedy client from locking out the rest and keep room
for the control routes (a full server answers 503 "busy" and closes, never
hangs); header and body sizes; the time to send a request head
(header_timeout_s), its body (body_timeout_s), to start the next request on
a keep-alive connection (idle_timeout_s) and to take a response
(write_timeout_s). Requests from web pages are kept out (guard.py): Host
must name this node, a foreign Origin is refused, a body must be JSON.
Handlers' HttpErrors become OpenAI-style JSON error answers; any other
exception becomes a 500 and one log record, and the server goes on.
"""

from __future__ import annotations

import errno
import hmac
import ipaddress
import logging
from collections import Counter
from dataclasses import replace
from http import HTTPStatus
from typing import Any, Callable, Iterable
from urllib.parse import unquote, urlsplit

import h11
import trio

from p2pnet.api.errors import ApiError, HttpError, InsecureBindError
from p2pnet.api.guard import RequestGuard, check_content_type
from p2pnet.api.http import Headers, Request, Response, Router, StreamingResponse
from p2pnet.api.limits import PENDING, WORK, Pools, Slot

_RECEIVE_SIZE = 64 * 1024
_LINGER_S = 1.0  # a closing connection waits this long for the client to read our answer
_ACCEPT_PAUSE_S = 0.1  # after running out of file descriptors
_ACCEPT_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
_STREAM_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError)

CONTROL_PATHS = ("/status", "/peers", "/messages", "/health")
"""Routes whose bodiless GETs always find a connection slot (see limits.py)."""


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


class _Evicted(Exception):
    """The connection was still waiting for a request head and gave its slot to another."""


def _encode_headers(headers: Headers) -> list[tuple[bytes, bytes]]:
    return [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers]


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


def _busy(why: str) -> HttpError:
    return HttpError(503, f"the node is busy: {why}; try again", code="busy", headers=(("retry-after", "1"),))


def _with_headers(response: Response | StreamingResponse, extra: Headers) -> Response | StreamingResponse:
    return replace(response, headers=(*response.headers, *extra)) if extra else response


class HttpServer:
    """`max_connections` connections at most (at least 2); of them at most
    `max_pending` (default half) waiting for a request head, and at most
    `max_connections - control_reserve` (default 1/16 kept) serving requests
    other than a bodiless GET of `control_paths`; one client (source address)
    holds at most `max_per_client` (default a quarter) pending connections
    and as many such requests. `allowed_hosts`: more names the Host header
    may give besides loopback names and the bound address; `allowed_origins`:
    web origins (``https://ui.example:8443``) allowed to call the API;
    `extra_auth(method, target, headers)`: a second way in for a request
    without the API key (the dashboard's token): True admits it, False
    refuses it with the usual 401, an HttpError is answered instead."""

    def __init__(
        self,
        router: Router,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str | None = None,
        *,
        max_connections: int = 256,
        max_pending: int | None = None,
        max_per_client: int | None = None,
        control_reserve: int | None = None,
        control_paths: Iterable[str] = CONTROL_PATHS,
        max_header_bytes: int = 16 * 1024,
        max_body_bytes: int = 1024 * 1024,
        header_timeout_s: float = 10.0,
        body_timeout_s: float = 30.0,
        idle_timeout_s: float = 30.0,
        write_timeout_s: float = 30.0,
        allowed_hosts: Iterable[str] = (),
        allowed_origins: Iterable[str] = (),
        extra_auth: Callable[[str, str, Headers], bool] | None = None,
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
            ("header_timeout_s", header_timeout_s),
            ("body_timeout_s", body_timeout_s),
            ("idle_timeout_s", idle_timeout_s),
            ("write_timeout_s", write_timeout_s),
        ):
            if not value > 0:
                raise ValueError(f"{name} must be positive, not {value!r}")
        self._pools = Pools(
            max_connections,
            max_pending if max_pending is not None else max(1, max_connections // 2),
            max_per_client if max_per_client is not None else max(1, max_connections // 4),
            control_reserve if control_reserve is not None else max(1, max_connections // 16),
        )
        self._guard = RequestGuard(host, allowed_hosts, allowed_origins)
        self._control_paths = frozenset(path.rstrip("/") or "/" for path in control_paths)
        self._router = router
        self._host = host
        self._port = port
        self._api_key = api_key.encode() if api_key else None
        self._extra_auth = extra_auth
        self._max_header_bytes = max_header_bytes
        self._max_body_bytes = max_body_bytes
        self._header_timeout_s = header_timeout_s
        self._body_timeout_s = body_timeout_s
        self._idle_timeout_s = idle_timeout_s
        self._write_timeout_s = write_timeout_s
        self._log = logger or logging.getLogger(__name__)
        self.url: str | None = None  # set once listening
        self._refusing = 0  # connections being answered 503 outside the pools
        self._connections_total = 0
        self._rejected_busy = 0
        self._abandoned = 0  # requests whose client left before the answer was complete
        self._responses: Counter[int] = Counter()

    def stats(self) -> dict[str, Any]:
        return {
            "connections_active": self._pools.held,
            "connections_pending": self._pools.count(PENDING),
            "connections_working": self._pools.count(WORK),
            "connections_total": self._connections_total,
            "connections_evicted": self._pools.evicted,
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
            try:
                client = stream.socket.getpeername()[:2]
            except OSError:
                await stream.aclose()
                continue
            slot = self._pools.admit(client[0])
            if slot is not None:
                nursery.start_soon(self._connection_task, stream, slot, client)
                continue
            self._rejected_busy += 1
            if self._refusing < self._pools.max_pending:
                self._refusing += 1
                nursery.start_soon(self._reject_busy, stream)
            else:
                await stream.aclose()

    async def _connection_task(self, stream: trio.SocketStream, slot: Slot, client: tuple) -> None:
        try:
            await self._serve_connection(stream, slot, client)
        except Exception:  # a bug of ours: lose this connection, keep the server
            self._log.exception("HTTP connection failed")
        finally:
            self._pools.release(slot)
            with trio.CancelScope(shield=True):
                await stream.aclose()

    async def _reject_busy(self, stream: trio.SocketStream) -> None:
        try:
            await self._refuse(h11.Connection(h11.SERVER), stream,
                               Response.error(_busy("every connection slot is serving a request")))
        finally:
            self._refusing -= 1
            with trio.CancelScope(shield=True):
                await stream.aclose()

    async def _refuse(self, conn: h11.Connection, stream: trio.SocketStream, response: Response) -> None:
        try:
            await self._send_response(conn, stream, response)
            await self._linger(stream)
        except _Closed:
            pass

    async def _serve_connection(self, stream: trio.SocketStream, slot: Slot, client: tuple) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self._max_header_bytes)
        first = True
        try:
            while True:
                try:
                    await self._serve_request(conn, stream, slot, client, first)
                except _Evicted:
                    await self._answer_evicted(conn, stream)
                    return
                first = False
                if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
                    conn.start_next_cycle()
                    self._pools.to_pending(slot)
                    continue
                if conn.our_state in (h11.DONE, h11.MUST_CLOSE) and conn.their_state is not h11.CLOSED:
                    await self._linger(stream)
                return
        except _Closed:
            return

    async def _answer_evicted(self, conn: h11.Connection, stream: trio.SocketStream) -> None:
        """Closed without a word if it had sent nothing (an idle keep-alive
        connection, as after idle_timeout_s), else 503 busy."""
        if (conn.their_state is h11.IDLE and not conn.trailing_data[0]) or self._refusing >= self._pools.max_pending:
            return
        self._refusing += 1
        try:
            await self._refuse(conn, stream, Response.error(_busy(
                "this connection sent no whole request in time, and gave its slot to another")))
        finally:
            self._refusing -= 1

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

    async def _serve_request(self, conn: h11.Connection, stream: trio.SocketStream, slot: Slot,
                             client: tuple, first: bool) -> None:
        head_only = False  # a HEAD request: the answer has headers and no body
        cors: Headers = ()  # for a listed cross origin: its CORS headers
        try:
            event = await self._read_head(conn, stream, slot, first)
            if isinstance(event, h11.ConnectionClosed):
                return
            assert isinstance(event, h11.Request), event
            head_only = event.method == b"HEAD"
            method, target, headers = self._parse_head(event)
            has_body = any(name == "transfer-encoding" or (name == "content-length" and value.strip() != "0")
                           for name, value in headers)
            if not self._pools.start_request(slot, self._is_control(method, target, has_body)):
                self._rejected_busy += 1
                raise _busy("too many requests at once, from this client or in all")
            cors, preflight = self._guard.check(method, target, headers)
            if preflight is not None:
                await self._read_body(conn, stream, headers)
                await self._send_response(conn, stream, preflight)
                return
            self._check_api_key(method, target, headers)
            check_content_type(method, headers, has_body)
            body = await self._read_body(conn, stream, headers)
            request = Request.from_target(method, target, headers, body, client)
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
            await self._respond(conn, stream, request, cors)
            return
        await self._send_response(conn, stream, _with_headers(Response.error(error), cors), head_only)

    async def _read_head(self, conn: h11.Connection, stream: trio.SocketStream, slot: Slot, first: bool) -> Any:
        """The next request head (or ConnectionClosed). A new connection has
        header_timeout_s to send it; a keep-alive one idle_timeout_s to start
        it, then header_timeout_s. Raises _Evicted if the slot is given away."""
        waiting = not first and not conn.trailing_data[0]  # idle, between keep-alive requests
        deadline = trio.current_time() + (self._idle_timeout_s if waiting else self._header_timeout_s)
        event = None
        with slot.scope:
            while True:
                event = conn.next_event()
                if event is not h11.NEED_DATA:
                    break
                data = await self._receive_before(stream, deadline)
                if waiting and data:
                    waiting = False
                    deadline = trio.current_time() + self._header_timeout_s
                conn.receive_data(data)
        if slot.scope.cancelled_caught:
            raise _Evicted
        return event

    async def _receive_event(self, conn: h11.Connection, stream: trio.SocketStream, deadline: float) -> Any:
        while True:
            event = conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            conn.receive_data(await self._receive_before(stream, deadline))

    @staticmethod
    async def _receive_before(stream: trio.SocketStream, deadline: float) -> bytes:
        """The next bytes from the client (b"" when it closed); _ReadTimeout
        past ``deadline``, _Closed when the connection broke."""
        with trio.move_on_at(deadline):
            try:
                return await stream.receive_some(_RECEIVE_SIZE)
            except _STREAM_ERRORS:
                raise _Closed from None
        raise _ReadTimeout  # only a cancelled scope gets here

    def _parse_head(self, head: h11.Request) -> tuple[str, str, Headers]:
        # h11 bounds only heads that arrive in pieces; one read may hold a whole big head
        head_size = len(head.method) + len(head.target) + sum(len(n) + len(v) + 4 for n, v in head.headers)
        if head_size > self._max_header_bytes:
            raise HttpError(431, f"the request head is over {self._max_header_bytes} bytes", code="headers_too_large")
        try:
            method = head.method.decode("ascii")
            target = head.target.decode("ascii")
        except UnicodeDecodeError:
            raise HttpError(400, "the request line is not ASCII", code="bad_request") from None
        headers = tuple((name.decode("latin-1"), value.decode("latin-1")) for name, value in head.headers)
        return method, target, headers

    def _is_control(self, method: str, target: str, has_body: bool) -> bool:
        if method not in ("GET", "HEAD") or has_body:
            return False
        if target.startswith(("http://", "https://")):
            target = urlsplit(target).path
        return (unquote(target.partition("?")[0]).rstrip("/") or "/") in self._control_paths

    def _check_api_key(self, method: str, target: str, headers: Headers) -> None:
        if self._api_key is None or self._authorized(headers):
            return
        if self._extra_auth is not None and self._extra_auth(method, target, headers):
            return
        raise HttpError(
            401,
            "missing or wrong API key: send the header `Authorization: Bearer KEY`",
            code="invalid_api_key",
            headers=(("www-authenticate", "Bearer"),),
        )

    async def _read_body(self, conn: h11.Connection, stream: trio.SocketStream, headers: Headers) -> bytes:
        """The body, which must arrive within body_timeout_s."""
        deadline = trio.current_time() + self._body_timeout_s
        too_large = HttpError(
            413, f"the request body is over {self._max_body_bytes} bytes", code="body_too_large"
        )
        length = next((int(value) for name, value in headers if name == "content-length"), None)
        if length is not None and length > self._max_body_bytes:
            raise too_large
        if conn.they_are_waiting_for_100_continue:
            await self._send(conn, stream, h11.InformationalResponse(status_code=100, headers=[]))
        body = bytearray()
        while True:
            event = await self._receive_event(conn, stream, deadline)
            if isinstance(event, h11.EndOfMessage):
                return bytes(body)
            if not isinstance(event, h11.Data):
                raise _Closed
            body += event.data
            if len(body) > self._max_body_bytes:
                raise too_large

    def _authorized(self, headers: Headers) -> bool:
        assert self._api_key is not None
        value = next((value for name, value in headers if name == "authorization"), "")
        scheme, _, token = value.partition(" ")
        presented = token.strip().encode("latin-1")
        # compare_digest whatever the scheme, so that timing says nothing
        return hmac.compare_digest(presented, self._api_key) and scheme.lower() == "bearer"

    async def _respond(self, conn: h11.Connection, stream: trio.SocketStream, request: Request,
                       cors: Headers) -> None:
        """Run the handler (and a streaming body's writer) while watching the
        client: if it leaves, they are cancelled."""
        pending: Response | None = None  # the response still to send, if any
        head_only = request.method == "HEAD"
        with trio.CancelScope() as client_gone:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._watch_for_disconnect, conn, stream, client_gone)
                # HEAD is GET without the body
                response = await self._call_handler(replace(request, method="GET") if head_only else request)
                response = _with_headers(response, cors)
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
