"""The HTTP server, over raw sockets: routing, limits, timeouts, streaming."""

from __future__ import annotations

import json
import logging

import h11
import pytest
import trio

from p2pnet.api.errors import ApiError, HttpError, InsecureBindError
from p2pnet.api.http import Request, Response, Router, StreamingResponse
from p2pnet.api.server import HttpServer
from p2pnet.errors import P2PNetError


async def hello(request: Request) -> Response:
    return Response.json(200, {"hello": request.arg("name", "world")})


async def echo(request: Request) -> Response:
    return Response.json(200, {"got": request.json()})


async def item(request: Request) -> Response:
    return Response.json(200, {"id": request.path_params["id"]})


async def crash(request: Request) -> Response:
    raise RuntimeError("handler bug")


def make_router(**extra_routes) -> Router:
    router = Router()
    router.add("GET", "/hello", hello)
    router.add("POST", "/echo", echo)
    router.add("GET", "/items/{id}", item)
    router.add("GET", "/crash", crash)
    for path, handler in extra_routes.items():
        router.add("GET", "/" + path, handler)
    return router


async def start(nursery, router=None, **kwargs) -> tuple[HttpServer, int]:
    server = HttpServer(router or make_router(), **kwargs)
    url = await nursery.start(server.run)
    return server, int(url.rsplit(":", 1)[1])


async def connect(port: int) -> trio.SocketStream:
    return await trio.open_tcp_stream("127.0.0.1", port)


async def read_until_closed(stream: trio.SocketStream) -> bytes:
    data = b""
    while chunk := await stream.receive_some(65536):
        data += chunk
    return data


