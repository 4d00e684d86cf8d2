"""What a web page can make the API do: Host, Origin and Content-Type checks
(p2pnet.api.guard), in-process over raw sockets against the real control routes."""

from __future__ import annotations

import json

import h11
import pytest
import trio

from p2pnet.api.control import mount_control
from p2pnet.api.guard import RequestGuard, check_content_type, normalize_origin, split_host
from p2pnet.api.errors import HttpError
from p2pnet.api.http import Router
from p2pnet.api.server import HttpServer

EVIL = "http://evil.example"


class FakeNode:
    """What mount_control needs; records what it was made to publish."""

    peer_id = "12D3KooWtest"
    inbox_count = 0
    inbox: list = []

    def __init__(self) -> None:
        self.published: list[str] = []

    def status(self) -> dict:
        return {"peer_id": self.peer_id}

    def peers(self) -> list:
        return []

    def broadcast(self, text: str) -> dict:
        self.published.append(text)
        return {"ok": True}


async def serve(nursery, **kwargs) -> tuple[FakeNode, int]:
    node = FakeNode()
    router = Router()
    mount_control(router, node)
    url = await nursery.start(HttpServer(router, **kwargs).run)
    return node, int(url.rsplit(":", 1)[1])


async def call(port: int, method: str, target: str, headers, body: bytes = b""):
    """One request with exactly `headers` (no Host added); (status, headers dict, JSON body)."""
    status, got, answer = await call_raw(port, method, target, headers, body)
    return status, got, json.loads(answer) if answer else None


