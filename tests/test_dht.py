"""Peer routing over the Kademlia DHT (p2pnet.gossip.dht) on 127.0.0.1: four
real libp2p hosts in a line a - b - c - d, each knowing only its
neighbours; a finds d's addresses by d's ID through the DHT and dials it."""

import contextlib
from pathlib import Path

import multiaddr
import trio

from p2pnet import wire
from p2pnet.gossip.dht import PeerRouting
from p2pnet.identity import load_or_create

from .conftest_net import wait_for


def make_host(identity):
    from libp2p import new_host
    from libp2p.crypto.x25519 import create_new_key_pair as new_x25519_key_pair
    from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
    from libp2p.security.noise.transport import Transport as NoiseTransport
    from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
    from libp2p.stream_muxer.yamux.yamux import Yamux

    key_pair = identity.libp2p_key_pair()
    return new_host(key_pair=key_pair,
                    sec_opt={NOISE_PROTOCOL_ID: NoiseTransport(key_pair,
                                                               noise_privkey=new_x25519_key_pair().private_key)},
                    muxer_opt={YAMUX_PROTOCOL_ID: Yamux})


def peerstore_addrs(host, pid) -> list:
    from libp2p.peer.peerstore import PeerStoreError

    try:
        return list(host.get_peerstore().addrs(pid))
    except PeerStoreError:
        return []


@contextlib.asynccontextmanager
async def hosts_in_a_line(tmp_path: Path, names: str):
    """Real hosts on 127.0.0.1, one per name, each running the DHT, each
    connected to its neighbours in the line and holding them in its routing
    table. Yields (hosts, routing, peer IDs, the nursery the DHTs run in)."""
    from libp2p.peer.peerinfo import PeerInfo

    idents = [load_or_create(tmp_path / name) for name in names]
    hosts = [make_host(i) for i in idents]
    listen = [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]
    async with contextlib.AsyncExitStack() as stack:
        for h in hosts:
            await stack.enter_async_context(h.run(listen))
        routing = [PeerRouting(h, lookup_timeout_s=20) for h in hosts]
        async with trio.open_nursery() as nursery:
            for r in routing:
                await nursery.start(r.run)
            ids = [i.peer_id for i in idents]
            for left in range(len(hosts) - 1):
                right = left + 1
                await hosts[left].connect(PeerInfo(hosts[right].get_id(), hosts[right].get_addrs()))
                assert await routing[left].add_peer(ids[right])
                assert await routing[right].add_peer(ids[left])
            yield hosts, routing, ids, nursery
            nursery.cancel_scope.cancel()


async def test_a_peer_is_found_by_id_beyond_its_neighbours(tmp_path: Path):
    from libp2p.peer.peerinfo import PeerInfo

    async with hosts_in_a_line(tmp_path, "abcd") as (hosts, routing, ids, _):
        assert not routing[0].known(ids[3])
        assert not peerstore_addrs(hosts[0], hosts[3].get_id())  # a has never heard of d

        found = await routing[0].find(ids[3])
        assert found is not None and found.source == "dht" and found.peer == ids[3]
        d_addrs = {str(a) for a in hosts[3].get_addrs()}
        assert {a.split("/p2p/")[0] for a in found.addrs} & {a.split("/p2p/")[0] for a in d_addrs}, \
            (found.addrs, d_addrs)
        assert routing[0].status()["lookups"] == 1 and routing[0].status()["found"] == 1

        await hosts[0].connect(PeerInfo(hosts[3].get_id(), [multiaddr.Multiaddr(a) for a in found.addrs]))
        await wait_for(lambda: hosts[3].get_id() in hosts[0].get_network().connections, 10,
                       "a to connect to d")
        again = await routing[0].find(ids[3])
        assert again is not None and again.source == "local"

        me = await routing[0].find(ids[0])  # a's own addresses, as a lookup of any peer gives them
        assert me is not None and me.source == "local" and me.addrs
        assert set(me.addrs) == {str(x).split("/p2p/")[0] for x in hosts[0].get_addrs()}, me.addrs

        stranger = load_or_create(tmp_path / "stranger").peer_id
        assert await routing[0].find(stranger) is None  # nobody knows it: None, not an error
        assert wire.peer_id_str(stranger) not in {str(p) for p in hosts[0].get_network().connections}


