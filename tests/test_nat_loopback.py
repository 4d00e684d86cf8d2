"""The dial-back protocol between real libp2p hosts on 127.0.0.1 (in one
process): the reachability check finds loopback nodes reachable; a dial-back
to a port where nothing listens, or where *another* node listens, says no (a
fresh connection and a Noise handshake that expects the asker's peer id);
malformed and oversized requests are refused without harm."""

import json
import os
import socket

import trio
from libp2p.custom_types import TProtocol
from libp2p.network.stream.exceptions import StreamEOF
from libp2p.peer.id import ID

from p2pnet.gossip import reachability, rpc
from p2pnet.gossip.network import GossipNetwork
from p2pnet.gossip.relay import NatError, NatSettings
from p2pnet.identity import Identity

from .conftest_net import wait_for


def make_net(boot=None) -> GossipNetwork:
    ident = Identity(os.urandom(32))
    return GossipNetwork(ident, ident.signer(), ["/ip4/127.0.0.1/tcp/0"], [boot] if boot else [],
                         announce_interval_s=0.5, nat=NatSettings())


async def raw_request(net, peer, payload: bytes) -> dict:
    stream = await net.host.new_stream(ID(peer), [TProtocol(reachability.PROTOCOL)])
    try:
        await stream.write(payload)
        return json.loads(await rpc.read_frame(stream, reachability.MAX_FRAME))
    finally:
        await stream.close()


async def test_dial_back_between_real_hosts(nursery):
    nets = []
    for _ in range(3):
        net = make_net(nets[0].listen_addrs[0] if nets else None)
        await nursery.start(net.run)
        nets.append(net)
    a, b, c = nets
    await wait_for(lambda: all(len(n.peers()) == 2 for n in nets), 30, "full mesh")
    await wait_for(lambda: all(n.nat.reach.state == "public" for n in nets), 60, "every node public")
    # loopback-only nodes announce their loopback address (a swarm on one machine)
    assert a.reachable_addrs() == (a.listen_addrs[0].split("/p2p/")[0],)
    assert a.nat.serving() and not a.nat.circuit_addrs()

    def port_of(net):
        return int(net.listen_addrs[0].split("/")[4])

    # the dial-back servers' rate limit runs on a clock the test moves
    now = [0.0]
    for n in nets:
        n.nat.dialback.clock = lambda: now[0]
        n.nat.dialback._last.clear()
    # b's own port: reached
    ok, addrs = await reachability.ask_dial_back(b.host, ID(a.peer_id), [port_of(b)])
    assert ok is True and addrs == [f"/ip4/127.0.0.1/tcp/{port_of(b)}"]
    # at once again: refused (one dial-back per peer per gap), no evidence either way; after the gap, served
    assert await reachability.ask_dial_back(b.host, ID(a.peer_id), [port_of(b)]) == (None, [])
    now[0] += a.nat.dialback.limits.per_peer_gap_s
    assert (await reachability.ask_dial_back(b.host, ID(a.peer_id), [port_of(b)]))[0] is True
    # c's port: a node listens there, but not b: the handshake fails, so: not reachable
    ok, addrs = await reachability.ask_dial_back(c.host, ID(b.peer_id), [port_of(a)])
    assert ok is False and addrs == []
    # a port where nothing listens
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    assert await reachability.ask_dial_back(c.host, ID(a.peer_id), [dead]) == (False, [])
    # malformed and oversized requests: one refusal each, the server keeps going
    refused = dict(b.nat.dialback.refused)
    assert await raw_request(a, b.peer_id, rpc._LEN.pack(3) + b"{x}") == {"ok": None, "error": "malformed"}
    assert b.nat.dialback.refused.get("malformed", 0) == refused.get("malformed", 0) + 1
    with trio.fail_after(10):
        stream = await a.host.new_stream(ID(b.peer_id), [TProtocol(reachability.PROTOCOL)])
        await stream.write(rpc._LEN.pack(1 << 30))  # claims a 1 GiB frame: closed unread, no answer
        try:
            assert not await stream.read(100)
        except StreamEOF:
            pass
    await wait_for(lambda: b.nat.reach.state == "public" and len(b.peers()) == 2, 10, "b still fine")
    for n in nets:
        n.close()


async def test_relay_limits_and_a_relayed_connection_carry_requests(nursery):
    """b and c know only a (low watermark 1: no peer exchange dials), a serves
    as a relay for at most one reservation: b takes it, c is refused; c then
    reaches b through a, and a request and its answer go over that circuit."""
    import multiaddr

    from p2pnet import wire
    from p2pnet.gossip.policy import Watermarks

    def node(boot=None, **settings):
        ident = Identity(os.urandom(32))
        return GossipNetwork(ident, ident.signer(), ["/ip4/127.0.0.1/tcp/0"], [boot] if boot else [],
                             announce_interval_s=0.5, watermarks=Watermarks(1, 4), nat=NatSettings(**settings))

    a = node(relay="on", relay_max_reservations=1)
    await nursery.start(a.run)
    a_addr = a.listen_addrs[0].split("/p2p/")[0]
    # no hole punching: on loopback it would replace the circuit with a direct connection at once
    b, c = node(a.listen_addrs[0], hole_punch=False), node(a.listen_addrs[0], hole_punch=False)
    await nursery.start(b.run)
    await nursery.start(c.run)
    await wait_for(lambda: len(a.peers()) == 2, 30, "b and c connected to a")
    assert b.peer_id not in c.peers()
    relay_id = ID(a.peer_id).to_base58()
    addr, expires = await b.nat._reserve_on(ID(a.peer_id))
    assert addr == a_addr and expires > 0
    try:
        await c.nat._reserve_on(ID(a.peer_id))
        raise AssertionError("a second reservation past relay_max_reservations=1 was accepted")
    except NatError as exc:
        assert "refused" in str(exc)

    async def echo(env):
        return wire.Broadcast("echo:" + env.message.text)

    b.on_request(wire.Broadcast.KIND, echo)
    circuit = f"{a_addr}/p2p/{relay_id}/p2p-circuit"
    assert await c.nat.connect(b.peer_id, [circuit])
    assert c.nat.path_to(b.peer_id) == "relayed" and c.nat.relay_of(b.peer_id) == relay_id
    # on b's side the relay is named right (py-libp2p names b itself: trap 5 in docs/testnet.md)
    await wait_for(lambda: b.nat.relay_of(c.peer_id) == relay_id, 10, "b's view of the relayed connection")
    assert await c.request(b.peer_id, wire.Broadcast("over the relay")) == wire.Broadcast("echo:over the relay")
    # GossipSub runs over the circuit too: c hears b's subscriptions from b itself
    from p2pnet.gossip import topics

    await wait_for(lambda: b.peer_id in {p.to_bytes() for p in c.pubsub.peer_topics.get(topics.ANNOUNCE, ())},
                   10, "pubsub between b and c over the relay")
    assert c.nat.path_to(b.peer_id) == "relayed"  # still the only connection between them
    assert c.nat.paths([wire.peer_id_str(b.peer_id), wire.peer_id_str(c.peer_id)]) == {
        wire.peer_id_str(b.peer_id): "relayed", wire.peer_id_str(c.peer_id): "local"}
    assert multiaddr.Multiaddr(circuit)  # the announced form parses
    for n in (a, b, c):
        n.close()
