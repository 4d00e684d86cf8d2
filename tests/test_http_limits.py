"""The HTTP server under slowloris and greedy clients: header, body and idle
timeouts, the pending pool and its eviction, per-client shares, and the room
kept for control routes (p2pnet.api.limits). In-process, over raw sockets;
timing tests run on Trio's autojump clock."""

from __future__ import annotations

import json

import pytest
import trio

from p2pnet.api.http import Request, Response, Router
from p2pnet.api.limits import CONTROL, PENDING, WORK, Pools
from p2pnet.api.server import HttpServer

HALF_HEAD = b"GET /status HTTP/1.1\r\nhost: 127.0.0.1\r\n"  # a slowloris head: never finished


def make_router(release: trio.Event) -> Router:
    async def status(request: Request) -> Response:
        return Response.json(200, {"ok": True})

    async def echo(request: Request) -> Response:
        return Response.json(200, {"got": request.json()})

    async def slow(request: Request) -> Response:
        await release.wait()
        return Response.json(200, {"slow": True})

    router = Router()
    router.add("GET", "/status", status)
    router.add("GET", "/work", status)  # the same answer, but not a control route
    router.add("POST", "/echo", echo)
    router.add("GET", "/slow", slow)
    return router


@pytest.fixture
async def release():
    event = trio.Event()
    yield event
    event.set()


async def start(nursery, release, **kwargs) -> tuple[HttpServer, int]:
    server = HttpServer(make_router(release), **kwargs)
    url = await nursery.start(server.run)
    return server, int(url.rsplit(":", 1)[1])


async def wait_until(predicate) -> None:
    """Wait for a state the server reaches on its own (never a fixed sleep)."""
    with trio.fail_after(10):
        while not predicate():
            await trio.sleep(0.001)


async def half_sent(port: int, source: str | None = None) -> trio.SocketStream:
    stream = await trio.open_tcp_stream("127.0.0.1", port, local_address=source)
    await stream.send_all(HALF_HEAD)
    return stream


async def read_all(stream: trio.SocketStream) -> bytes:
    data = b""
    with trio.fail_after(10):
        while chunk := await stream.receive_some(65536):
            data += chunk
    return data


async def get(port: int, target: str, source: str | None = None) -> tuple[int, dict]:
    stream = await trio.open_tcp_stream("127.0.0.1", port, local_address=source)
    async with stream:
        await stream.send_all(f"GET {target} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n".encode())
        return parse(await read_all(stream))


def parse(data: bytes) -> tuple[int, dict]:
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body)


async def close_all(streams) -> None:
    for stream in streams:
        await stream.aclose()


# -- timeouts -------------------------------------------------------------------


async def test_header_timeout_answers_a_slow_head_408_and_closes(nursery, release, autojump_clock):
    server, port = await start(nursery, release, header_timeout_s=4, body_timeout_s=60, idle_timeout_s=60)
    stream = await half_sent(port)
    async with stream:
        began = trio.current_time()
        status, body = parse(await read_all(stream))  # read_all returns: the server closed
        assert trio.current_time() - began == pytest.approx(4, abs=0.1)
    assert (status, body["error"]["code"]) == (408, "request_timeout")
    await wait_until(lambda: server.stats()["connections_active"] == 0)


async def test_body_timeout_is_its_own_deadline_and_a_trickle_does_not_extend_it(nursery, release, autojump_clock):
    _, port = await start(nursery, release, header_timeout_s=2, body_timeout_s=7)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(b"POST /echo HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
                              b"content-length: 100\r\n\r\n")
        began = trio.current_time()

        async def trickle():
            for _ in range(20):  # a byte a second, past the header timeout and the body timeout
                await trio.sleep(1)
                try:
                    await stream.send_all(b" ")
                except trio.BrokenResourceError:
                    return

        async with trio.open_nursery() as trickling:
            trickling.start_soon(trickle)
            status, body = parse(await read_all(stream))
            trickling.cancel_scope.cancel()
        assert trio.current_time() - began == pytest.approx(7, abs=0.1)
    assert (status, body["error"]["code"]) == (408, "request_timeout")


async def test_a_body_in_time_is_served(nursery, release, autojump_clock):
    _, port = await start(nursery, release, header_timeout_s=2, body_timeout_s=7)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(b"POST /echo HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
                              b"content-length: 4\r\nconnection: close\r\n\r\n[4")
        await trio.sleep(5)  # longer than the header timeout, within the body's
        await stream.send_all(b"2]")
        assert parse(await read_all(stream)) == (200, {"got": [42]})


# -- pools and shares -------------------------------------------------------------


async def test_control_routes_are_answered_while_80_slowloris_connections_are_open(nursery, release):
    server, port = await start(nursery, release)  # default limits
    wave = [await half_sent(port) for _ in range(80)]
    # one client holds its share of the pending pool; its oldest made room for the rest
    share = 256 // 4
    await wait_until(lambda: server.stats()["connections_pending"] == share)
    assert server.stats()["connections_evicted"] == 80 - share
    assert parse(await read_all(wave[0]))[1]["error"]["code"] == "busy"
    for target in ("/status", "/work"):  # from the same address as the wave
        assert await get(port, target) == (200, {"ok": True})
    assert server.stats()["connections_pending"] >= share - 2  # the wave is still held
    await close_all(wave)
    await wait_until(lambda: server.stats()["connections_active"] == 0)