async def test_a_lookup_returns_what_the_dht_said_not_what_else_wrote_meanwhile(tmp_path: Path):
    """Item: CI saw ``peers find --fresh`` report a NATed laptop's direct
    address as found in the DHT: py-libp2p's find_peer returns the peerstore
    entry, and another protocol (most likely DCUtR) had written there between
    the forget and the lookup. a - b - c: a forgets c, something else writes a
    bogus address for c into a's peerstore at once and again during the
    lookup; the lookup through b still returns only c's real addresses, from
    b's answer."""
    from libp2p.peer.id import ID

    bogus = multiaddr.Multiaddr("/ip4/198.18.0.77/tcp/4001")  # a hole punch's predicted address
    async with hosts_in_a_line(tmp_path, "abc") as (hosts, routing, ids, nursery):
        c = ID(ids[2])
        forget = routing[0].forget
        store = hosts[0].get_peerstore()

        written: list = []

        def forget_then_hear_elsewhere(peer):
            forget(peer)
            store.add_addrs(c, [bogus], 600)  # outside the lookup: not what the DHT said
            written.append(bogus)

        routing[0].forget = forget_then_hear_elsewhere
        mid_lookup = trio.Event()
        nursery.start_soon(lambda: _write_during(mid_lookup, store, c, bogus, written))
        original = routing[0].dht.peer_routing.find_closest_peers_network

        async def lookup(key, *args, **kw):
            mid_lookup.set()
            await trio.sleep(0)
            return await original(key, *args, **kw)

        routing[0].dht.peer_routing.find_closest_peers_network = lookup
        found = await routing[0].find(ids[2], fresh=True)
        assert found is not None and found.source == "dht", found
        real = {str(a).split("/p2p/")[0] for a in hosts[2].get_addrs()}
        assert found.addrs and set(found.addrs) <= real, (found.addrs, real)
        assert routing[0].status()["found"] == 1
        assert written == [bogus, bogus]  # both writes happened (a failed dial may have dropped them since)


async def _write_during(event: trio.Event, store, pid, addr, written: list) -> None:
    await event.wait()
    store.add_addrs(pid, [addr], 600)
    written.append(addr)


async def line_of_three(nursery) -> list:
    """Three GossipNetworks with the DHT wanted, in a line a - b - c (low
    watermark 1: peer exchange dials no one more); returns [a, b, c] once
    the line stands."""
    import os

    from p2pnet.gossip.network import GossipNetwork
    from p2pnet.gossip.policy import Watermarks
    from p2pnet.identity import Identity

    nets = []
    for i in range(3):
        ident = Identity(os.urandom(32))
        boot = [nets[1].listen_addrs[0]] if i == 2 else [nets[0].listen_addrs[0]] if i == 1 else []
        net = GossipNetwork(ident, ident.signer(), ["/ip4/127.0.0.1/tcp/0"], boot, watermarks=Watermarks(1, 2))
        net.connector.dht_wanted = True
        await nursery.start(net.run)
        nets.append(net)
    a, b, c = nets
    await wait_for(lambda: b.peer_id in set(c.peers()) and a.peer_id in set(b.peers()), 30, "a line a-b-c")
    return nets


async def test_the_connector_runs_the_dht_and_finds_a_peer_it_is_not_connected_to(nursery):
    """Three nodes in a line (low watermark 1: peer exchange dials no one
    more): a, connected to b only, finds c's addresses through the DHT."""
    a, b, c = await line_of_three(nursery)
    assert c.peer_id not in set(a.peers())
    await wait_for(lambda: all(n.connector.routing is not None for n in (a, b, c)), 30, "the DHTs to run")
    await wait_for(lambda: a.connector.routing.known(b.peer_id) and b.connector.routing.known(c.peer_id), 30,
                   "the routing tables to hold the connected peers")
    found = await a.connector.routing.find(c.peer_id)
    assert found is not None and found.source == "dht"
    c_tcp = {addr.split("/p2p/")[0] for addr in c.listen_addrs}
    assert c_tcp & {addr.split("/p2p/")[0] for addr in found.addrs}, (found.addrs, c.listen_addrs)
    assert a.connector.dht_status()["found"] == 1
    either = await a.connector.find_peer(c.peer_id)  # the peer book's (c's announcements) or the DHT's
    assert c_tcp & {addr.split("/p2p/")[0] for addr in either}, either


