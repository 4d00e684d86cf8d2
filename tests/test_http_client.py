"""The CLI's synchronous client (urllib) and the SSE codec."""

from __future__ import annotations

import socket

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from p2pnet.api import sse
from p2pnet.api.client import get_json, post_json, stream_json
from p2pnet.api.errors import ApiError, HttpError, NodeUnreachable
from p2pnet.api.http import Request, Response, Router, StreamingResponse
from p2pnet.api.server import HttpServer


def make_router(release: trio.Event) -> Router:
    async def status(request: Request) -> Response:
        return Response.json(200, {"ok": True, "who": request.arg("who")})

    async def echo(request: Request) -> Response:
        return Response.json(200, {"echo": request.json()})

    async def plain_failure(request: Request) -> Response:
        return Response.text(502, "upstream fell over")

    async def slow(request: Request) -> Response:
        await release.wait()
        return Response.json(200, {})

    def events(*chunks: bytes, done: bool = True):
        async def handler(request: Request) -> StreamingResponse:
            async def write(send):
                for chunk in chunks:
                    await send(chunk)
                if done:
                    await send(sse.DONE)

            return StreamingResponse.event_stream(write)

        return handler

    router = Router()
    router.add("GET", "/status", status)
    router.add("POST", "/echo", echo)
    router.add("GET", "/plain", plain_failure)
    router.add("GET", "/slow", slow)
    router.add("POST", "/stream", events(sse.encode_json_event({"n": 1}), b": comment\n\n", sse.encode_json_event({"n": 2})))
    router.add(
        "POST",
        "/stream-error",
        events(
            sse.encode_json_event({"n": 1}),
            sse.encode_json_event({"error": {"message": "expert left", "type": "server_error", "code": "x"}}),
            done=False,
        ),
    )
    router.add("POST", "/stream-undone", events(sse.encode_json_event({"n": 1}), done=False))
    return router


@pytest.fixture
async def node(nursery):
    release = trio.Event()
    url = await nursery.start(HttpServer(make_router(release), api_key="key").run)
    yield url, release
    release.set()


async def call(fn, *args, **kwargs):
    return await trio.to_thread.run_sync(lambda: fn(*args, **kwargs))


async def test_get_and_post_json(node):
    url, _ = node
    assert await call(get_json, url + "/status?who=me", api_key="key") == {"ok": True, "who": "me"}
    assert await call(post_json, url + "/echo", {"a": [1, "é"]}, api_key="key") == {"echo": {"a": [1, "é"]}}


async def test_http_proxy_from_the_environment_is_not_used(node, monkeypatch):
    url, _ = node
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    assert (await call(get_json, url + "/status", api_key="key"))["ok"] is True


async def test_error_answers_raise_http_error_with_the_server_message(node):
    url, _ = node
    with pytest.raises(HttpError) as info:
        await call(get_json, url + "/nope", api_key="key")
    assert (info.value.status, info.value.code, str(info.value)) == (404, "not_found", "no such path: /nope")
    with pytest.raises(HttpError) as info:
        await call(get_json, url + "/status", api_key="wrong")
    assert info.value.status == 401 and info.value.code == "invalid_api_key"
    with pytest.raises(HttpError) as info:
        await call(get_json, url + "/plain", api_key="key")
    assert info.value.status == 502 and "upstream fell over" in str(info.value)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_no_node_answering_says_how_to_start_one():
    with pytest.raises(NodeUnreachable) as info:
        get_json(f"http://127.0.0.1:{free_port()}/status", timeout=5)
    message = str(info.value)
    assert "no node is answering at http://127.0.0.1:" in message
    assert "p2pnet node start" in message
    assert isinstance(info.value, ApiError)


@pytest.mark.parametrize("url", ["notaurl", "http://[::1/status", "ftp://127.0.0.1:1/status",
                                 "http://127.0.0.1:port/status", "http://127.0.0.1:1/a b"])
def test_an_unusable_url_is_a_client_error(url):
    for call_it in (lambda: get_json(url), lambda: post_json(url, {}), lambda: list(stream_json(url, {}))):
        with pytest.raises(ApiError, match="is not a usable node URL"):
            call_it()


async def test_a_node_that_does_not_answer_in_time(node):
    url, _ = node
    with pytest.raises(NodeUnreachable) as info:
        await call(get_json, url + "/slow", timeout=0.2, api_key="key")
    assert "did not answer within 0.2 s" in str(info.value)


async def test_stream_json_yields_events_until_done(node):
    url, _ = node
    events = await call(lambda: list(stream_json(url + "/stream", {}, api_key="key")))
    assert events == [{"n": 1}, {"n": 2}]


async def test_stream_json_raises_on_an_error_event(node):
    url, _ = node
    seen = []

    def consume():
        for event in stream_json(url + "/stream-error", {}, api_key="key"):
            seen.append(event)

    with pytest.raises(HttpError) as info:
        await call(consume)
    assert seen == [{"n": 1}]
    assert (str(info.value), info.value.status) == ("expert left", 500)


async def test_stream_json_without_done_is_an_error(node):
    url, _ = node
    with pytest.raises(ApiError, match="without \\[DONE\\]"):
        await call(lambda: list(stream_json(url + "/stream-undone", {}, api_key="key")))


def test_event_data_decoding():
    lines = [b": hello\n", b"data: a\n", b"data:b\r\n", b"id: 7\n", b"\n", b"\n", b"data: [DONE]"]
    assert list(sse.iter_event_data(lines)) == ["a\nb", "[DONE]"]
    assert sse.encode_event("x\ny") == b"data: x\ndata: y\n\n"


@given(st.text())
def test_events_survive_encoding(text):
    wire = sse.encode_event(text) + sse.encode_event("next")
    expected = text.replace("\r\n", "\n").replace("\r", "\n")
    assert list(sse.iter_event_data(wire.splitlines(keepends=True))) == [expected, "next"]


def test_query_vocabulary_and_client_import_without_the_server():
    import subprocess
    import sys

    code = (
        "import sys, p2pnet.query, p2pnet.api.client; "
        "assert not {'trio', 'h11', 'p2pnet.api.server'} & set(sys.modules), sys.modules.keys()"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