async def test_a_client_over_its_share_loses_its_own_oldest_and_a_full_pool_the_heaviest_clients(nursery, release):
    server, port = await start(nursery, release, max_connections=32, max_pending=6, max_per_client=4)
    a = []
    for n in range(4):
        a.append(await half_sent(port))
        await wait_until(lambda n=n: server.stats()["connections_pending"] == n + 1)
    b = [await half_sent(port, "127.0.0.2"), await half_sent(port, "127.0.0.2")]
    await wait_until(lambda: server.stats()["connections_pending"] == 6)
    a.append(await half_sent(port))  # A past its share: A's oldest goes, not B's
    status, body = parse(await read_all(a[0]))
    assert (status, body["error"]["code"]) == (503, "busy")
    assert "gave its slot" in body["error"]["message"]
    c = await half_sent(port, "127.0.0.3")  # the pool is full: the client holding most (A) pays
    assert parse(await read_all(a[1]))[0] == 503
    await wait_until(lambda: server.stats()["connections_pending"] == 6)
    assert server.stats()["connections_evicted"] == 2
    await b[0].send_all(b"connection: close\r\n\r\n")  # B's first is still held: it is served
    assert parse(await read_all(b[0])) == (200, {"ok": True})
    await close_all([*a, *b, c])


async def test_one_client_gets_at_most_its_share_of_work(nursery, release):
    server, port = await start(nursery, release, max_connections=32, max_per_client=2)
    results = []

    async def slow(source):
        results.append(await get(port, "/slow", source))

    nursery.start_soon(slow, None)
    nursery.start_soon(slow, None)
    await wait_until(lambda: server.stats()["connections_working"] == 2)
    status, body = await get(port, "/slow")  # A's third: refused at once
    assert (status, body["error"]["code"]) == (503, "busy")
    assert "too many requests" in body["error"]["message"]
    assert await get(port, "/status") == (200, {"ok": True})  # control: still served
    nursery.start_soon(slow, "127.0.0.2")  # another client has its own share
    await wait_until(lambda: server.stats()["connections_working"] == 3)
    release.set()
    await wait_until(lambda: len(results) == 3)
    assert results == [(200, {"slow": True})] * 3


async def test_control_routes_find_room_when_work_and_pending_pools_are_full(nursery, release):
    server, port = await start(nursery, release, max_connections=16, max_pending=8, max_per_client=16,
                               control_reserve=2)
    results = []

    async def slow():
        results.append(await get(port, "/slow"))

    for _ in range(14):
        nursery.start_soon(slow)
    await wait_until(lambda: server.stats()["connections_working"] == 14)
    wave = [await half_sent(port) for _ in range(20)]
    await wait_until(lambda: server.stats()["connections_evicted"] == 18)  # only 2 slots were left
    assert await get(port, "/status") == (200, {"ok": True})
    status, body = await get(port, "/work")  # the work pool is full
    assert (status, body["error"]["code"]) == (503, "busy")
    release.set()
    await wait_until(lambda: len(results) == 14)
    assert all(result == (200, {"slow": True}) for result in results)
    await close_all(wave)


def test_pools_bookkeeping():
    pools = Pools(max_connections=4, max_pending=2, max_per_client=2, control_reserve=1)
    a1, a2 = pools.admit("a"), pools.admit("a")
    b1 = pools.admit("b")  # the pending pool is full: the client holding most (a) loses its oldest
    assert a1.evicted and a1.scope.cancel_called and not a2.evicted
    assert not pools.start_request(a1, control=True)  # an evicted slot serves nothing
    assert pools.start_request(a2, control=False) and a2.state == WORK
    assert pools.start_request(b1, control=True) and b1.state == CONTROL
    b2, b3 = pools.admit("b"), pools.admit("b")
    b4 = pools.admit("b")  # b is at its share of pending: b's own oldest goes
    assert b2.evicted and not b3.evicted and pools.held == 4
    assert pools.start_request(b3, control=True) and pools.start_request(b4, control=True)
    assert pools.admit("c") is None  # every slot serves a request: 503
    pools.to_pending(a2)
    assert pools.count(PENDING) == 1 and pools.count(WORK) == 0
    for slot in (a1, a2, b1, b2, b3, b4):
        pools.release(slot)
    assert pools.held == 0 and pools.count(PENDING) == pools.count(WORK) == pools.count(CONTROL) == 0
    with pytest.raises(ValueError):
        Pools(max_connections=4, max_pending=5, max_per_client=1, control_reserve=1)
    with pytest.raises(ValueError):
        Pools(max_connections=4, max_pending=2, max_per_client=1, control_reserve=4)