async def test_a_failed_dial_asks_the_network_not_the_addresses_that_failed(nursery):
    """Item: after a dial to a peer's announced address fails, the connector
    looks the peer up (``_dial_found``), but the lookup answered from the
    peerstore, which held the address that had just failed (a dial writes
    it there), so nothing new was found and the DHT was never asked. a - b -
    c, a knows c only at a dead port: the lookup goes to the network, finds
    c's real address through b, and a connects to c."""
    from libp2p.peer.id import ID

    a, b, c = await line_of_three(nursery)
    await wait_for(lambda: all(n.connector.routing is not None for n in (a, b, c)), 30, "the DHTs to run")
    await wait_for(lambda: a.connector.routing.known(b.peer_id) and b.connector.routing.known(c.peer_id), 30,
                   "the routing tables to hold the connected peers")
    dead = "/ip4/127.0.0.1/tcp/9"  # discard: nobody listens there
    a.connector.net.host.get_peerstore().add_addrs(ID(c.peer_id), [multiaddr.Multiaddr(dead)], 120)
    lookups = a.connector.dht_status()["lookups"]
    await a.connector._dial_found(c.peer_id, {dead})
    assert a.connector.dht_status()["lookups"] == lookups + 1  # the network was asked
    assert c.peer_id in set(a.peers())


def test_node_start_dht_runs_it_and_status_shows_it(tmp_path):
    """Two real node processes with --dht: each puts the other into its
    routing table; `p2pnet status` shows the DHT."""
    import json
    import subprocess
    import sys
    import time

    from p2pnet.api import client

    from .conftest_net import NODE_CLI, start_node_process, stop_process

    def status(d):
        return client.get_json(json.loads((d / "node.json").read_text())["api"] + "/status", timeout=5)

    procs = []
    try:
        first = tmp_path / "a"
        first.mkdir()
        procs.append(start_node_process(["node", "start", "--data-dir", first, "--listen", "/ip4/127.0.0.1/tcp/0",
                                         "--api-port", "0", "--no-experts", "--dht"], first / "out.log", tmp_path))
        boot = json.loads((first / "node.json").read_text())["listen"][0]
        second = tmp_path / "b"
        second.mkdir()
        procs.append(start_node_process(["node", "start", "--data-dir", second, "--listen", "/ip4/127.0.0.1/tcp/0",
                                         "--api-port", "0", "--no-experts", "--dht", "--bootstrap", boot],
                                        second / "out.log", tmp_path))
        deadline = time.monotonic() + 60
        while not all((status(d).get("dht") or {}).get("routing_table", 0) >= 1 for d in (first, second)):
            assert time.monotonic() < deadline, [status(d).get("dht") for d in (first, second)]
            time.sleep(0.2)
        out = subprocess.run([sys.executable, "-c", NODE_CLI, "status", "--data-dir", str(second)],
                             capture_output=True, text=True, timeout=60)
        assert "dht       routing table 1 peers; lookups 0, found 0" in out.stdout, out.stdout + out.stderr
    finally:
        for proc in procs:
            stop_process(proc)
    assert all(p.poll() is not None for p in procs)


async def read_all(stream) -> bytes:
    data = b""
    while True:
        try:
            chunk = await stream.read(65536)
        except Exception:  # EOF
            break
        if not chunk:
            break
        data += chunk
    return data