async def call_raw(port: int, method: str, target: str, headers, body: bytes = b""):
    """Like `call`, the body as bytes."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        conn = h11.Connection(h11.CLIENT)
        headers = list(headers)
        if body:
            headers.append(("content-length", str(len(body))))
        data = conn.send(h11.Request(method=method, target=target, headers=headers))
        data += (conn.send(h11.Data(data=body)) if body else b"") + conn.send(h11.EndOfMessage())
        await stream.send_all(data)
        answer, head = b"", None
        with trio.fail_after(10):
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await stream.receive_some(65536))
                elif isinstance(event, h11.Response):
                    head = event
                elif isinstance(event, h11.Data):
                    answer += event.data
                else:
                    break
    return head.status_code, {name.decode(): value.decode() for name, value in head.headers}, answer


def host(port: int) -> tuple[str, str]:
    return ("host", f"127.0.0.1:{port}")


JSON = ("content-type", "application/json")
BROADCAST = json.dumps({"text": "hello"}).encode()


def no_cors_headers(headers: dict) -> bool:
    return not any(name.startswith("access-control-") for name in headers)


# -- Content-Type ---------------------------------------------------------------


@pytest.mark.parametrize("content_type", [
    "text/plain", "text/plain;charset=UTF-8", "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x", "application/json; charset=latin-1", "application/jsonp", None,
])
async def test_post_broadcast_without_a_json_content_type_is_415(nursery, content_type):
    node, port = await serve(nursery)
    headers = [host(port)] + ([("content-type", content_type)] if content_type else [])
    status, _, body = await call(port, "POST", "/broadcast", headers, BROADCAST)
    assert (status, body["error"]["code"]) == (415, "unsupported_media_type")
    assert "application/json" in body["error"]["message"]
    assert node.published == []


@pytest.mark.parametrize("content_type", ["application/json", "Application/JSON", "application/json; charset=utf-8",
                                          'application/json;charset="UTF-8"'])
async def test_post_broadcast_with_json_is_served(nursery, content_type):
    node, port = await serve(nursery)
    status, _, body = await call(port, "POST", "/broadcast", [host(port), ("content-type", content_type)], BROADCAST)
    assert (status, body) == (200, {"ok": True})
    assert node.published == ["hello"]


def test_a_body_on_any_method_must_be_json():
    check_content_type("GET", (), has_body=False)  # no body, no type needed
    with pytest.raises(HttpError) as info:
        check_content_type("GET", (("content-type", "text/plain"),), has_body=True)
    assert info.value.status == 415
    with pytest.raises(HttpError):  # two types: which one?
        check_content_type("POST", (JSON, ("content-type", "text/plain")), has_body=True)


# -- Origin ---------------------------------------------------------------------


async def test_cross_origin_requests_are_403_for_every_method(nursery):
    node, port = await serve(nursery)
    for method, target, extra, body in [
        ("POST", "/broadcast", [JSON], BROADCAST),
        ("POST", "/broadcast", [("content-type", "text/plain")], BROADCAST),  # a "simple" CORS request
        ("GET", "/status", [], b""),
        ("OPTIONS", "/broadcast", [("access-control-request-method", "POST"),
                                   ("access-control-request-headers", "content-type")], b""),
    ]:
        for origin in (EVIL, "null", f"http://localhost:{port + 1}", f"https://127.0.0.1:{port}"):
            status, headers, answer = await call(port, method, target, [host(port), ("origin", origin), *extra], body)
            assert (status, answer["error"]["code"]) == (403, "origin_not_allowed"), (method, origin)
            assert no_cors_headers(headers)
    assert node.published == []


async def test_same_origin_and_no_origin_requests_work(nursery):
    node, port = await serve(nursery)
    for origin in ([], [("origin", f"http://127.0.0.1:{port}")], [("origin", f"HTTP://127.0.0.1:{port}/")]):
        status, headers, _ = await call(port, "POST", "/broadcast", [host(port), JSON, *origin], BROADCAST)
        assert status == 200 and no_cors_headers(headers)
        status, _, answer = await call(port, "GET", "/status", [host(port), *origin])
        assert (status, answer["peer_id"]) == (200, FakeNode.peer_id)
    # same origin is the Host the request was sent to, e.g. through localhost
    status, _, _ = await call(port, "GET", "/status", [("host", f"localhost:{port}"),
                                                      ("origin", f"http://localhost:{port}")])
    assert status == 200
    assert len(node.published) == 3


async def test_a_listed_origin_gets_its_own_origin_back_never_a_wildcard(nursery):
    ui = "http://ui.example:3000"
    node, port = await serve(nursery, allowed_origins=[ui])
    status, headers, _ = await call(port, "OPTIONS", "/broadcast", [
        host(port), ("origin", ui), ("access-control-request-method", "POST"),
        ("access-control-request-headers", "content-type")])
    assert status == 204
    assert headers["access-control-allow-origin"] == ui
    assert headers["vary"] == "Origin"
    assert "POST" in headers["access-control-allow-methods"]
    assert "content-type" in headers["access-control-allow-headers"]
    status, headers, body = await call(port, "POST", "/broadcast", [host(port), ("origin", ui), JSON], BROADCAST)
    assert (status, body, headers["access-control-allow-origin"]) == (200, {"ok": True}, ui)
    status, headers, _ = await call(port, "POST", "/broadcast", [host(port), ("origin", EVIL), JSON], BROADCAST)
    assert status == 403 and no_cors_headers(headers)
    assert node.published == ["hello"]


# -- Host -----------------------------------------------------------------------


async def test_a_foreign_host_is_refused_dns_rebinding_included(nursery):
    node, port = await serve(nursery)
    for headers in (
        [("host", "evil.example")],
        [("host", f"evil.example:{port}"), ("origin", f"http://evil.example:{port}")],  # rebinding: same-origin
        [("host", "127.0.0.1.evil.example")],
        [("host", "localhost.evil.example")],
        [("host", "10.0.0.1")],
    ):
        status, _, body = await call(port, "GET", "/status", headers)
        assert (status, body["error"]["code"]) == (421, "host_not_allowed"), headers
        status, _, _ = await call(port, "POST", "/broadcast", [*headers, JSON], BROADCAST)
        assert status == 421
    assert node.published == []
    # HTTP/1.0 may leave Host out; the node still wants one
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(b"GET /status HTTP/1.0\r\n\r\n")
        data = b""
        while chunk := await stream.receive_some(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 421 ")


@pytest.mark.parametrize("name", ["localhost", "LOCALHOST", "localhost.", "ui.localhost", "127.0.0.1", "127.0.0.2",
                                  "[::1]"])
async def test_loopback_hosts_are_accepted_with_or_without_a_port(nursery, name):
    _, port = await serve(nursery)
    for value in (name, f"{name}:{port}", f"{name}:9000"):  # 9000: an SSH tunnel's local port
        status, _, _ = await call(port, "GET", "/status", [("host", value)])
        assert status == 200, value


async def test_allowed_hosts_are_configurable(nursery):
    _, port = await serve(nursery, allowed_hosts=["mynode.lan"])
    assert (await call(port, "GET", "/status", [("host", f"mynode.lan:{port}")]))[0] == 200
    assert (await call(port, "GET", "/status", [("host", "othernode.lan")]))[0] == 421


def test_the_bound_address_is_a_host_and_a_wildcard_bind_accepts_addresses_not_names():
    assert RequestGuard("192.168.1.10").host_allowed("192.168.1.10")
    assert not RequestGuard("192.168.1.10").host_allowed("192.168.1.11")
    assert RequestGuard("node.example.org").host_allowed("node.example.org")
    wildcard = RequestGuard("0.0.0.0")
    assert wildcard.host_allowed("192.168.1.10") and wildcard.host_allowed("::1")
    assert not wildcard.host_allowed("evil.example")
    assert RequestGuard("::").host_allowed("fe80::1")
    with pytest.raises(ValueError):
        RequestGuard("127.0.0.1", allowed_hosts=["http://x"])
    with pytest.raises(ValueError):
        RequestGuard("127.0.0.1", allowed_origins=["*"])


@pytest.mark.parametrize("value, parsed", [
    ("Example.org:8700", ("example.org", 8700)),
    ("[::1]", ("::1", None)),
    ("[::1]:80", ("::1", 80)),
    ("localhost.", ("localhost", None)),
    ("::1", None),
    ("[::1", None),
    ("[evil]:80", None),
    ("a:b", None),
    ("a:99999", None),
    ("", None),
    ("user@host", None),
])
def test_split_host(value, parsed):
    assert split_host(value) == parsed


@pytest.mark.parametrize("value, normal", [
    ("HTTP://LocalHost:8700/", "http://localhost:8700"),
    ("http://127.0.0.1:80", "http://127.0.0.1"),
    ("https://ui.example:443", "https://ui.example"),
    ("null", None),
    ("file://", None),
    ("http://x/path", None),
])
def test_normalize_origin(value, normal):
    assert normalize_origin(value) == normal