class HttpClient:
    """One raw keep-alive connection, spoken through an h11 client."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.conn = h11.Connection(h11.CLIENT)

    async def send(self, method: str, target: str, body: bytes = b"", headers=()) -> None:
        hdrs = [("host", "127.0.0.1"), *headers]
        if method in ("POST", "PUT") and not any(name == "content-type" for name, _ in headers):
            hdrs.append(("content-type", "application/json"))
        if body:
            hdrs.append(("content-length", str(len(body))))
        data = self.conn.send(h11.Request(method=method, target=target, headers=hdrs))
        data += self.conn.send(h11.Data(data=body)) if body else b""
        data += self.conn.send(h11.EndOfMessage())
        await self.stream.send_all(data)

    async def next_event(self):
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                self.conn.receive_data(await self.stream.receive_some(65536))
                continue
            return event

    async def response(self) -> tuple[h11.Response, bytes]:
        head = await self.next_event()
        assert isinstance(head, h11.Response), head
        body = b""
        while not isinstance(event := await self.next_event(), h11.EndOfMessage):
            body += event.data
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
        return head, body

    async def request(self, method: str, target: str, body: bytes = b"", headers=()):
        await self.send(method, target, body, headers)
        return await self.response()


async def request_once(port: int, method: str, target: str, body: bytes = b"", headers=()):
    client = HttpClient(await connect(port))
    async with client.stream:
        return await client.request(method, target, body, headers)


def parse_raw_response(data: bytes) -> tuple[int, dict, dict]:
    """status, headers, JSON body of one raw response that ends the connection."""
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="GET", target="/", headers=[("host", "x")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(data)
    conn.receive_data(b"")
    head = conn.next_event()
    body = b""
    while isinstance(event := conn.next_event(), h11.Data):
        body += event.data
    headers = {name.decode(): value.decode() for name, value in head.headers}
    return head.status_code, headers, json.loads(body)


def header(response: h11.Response, name: str) -> str | None:
    for key, value in response.headers:
        if key == name.encode():
            return value.decode()
    return None


async def wait_until(predicate) -> None:
    """Wait for a condition the server reaches on its own (e.g. after seeing a FIN)."""
    with trio.fail_after(10):
        while not predicate():
            await trio.sleep(0.001)


# -- basics -------------------------------------------------------------------


async def test_run_reports_its_url(nursery):
    server = HttpServer(make_router())
    url = await nursery.start(server.run)
    assert url.startswith("http://127.0.0.1:") and int(url.rsplit(":", 1)[1]) > 0
    assert server.url == url


async def test_a_port_in_use_is_a_clear_error(nursery):
    _, port = await start(nursery)
    with pytest.raises(ApiError, match=f"cannot listen on 127.0.0.1:{port}"):
        await nursery.start(HttpServer(make_router(), port=port).run)


async def test_keep_alive_serves_several_requests_on_one_connection(nursery):
    server, port = await start(nursery)
    client = HttpClient(await connect(port))
    async with client.stream:
        for name in ("a", "b", "c"):
            head, body = await client.request("GET", f"/hello?name={name}")
            assert head.status_code == 200
            assert header(head, "content-type") == "application/json"
            assert json.loads(body) == {"hello": name}
    assert server.stats()["requests_by_status"] == {200: 3}
    assert server.stats()["connections_total"] == 1


async def test_pipelined_requests_are_answered_in_order(nursery):
    _, port = await start(nursery)
    stream = await connect(port)
    async with stream:
        await stream.send_all(
            b"GET /hello?name=1 HTTP/1.1\r\nhost: localhost\r\n\r\n"
            b"GET /hello?name=2 HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n"
        )
        data = await read_until_closed(stream)
    assert data.count(b"HTTP/1.1 200") == 2
    assert data.index(b'"1"') < data.index(b'"2"')


async def test_post_json_and_path_params(nursery):
    _, port = await start(nursery)
    head, body = await request_once(port, "POST", "/echo", b'{"x": [1, 2]}')
    assert (head.status_code, json.loads(body)) == (200, {"got": {"x": [1, 2]}})
    head, body = await request_once(port, "GET", "/items/a%2Fb:c")
    assert (head.status_code, json.loads(body)) == (200, {"id": "a/b:c"})


async def test_absolute_form_target_is_understood_and_asterisk_refused(nursery):
    _, port = await start(nursery)
    head, body = await request_once(port, "GET", "http://localhost/hello?name=abs")
    assert (head.status_code, json.loads(body)) == (200, {"hello": "abs"})
    head, body = await request_once(port, "GET", "http://node.local/hello")  # it names another host
    assert (head.status_code, json.loads(body)["error"]["code"]) == (421, "host_not_allowed")
    head, _ = await request_once(port, "OPTIONS", "*")
    assert head.status_code == 400


async def test_expect_100_continue(nursery):
    _, port = await start(nursery)
    stream = await connect(port)
    async with stream:
        await stream.send_all(
            b"POST /echo HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: 4\r\n"
            b"expect: 100-continue\r\n\r\n"
        )
        interim = b""
        while b"\r\n\r\n" not in interim:
            interim += await stream.receive_some(1024)
        assert interim.startswith(b"HTTP/1.1 100 ")
        await stream.send_all(b"[42]")
        client = HttpClient(stream)
        client.conn.send(h11.Request(method="POST", target="/echo", headers=[("host", "x"), ("content-length", "4")]))
        client.conn.send(h11.Data(data=b"[42]"))
        client.conn.send(h11.EndOfMessage())
        client.conn.receive_data(interim)
        assert isinstance(client.conn.next_event(), h11.InformationalResponse)
        head, body = await client.response()
    assert (head.status_code, json.loads(body)) == (200, {"got": [42]})


async def test_unknown_path_is_404_and_wrong_method_405(nursery):
    _, port = await start(nursery)
    head, body = await request_once(port, "GET", "/nope")
    assert head.status_code == 404
    assert json.loads(body)["error"]["code"] == "not_found"
    head, body = await request_once(port, "DELETE", "/hello")
    assert head.status_code == 405
    assert header(head, "allow") == "GET"
    assert set(json.loads(body)["error"]) == {"message", "type", "param", "code"}


async def test_bad_json_body_is_400(nursery):
    _, port = await start(nursery)
    # the last three: lone UTF-16 surrogates, as a value, a key and deep in a list
    for body in (b"{", b"\xff\xfe", b"NaN", b"[" * 100_000, b'{"a": "\\ud800"}', b'{"\\udc00": 1}',
                 b'[1, [{"b": ["x\\uDBFFy"]}]]'):
        head, answer = await request_once(port, "POST", "/echo", body)
        assert head.status_code == 400, body[:10]
        assert json.loads(answer)["error"]["code"] == "invalid_json"
    # a surrogate pair is one character and stays welcome
    head, answer = await request_once(port, "POST", "/echo", b'{"a": "\\ud83d\\ude00"}')
    assert (head.status_code, json.loads(answer)) == (200, {"got": {"a": "\U0001F600"}})


async def test_head_is_get_without_the_body(nursery):
    _, port = await start(nursery)
    client = HttpClient(await connect(port))
    async with client.stream:  # one keep-alive connection: each answer must end cleanly
        head, body = await client.request("HEAD", "/hello")
        assert (head.status_code, body) == (200, b"")
        assert int(header(head, "content-length")) == len(b'{"hello":"world"}')
        head, body = await client.request("HEAD", "/echo")  # a POST-only route
        assert (head.status_code, body, header(head, "allow")) == (405, b"", "POST")
        head, body = await client.request("HEAD", "/nope")
        assert (head.status_code, body) == (404, b"")
        head, body = await client.request("GET", "/hello")
        assert (head.status_code, json.loads(body)) == (200, {"hello": "world"})


def test_router_refuses_a_route_twice():
    router = make_router()
    with pytest.raises(ApiError):
        router.add("get", "/hello", hello)


# -- malformed input and limits ----------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b"GARBAGE\r\n\r\n",
        b"GET / HTTP/1.1\r\nno colon here\r\n\r\n",
        b"GET /hello HTTP/1.1\r\n\r\n",  # HTTP/1.1 without Host
        b"POST /echo HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n"
        b"transfer-encoding: chunked\r\n\r\nzz\r\n",
    ],
)
async def test_malformed_request_gets_400_and_close(nursery, raw):
    server, port = await start(nursery)
    stream = await connect(port)
    async with stream:
        await stream.send_all(raw)
        status, headers, body = parse_raw_response(await read_until_closed(stream))
    assert status == 400
    assert headers["connection"] == "close"
    assert body["error"]["type"] == "invalid_request_error"
    assert server.stats()["requests_by_status"] == {400: 1}


async def test_declared_oversize_body_is_413_without_reading_it(nursery):
    _, port = await start(nursery, max_body_bytes=100)
    stream = await connect(port)
    async with stream:
        await stream.send_all(b"POST /echo HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n"
                              b"content-length: 101\r\n\r\n")
        status, _, body = parse_raw_response(await read_until_closed(stream))
    assert status == 413
    assert body["error"]["code"] == "body_too_large"


async def test_chunked_oversize_body_is_413(nursery):
    _, port = await start(nursery, max_body_bytes=100)
    stream = await connect(port)
    async with stream:
        chunk = b"40\r\n" + b"x" * 64 + b"\r\n"
        await stream.send_all(
            b"POST /echo HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n"
            b"transfer-encoding: chunked\r\n\r\n" + chunk + chunk
        )
        status, _, _ = parse_raw_response(await read_until_closed(stream))
    assert status == 413


async def test_oversize_headers_are_431(nursery):
    _, port = await start(nursery, max_header_bytes=1024)
    stream = await connect(port)
    async with stream:
        await stream.send_all(b"GET /hello HTTP/1.1\r\nhost: localhost\r\nx-big: " + b"a" * 2000 + b"\r\n\r\n")
        status, _, _ = parse_raw_response(await read_until_closed(stream))
    assert status == 431


async def test_when_every_slot_serves_a_request_a_newcomer_gets_503_busy(nursery):
    release = trio.Event()

    async def slow(request):
        await release.wait()
        return Response.json(200, {})

    # 2 slots: 1 for work, 1 kept for control routes (here /hello and /hold)
    server, port = await start(nursery, make_router(slow=slow, hold=slow), max_connections=2,
                               control_paths=["/hello", "/hold"])
    worker = HttpClient(await connect(port))
    await worker.send("GET", "/slow")
    await wait_until(lambda: server.stats()["connections_working"] == 1)
    # a second request for work: no room, answered at once
    head, body = await request_once(port, "GET", "/slow")
    assert (head.status_code, json.loads(body)["error"]["code"]) == (503, "busy")
    assert header(head, "retry-after") == "1"
    # a control request still is served, on the slot kept for it
    control = HttpClient(await connect(port))
    head, _ = await control.request("GET", "/hello")
    assert head.status_code == 200
    # ... and now it waits, pending, for its next request: a newcomer evicts it
    head, _ = await request_once(port, "GET", "/hello")
    assert head.status_code == 200
    assert await read_until_closed(control.stream) == b""  # closed without a word: it was idle
    # every slot busy with a request (work + a control request in progress): 503 at accept
    blocker = await connect(port)
    await blocker.send_all(b"GET /hold HTTP/1.1\r\nhost: localhost\r\n\r\n")
    await wait_until(lambda: server.stats()["connections_active"] == 2 and server.stats()["connections_pending"] == 0)
    extra = await connect(port)
    async with extra:
        await extra.send_all(b"GET /hello HTTP/1.1\r\nhost: localhost\r\n\r\n")
        status, headers, body = parse_raw_response(await read_until_closed(extra))
    assert (status, body["error"]["code"], headers["retry-after"]) == (503, "busy", "1")
    assert "every connection slot" in body["error"]["message"]
    release.set()
    head, _ = await worker.response()
    assert head.status_code == 200
    await worker.stream.aclose()
    await blocker.aclose()
    await control.stream.aclose()
    await wait_until(lambda: server.stats()["connections_active"] == 0)
    assert server.stats()["rejected_busy"] == 2


async def test_idle_client_is_dropped(nursery, autojump_clock):
    server, port = await start(nursery, header_timeout_s=5)
    stream = await connect(port)
    async with stream:
        start_time = trio.current_time()
        assert await read_until_closed(stream) == b""  # closed without a word
        assert trio.current_time() - start_time == pytest.approx(5, abs=0.1)
    assert server.stats()["requests_by_status"] == {}


async def test_idle_keep_alive_connection_is_dropped(nursery, autojump_clock):
    _, port = await start(nursery, idle_timeout_s=7, header_timeout_s=2)
    client = HttpClient(await connect(port))
    async with client.stream:
        head, _ = await client.request("GET", "/hello")
        assert head.status_code == 200
        start_time = trio.current_time()
        assert await read_until_closed(client.stream) == b""
        assert trio.current_time() - start_time == pytest.approx(7, abs=0.1)


async def test_slow_request_gets_408(nursery, autojump_clock):
    # slowloris: a trickle of bytes does not extend the deadline
    _, port = await start(nursery, header_timeout_s=5)
    stream = await connect(port)
    async with stream:
        for piece in (b"GET /hello HTTP/1.1\r\n", b"host: localhost\r\n", b"x-a: b\r\n"):
            await stream.send_all(piece)
            await trio.sleep(2)
        status, _, body = parse_raw_response(await read_until_closed(stream))
    assert status == 408
    assert body["error"]["code"] == "request_timeout"


# -- API key ------------------------------------------------------------------


async def test_api_key_is_required_when_set(nursery):
    _, port = await start(nursery, api_key="s3cret")
    for headers in ((), (("authorization", "Bearer wrong"),), (("authorization", "Basic s3cret"),)):
        head, body = await request_once(port, "GET", "/hello", headers=headers)
        assert head.status_code == 401
        assert header(head, "www-authenticate") == "Bearer"
        assert json.loads(body)["error"]["code"] == "invalid_api_key"
    head, _ = await request_once(port, "GET", "/hello", headers=(("authorization", "Bearer s3cret"),))
    assert head.status_code == 200


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.10", "node.example.org"])
def test_listening_beyond_loopback_needs_an_api_key(host):
    with pytest.raises(InsecureBindError) as info:
        HttpServer(make_router(), host=host)
    assert isinstance(info.value, P2PNetError)
    assert "API key" in str(info.value)
    HttpServer(make_router(), host=host, api_key="k")  # accepted with a key


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_loopback_needs_no_api_key(host):
    HttpServer(make_router(), host=host)


# -- handler failures ---------------------------------------------------------


async def test_handler_crash_is_500_logged_once_and_the_server_goes_on(nursery, caplog):
    server, port = await start(nursery)
    client = HttpClient(await connect(port))
    async with client.stream:
        with caplog.at_level(logging.ERROR, logger="p2pnet.api.server"):
            head, body = await client.request("GET", "/crash")
        assert head.status_code == 500
        assert json.loads(body)["error"] == {
            "message": "internal server error",
            "type": "server_error",
            "param": None,
            "code": "internal_error",
        }
        assert len(caplog.records) == 1 and "GET /crash" in caplog.records[0].getMessage()
        head, _ = await client.request("GET", "/hello")  # same connection, still served
        assert head.status_code == 200
    assert server.stats()["requests_by_status"] == {500: 1, 200: 1}


async def test_handler_http_error_becomes_its_response(nursery):
    async def teapot(request):
        raise HttpError(418, "short and stout", code="teapot", param="spout")

    _, port = await start(nursery, make_router(teapot=teapot))
    head, body = await request_once(port, "GET", "/teapot")
    assert head.status_code == 418
    assert json.loads(body) == {
        "error": {"message": "short and stout", "type": "invalid_request_error", "param": "spout", "code": "teapot"}
    }


# -- streaming ----------------------------------------------------------------


async def test_streaming_response_is_chunked_and_incremental(nursery):
    step = trio.Event()

    async def events(request):
        async def write(send):
            await send(b"data: one\n\n")
            await step.wait()  # the client has seen "one" before "two" exists
            await send(b"data: two\n\n")

        return StreamingResponse.event_stream(write)

    _, port = await start(nursery, make_router(events=events))
    client = HttpClient(await connect(port))
    async with client.stream:
        await client.send("GET", "/events")
        head = await client.next_event()
        assert head.status_code == 200
        assert header(head, "content-type") == "text/event-stream"
        assert header(head, "transfer-encoding") == "chunked"
        assert (await client.next_event()).data == b"data: one\n\n"
        step.set()
        assert (await client.next_event()).data == b"data: two\n\n"
        assert isinstance(await client.next_event(), h11.EndOfMessage)


async def test_stream_failing_before_its_first_chunk_is_a_normal_error(nursery):
    async def events(request):
        async def write(send):
            raise HttpError(503, "no expert", code="no_expert_available")

        return StreamingResponse.event_stream(write)

    _, port = await start(nursery, make_router(events=events))
    head, body = await request_once(port, "GET", "/events")
    assert head.status_code == 503
    assert header(head, "content-type") == "application/json"
    assert json.loads(body)["error"]["code"] == "no_expert_available"


async def test_stream_crashing_after_start_cuts_the_connection(nursery, caplog):
    async def events(request):
        async def write(send):
            await send(b"data: one\n\n")
            raise RuntimeError("writer bug")

        return StreamingResponse.event_stream(write)

    server, port = await start(nursery, make_router(events=events))
    stream = await connect(port)
    async with stream:
        await stream.send_all(b"GET /events HTTP/1.1\r\nhost: localhost\r\n\r\n")
        data = await read_until_closed(stream)
    assert b"data: one" in data and not data.endswith(b"0\r\n\r\n")  # no last chunk
    assert "writer bug" in caplog.text
    head, _ = await request_once(port, "GET", "/hello")
    assert head.status_code == 200


async def test_client_leaving_cancels_a_waiting_handler(nursery):
    cancelled = trio.Event()

    async def slow(request):
        try:
            await trio.sleep_forever()  # e.g. a query in progress
        except trio.Cancelled:
            cancelled.set()
            raise

    server, port = await start(nursery, make_router(slow=slow))
    client = HttpClient(await connect(port))
    await client.send("GET", "/slow")
    await client.stream.aclose()
    with trio.fail_after(10):
        await cancelled.wait()
    await wait_until(lambda: server.stats()["connections_active"] == 0)
    assert server.stats()["requests_abandoned"] == 1
    assert server.stats()["requests_by_status"] == {}


async def test_client_disconnect_cancels_the_stream_writer(nursery):
    cancelled = trio.Event()

    async def events(request):
        async def write(send):
            await send(b"data: one\n\n")
            try:
                await trio.sleep_forever()  # e.g. waiting on the next token
            except trio.Cancelled:
                cancelled.set()
                raise

        return StreamingResponse.event_stream(write)

    server, port = await start(nursery, make_router(events=events))
    client = HttpClient(await connect(port))
    await client.send("GET", "/events")
    assert (await client.next_event()).status_code == 200
    assert (await client.next_event()).data == b"data: one\n\n"
    await client.stream.aclose()
    with trio.fail_after(10):
        await cancelled.wait()
    await wait_until(lambda: server.stats()["connections_active"] == 0)
    assert server.stats()["requests_abandoned"] == 1


async def test_a_client_that_stops_reading_is_dropped(nursery, autojump_clock):
    cancelled = trio.Event()

    async def flood(request):
        async def write(send):
            try:
                while True:
                    await send(b"data: " + b"x" * 65536 + b"\n\n")
            except trio.Cancelled:
                cancelled.set()
                raise

        return StreamingResponse.event_stream(write)

    server, port = await start(nursery, make_router(flood=flood), write_timeout_s=5)
    client = HttpClient(await connect(port))
    async with client.stream:
        await client.send("GET", "/flood")  # and never read
        await cancelled.wait()
    assert server.stats()["requests_abandoned"] == 1