async def test_identify_and_dht_answers_carry_only_reachable_addresses(tmp_path: Path):
    """Item: identify leaked every bound address. A host on 127.0.0.1 that
    advertises (p2pnet.gossip.advertise) a public and a relayed address:
    identify tells a peer exactly those, its signed record holds the same,
    and with nothing to advertise it tells none (no fallback to the bound
    address). A DHT answer about a peer whose peerstore entry holds LAN,
    loopback, public and relayed addresses carries the public and relayed
    ones only, plus the relayed ones its announcements named."""
    from libp2p.identity.identify.identify import ID as IDENTIFY
    from libp2p.identity.identify.identify import parse_identify_response
    from libp2p.kad_dht.pb.kademlia_pb2 import Message
    from libp2p.peer.envelope import consume_envelope
    from libp2p.peer.id import ID
    from libp2p.peer.peerinfo import PeerInfo

    from p2pnet.gossip.advertise import Advertiser

    idents = [load_or_create(tmp_path / name) for name in "ab"]
    a, b = (make_host(i) for i in idents)
    relay = load_or_create(tmp_path / "relay").peer_id
    circuit = f"/ip4/198.18.0.1/tcp/4001/p2p/{wire.peer_id_str(relay)}/p2p-circuit"
    advertised = ["/ip4/198.18.0.5/tcp/4001", circuit]
    listen = [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]
    async with a.run(listen), b.run(listen):
        adv = Advertiser(a, lambda: list(advertised))
        adv.install()
        bound = [str(x) for x in adv.raw_get_addrs()]
        assert bound and all("127.0.0.1" in x for x in bound)
        assert adv.raw_view().get_addrs() == adv.raw_get_addrs()  # what DCUtR sees
        await b.connect(PeerInfo(a.get_id(), adv.raw_get_addrs()))

        async def identify() -> tuple[list, list]:
            stream = await b.new_stream(a.get_id(), [IDENTIFY])
            msg = parse_identify_response(await read_all(stream))
            _, record = consume_envelope(msg.signedPeerRecord, "libp2p-peer-record")
            return ([str(multiaddr.Multiaddr(x)) for x in msg.listen_addrs],
                    sorted(str(x).split(f"/p2p/{a.get_id()}")[0] for x in record.addrs))

        told, signed = await identify()
        assert told == advertised and signed == sorted(advertised)
        advertised.clear()  # behind NAT, no reservation yet: nothing to tell
        assert adv.changed()
        told, signed = await identify()
        assert told == [] and signed == []

        # the DHT's answers, on b: a's peerstore entry there holds more than a may be handed out as
        routing = PeerRouting(b, extra_addrs=lambda p: (circuit,) if p == idents[0].peer_id else ())
        a_id = ID(idents[0].peer_id)
        b.get_peerstore().clear_addrs(a_id)
        b.get_peerstore().add_addrs(a_id, [multiaddr.Multiaddr(x) for x in (
            "/ip4/10.0.1.2/tcp/4001", "/ip4/127.0.0.1/tcp/4001", "/ip4/198.18.0.5/tcp/4001")], 600)
        answer = Message()
        routing._closer_peers(answer, [a_id, ID(relay)])  # the relay: nothing known, left out
        assert [ID(p.id) for p in answer.closerPeers] == [a_id]
        handed = [str(multiaddr.Multiaddr(x)) for x in answer.closerPeers[0].addrs]
        assert handed == ["/ip4/198.18.0.5/tcp/4001", circuit], handed
        assert routing.status()["withheld_addrs"] == 2


async def test_the_find_peer_route_checks_its_input_and_says_when_the_dht_is_off(nursery):
    """POST /peers/find (p2pnet peers find): a bad body or peer ID is a 400,
    the DHT off a 409 with one message; a lookup's result comes back as is."""
    import json

    from p2pnet.api.control import mount_control
    from p2pnet.api.http import Router
    from p2pnet.api.server import HttpServer

    from .test_http_guard import call, host

    class Node:
        peer_id = "12D3KooWtest"
        dht = True

        async def find_peer(self, peer_id, *, fresh=False):
            if peer_id == "bad":
                raise ValueError("sender is not an Ed25519 peer ID")
            if not self.dht:
                raise LookupError("peer routing is off: start the node with --dht")
            return {"peer_id": peer_id, "found": True, "source": "dht", "connected": True, "fresh": fresh,
                    "addrs": ["/ip4/198.18.0.1/tcp/4001/p2p/12D3KooWrelay/p2p-circuit"]}

    node = Node()
    router = Router()
    mount_control(router, node)
    url = await nursery.start(HttpServer(router).run)
    port = int(url.rsplit(":", 1)[1])

    async def post(obj):
        body = json.dumps(obj).encode()
        return await call(port, "POST", "/peers/find", [host(port), ("content-type", "application/json")], body)

    status, _, out = await post({"peer_id": "12D3KooWother", "fresh": True})
    assert status == 200 and out["source"] == "dht" and out["fresh"] is True
    for bad in ({}, {"peer_id": 7}, {"peer_id": "x", "fresh": "yes"}, {"peer_id": "bad"}):
        status, _, out = await post(bad)
        assert status == 400, (bad, out)
    node.dht = False
    status, _, out = await post({"peer_id": "12D3KooWother"})
    assert status == 409 and "--dht" in out["error"]["message"]
