"""NAT traversal's pure parts: address scopes and the announcement filter
(nat.py), the reachability decision and the dial-back server's limits
(reachability.py), the relay reservation plan (relay.py). No network."""

import json

import pytest
import trio

from p2pnet.gossip import nat
from p2pnet.gossip.errors import RpcFailed
from p2pnet.gossip.reachability import (
    BEHIND_NAT,
    PUBLIC,
    UNKNOWN,
    DialBackLimits,
    DialBackServer,
    Reachability,
    check_request,
)
from p2pnet.gossip.relay import NatService, NatSettings, RelayPlan

RELAY = "12D3KooWKyZasvfEbxHh658vStvP5ouhz7afBsLsWbukbm7z4QT3"


# ---------------------------------------------------------------- addresses

@pytest.mark.parametrize("addr,scope", [
    ("/ip4/198.18.0.1/tcp/4001", "public"),  # the testnet's internet: public on purpose
    ("/ip4/8.8.8.8/tcp/4001", "public"),
    ("/ip4/192.168.1.2/tcp/4001", "private"),
    ("/ip4/10.1.2.3/tcp/1", "private"),
    ("/ip4/172.20.0.1/tcp/1", "private"),
    ("/ip4/100.64.0.9/tcp/1", "private"),  # CGNAT
    ("/ip4/169.254.1.1/tcp/1", "private"),
    ("/ip4/127.0.0.1/tcp/1", "loopback"),
    ("/ip6/::1/tcp/1", "loopback"),
    ("/ip6/fd00::1/tcp/1", "private"),
    ("/ip4/0.0.0.0/tcp/1", "unspecified"),
    ("/ip4/224.0.0.1/tcp/1", "invalid"),
    ("/dns4/relay.example/tcp/4001", "dns"),
    (f"/ip4/198.18.0.1/tcp/4001/p2p/{RELAY}/p2p-circuit", "circuit"),
    ("garbage", "invalid"),
    ("/ip4/999.1.1.1/tcp/1", "invalid"),
])
def test_addr_scope(addr, scope):
    assert nat.addr_scope(addr) == scope


def test_announceable_drops_loopback_and_private_adds_circuits():
    circuit = nat.circuit_addr("/ip4/198.18.0.1/tcp/4001", RELAY)
    assert circuit == f"/ip4/198.18.0.1/tcp/4001/p2p/{RELAY}/p2p-circuit"
    # a server on the internet and loopback: only the public address
    assert nat.announceable(["/ip4/198.18.0.2/tcp/4001", "/ip4/127.0.0.1/tcp/4001"]) == ("/ip4/198.18.0.2/tcp/4001",)
    # a laptop behind NAT: only its relayed addresses, never its LAN address
    assert nat.announceable(["/ip4/192.168.1.2/tcp/4001/p2p/X"], [circuit]) == (circuit,)
    assert nat.announceable(["/ip4/192.168.1.2/tcp/4001"]) == ()
    # a LAN-only network asks for private addresses explicitly
    assert nat.announceable(["/ip4/192.168.1.2/tcp/4001"], announce_private=True) == ("/ip4/192.168.1.2/tcp/4001",)
    # a swarm on one machine: loopback is all it has and all its peers use
    assert nat.announceable(["/ip4/127.0.0.1/tcp/5000"]) == ("/ip4/127.0.0.1/tcp/5000",)
    # wildcards never go out; junk in the circuit list neither
    assert nat.announceable(["/ip4/0.0.0.0/tcp/1"], ["/ip4/1.2.3.4/tcp/1"]) == ()


def test_usable_by_me():
    lan = ["/ip4/192.168.1.2/tcp/4001"]
    public = ["/ip4/198.18.0.1/tcp/4001"]
    assert nat.usable_by_me("/ip4/198.18.0.3/tcp/4001", lan)
    assert nat.usable_by_me("/ip4/192.168.7.7/tcp/4001", lan)
    assert not nat.usable_by_me("/ip4/192.168.7.7/tcp/4001", public)
    assert not nat.usable_by_me("/ip4/127.0.0.1/tcp/4001", public)
    assert nat.usable_by_me("/ip4/127.0.0.1/tcp/4001", ["/ip4/127.0.0.1/tcp/9"])
    assert not nat.usable_by_me("/ip4/0.0.0.0/tcp/4001", public)


def test_split_circuit():
    assert nat.split_circuit(f"/ip4/198.18.0.1/tcp/4001/p2p/{RELAY}/p2p-circuit") == (
        "/ip4/198.18.0.1/tcp/4001", RELAY)
    assert nat.split_circuit(f"/ip4/198.18.0.1/tcp/4001/p2p/{RELAY}/p2p-circuit/p2p/Z") == (
        "/ip4/198.18.0.1/tcp/4001", RELAY)
    for bad in ("/ip4/1.2.3.4/tcp/1", "/p2p-circuit", f"/p2p/{RELAY}/p2p-circuit", "/x/p2p//p2p-circuit"):
        assert nat.split_circuit(bad) is None


def test_path_of():
    assert nat.path_of([]) == nat.NOT_CONNECTED
    assert nat.path_of([(True, False)]) == nat.RELAYED
    assert nat.path_of([(True, False), (False, True)]) == nat.HOLE_PUNCHED
    assert nat.path_of([(True, False), (False, False)]) == nat.DIRECT


# ---------------------------------------------------------------- reachability

def test_reachability_needs_two_agreeing_peers():
    r = Reachability(need=2, recheck_s=300, retry_s=20)
    assert r.next_probe(0, ["a", "b"]) is None  # no address yet: nothing to check
    assert r.set_addrs(["/ip4/198.18.0.1/tcp/4001"], 0)
    assert r.next_probe(0, ["b", "a"]) == "a"
    r.result("a", True, 1)
    assert r.state == UNKNOWN  # one peer's word is not enough
    assert r.next_probe(1, ["a", "b"]) == "b"
    r.result("b", True, 2)
    assert r.state == PUBLIC and r.changed == 1
    assert r.next_probe(3, ["a", "b", "c"]) is None  # verdict reached: quiet until recheck_s
    assert r.wait_s(3) == pytest.approx(299)
    assert not r.set_addrs(["/ip4/198.18.0.1/tcp/4001"], 4)  # same addresses: nothing new


def test_reachability_behind_nat_and_unknown_on_mixed_answers():
    r = Reachability(need=2)
    r.set_addrs(["/ip4/192.168.1.2/tcp/4001"], 0)
    for peer in ("a", "b"):
        assert r.next_probe(0, ["a", "b", "c"]) == peer
        r.result(peer, False, 0)
    assert r.state == BEHIND_NAT
    # addresses change: the verdict is forgotten and a new round starts at once
    assert r.set_addrs(["/ip4/192.168.1.9/tcp/4001"], 10)
    assert r.state == UNKNOWN and r.wait_s(10) == 0
    r.result("z", True, 10)  # never asked: ignored
    assert r.next_probe(10, ["a", "b", "c"]) == "a"
    r.result("a", True, 11)
    assert r.next_probe(11, ["a", "b", "c"]) == "b"
    r.result("b", False, 12)
    assert r.next_probe(12, ["a", "b", "c"]) == "c"
    r.result("c", None, 13)  # refused: no evidence
    assert r.next_probe(13, ["a", "b", "c"]) is None
    r.round_over(13)
    assert r.state == UNKNOWN and r.wait_s(13) == pytest.approx(r.retry_s)
    assert r.next_probe(13 + r.retry_s, ["a", "b", "c"]) == "a"  # a new round asks everyone again


def test_reachability_rechecks_when_peers_see_a_new_address():
    r = Reachability(need=2, recheck_s=300, observed_gap_s=30)
    r.set_addrs(["/ip4/10.0.1.2/tcp/4001"], 0)
    for peer in ("a", "b"):
        assert r.next_probe(0, ["a", "b"]) == peer
        r.result(peer, False, 1)
    assert r.state == BEHIND_NAT and r.wait_s(1) == pytest.approx(300)
    assert not r.observed("198.18.0.7", 2)  # the first address peers report: nothing to compare with
    assert not r.observed("198.18.0.7", 3)  # the same again (another port, another peer): nothing new
    assert not r.observed("not an ip", 3) and not r.observed("0.0.0.0", 3)
    # the NAT's mapping changed: a new round at once, the verdict kept until it decides
    assert r.observed("198.18.0.9", 50)
    assert r.state == BEHIND_NAT and r.wait_s(50) == 0 and r.rechecks_observed == 1
    assert r.next_probe(50, ["a", "b"]) == "a"
    assert not r.observed("198.18.0.11", 51)  # a round runs already
    r.result("a", True, 52)
    assert r.next_probe(52, ["a", "b"]) == "b"
    r.result("b", True, 53)
    assert r.state == PUBLIC  # it now has a verdict of its own
    assert not r.observed("198.18.0.12", 60)  # within observed_gap_s of the last such round
    assert r.observed("198.18.0.13", 81) and r.rechecks_observed == 2
    # a listen-address change forgets what was seen: its first report starts nothing
    assert r.set_addrs(["/ip4/10.0.1.3/tcp/4001"], 90)
    assert r.state == UNKNOWN
    r.round_over(90)
    assert not r.observed("198.18.0.99", 200)
    for i in range(40):  # bounded
        r.observed(f"198.18.1.{i}", 300 + i)
    assert len(r._seen_ips) <= 16


def test_addresses_handed_out_about_a_peer():
    circ = f"/ip4/198.18.0.1/tcp/4001/p2p/{RELAY}/p2p-circuit"
    known = ["/ip4/10.0.1.2/tcp/4001", "/ip4/127.0.0.1/tcp/4001", "/ip4/198.18.0.5/tcp/4001",
             circ + "/p2p/12D3KooWPeer", "/ip4/0.0.0.0/tcp/4001"]
    assert nat.handed_out(known) == ("/ip4/198.18.0.5/tcp/4001", circ)
    # a NATed peer: its LAN address never goes, its relayed ones (also from announcements) do
    other = f"/ip4/198.18.0.2/tcp/4001/p2p/{RELAY}/p2p-circuit"
    assert nat.handed_out(["/ip4/192.168.1.4/tcp/4001"], [other, "/ip4/1.2.3.4/tcp/1/p2p-circuit"]) == (other,)
    assert nat.handed_out(["/ip4/192.168.1.4/tcp/4001"], announce_private=True) == ("/ip4/192.168.1.4/tcp/4001",)
    assert nat.handed_out(["/ip4/127.0.0.1/tcp/4001"]) == ("/ip4/127.0.0.1/tcp/4001",)  # one machine's swarm


def test_dial_back_request_checks():
    ok = json.dumps({"ports": [4001, 4001, 5000]}).encode()
    assert check_request(ok, ("198.18.1.1", 5555), False) == [4001, 5000]
    for data, observed, relayed, code in [
        (ok, ("198.18.1.1", 5555), True, "relayed"),
        (ok, None, False, "relayed"),
        (b"{", ("1.2.3.4", 1), False, "malformed"),
        (json.dumps({"ports": []}).encode(), ("1.2.3.4", 1), False, "malformed"),
        (json.dumps({"ports": [1, 2, 3, 4, 5]}).encode(), ("1.2.3.4", 1), False, "malformed"),
        (json.dumps({"ports": [70000]}).encode(), ("1.2.3.4", 1), False, "malformed"),
        (json.dumps({"ports": [True]}).encode(), ("1.2.3.4", 1), False, "malformed"),
        (json.dumps({"ports": [1], "ip": "10.0.0.1"}).encode(), ("0.0.0.0", 1), False, "observed"),
    ]:
        with pytest.raises(RpcFailed) as err:
            check_request(data, observed, relayed)
        assert err.value.code == code


class _Peer:
    def __init__(self, name: bytes) -> None:
        self.name = name

    def to_bytes(self) -> bytes:
        return self.name


async def test_dial_back_dials_only_the_observed_ip_with_limits(autojump_clock):
    dialled = []

    async def dial(ip, port, peer):
        dialled.append((ip, port))
        await trio.sleep(1)
        return port == 4001

    server = DialBackServer(dial, limits=DialBackLimits(max_inflight=1, per_peer_gap_s=10, dial_timeout_s=5))
    req = json.dumps({"ports": [4001, 4002], "ip": "203.0.113.9"}).encode()  # an "ip" field is ignored
    reply = await server._answer(_Peer(b"a"), req, ("198.18.1.1", 40000), False)
    assert reply == {"ok": True, "ports": [4001], "ip": "198.18.1.1"}
    assert dialled == [("198.18.1.1", 4001), ("198.18.1.1", 4002)]
    # the same peer again at once: refused, nothing dialled
    assert (await server._answer(_Peer(b"a"), req, ("198.18.1.1", 40000), False))["error"] == "too_soon"
    # while one dial-back runs, another peer is told "busy"
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server._answer, _Peer(b"b"), req, ("198.18.1.2", 1), False)
        await trio.sleep(0.5)
        assert (await server._answer(_Peer(b"c"), req, ("198.18.1.3", 1), False))["error"] == "busy"
    assert server.refused == {"too_soon": 1, "busy": 1} and server.served == 2


async def test_dial_back_gives_up_on_a_hanging_dial(autojump_clock):
    async def dial(ip, port, peer):
        await trio.sleep_forever()

    server = DialBackServer(dial, limits=DialBackLimits(dial_timeout_s=3))
    start = trio.current_time()
    reply = await server._answer(_Peer(b"a"), json.dumps({"ports": [1]}).encode(), ("198.18.1.1", 2), False)
    assert reply["ok"] is False and trio.current_time() - start == pytest.approx(3)


# ---------------------------------------------------------------- relay plan

def test_relay_plan_reserves_refreshes_and_replaces():
    p = RelayPlan(want=2, cooldown_s=30)
    acts = p.step(0, True, {"r1", "r2", "r3"}, ["r1", "r2", "r3"])
    assert acts == [("reserve", "r1"), ("reserve", "r2")]
    assert p.step(1, True, {"r1", "r2", "r3"}, ["r1", "r2", "r3"]) == []  # both in flight
    p.reserved("r1", "/ip4/198.18.0.1/tcp/4001", 1, 901)
    p.failed("r2", 1)
    assert p.step(2, True, {"r1", "r2", "r3"}, ["r2", "r3"]) == [("reserve", "r3")]  # r2 cools down
    p.reserved("r3", "/ip4/198.18.0.3/tcp/4001", 2, 902)
    assert p.circuit_addrs() == [nat.circuit_addr("/ip4/198.18.0.1/tcp/4001", "r1"),
                                 nat.circuit_addr("/ip4/198.18.0.3/tcp/4001", "r3")]
    # two thirds into its term a reservation is renewed
    assert p.step(601, True, {"r1", "r2", "r3"}, []) == [("reserve", "r1")]
    p.reserved("r1", "/ip4/198.18.0.1/tcp/4001", 601, 1501)
    # a relay that goes away is dropped and replaced (r2's cooldown is over)
    assert p.step(700, True, {"r1", "r2"}, ["r2"]) == [("drop", "r3"), ("reserve", "r2")]
    # once the node is public, every reservation is dropped
    p.reserved("r2", "/ip4/198.18.0.2/tcp/4001", 700, 1600)
    assert sorted(p.step(701, False, {"r1", "r2"}, ["r1", "r2"])) == [("drop", "r1"), ("drop", "r2")]
    assert p.circuit_addrs() == []


def test_nat_settings_are_checked():
    from p2pnet.gossip.errors import GossipError

    with pytest.raises(GossipError):
        NatService(object(), NatSettings(relay="sometimes"))


def test_nat_config_checked_and_carried(tmp_path):
    from p2pnet import config

    cfg = config.build(data_dir=tmp_path, relay="off", want_relays=3, announce_private=True)
    s = config.nat_settings(cfg)
    assert (s.relay, s.want_relays, s.announce_private, s.relay_max_circuits) == ("off", 3, True, 32)
    for bad in ({"relay": "sometimes"}, {"want_relays": 9}, {"relay_max_circuits": 0}):
        with pytest.raises(config.ConfigError):
            config.build(data_dir=tmp_path, **bad)
    f = tmp_path / "c.toml"
    f.write_text('relay_max_circuit_bytes = 1024\nrelay = "on"\n')
    assert config.nat_settings(config.build(f, data_dir=tmp_path)).relay_max_circuit_bytes == 1024


class _Net:
    def __init__(self, listen):
        self.listen_addrs = listen


def test_who_serves_as_a_relay():
    public, lan = ["/ip4/198.18.0.1/tcp/4001"], ["/ip4/192.168.1.2/tcp/4001"]
    svc = NatService(_Net(public), NatSettings())
    assert svc.serving() and svc.need_relays()  # unknown, but a public address: serves, and reserves meanwhile
    svc.reach.state = PUBLIC
    assert svc.serving() and not svc.need_relays()
    svc.reach.state = BEHIND_NAT
    assert not svc.serving() and svc.need_relays()
    lan_svc = NatService(_Net(lan), NatSettings())
    assert not lan_svc.serving() and lan_svc.need_relays()  # unknown behind a LAN address: does not serve
    assert NatService(_Net(lan), NatSettings(relay="on")).serving()
    assert not NatService(_Net(["/ip4/127.0.0.1/tcp/1"]), NatSettings()).need_relays()  # one machine: no relays
    off = NatService(_Net(public), NatSettings(relay="off"))
    off.reach.state = PUBLIC
    assert not off.serving()


def test_dial_back_reply_addresses_and_verified_announcement():
    from p2pnet.gossip.reachability import reached_addrs

    assert reached_addrs({"ok": True, "ip": "198.18.0.9", "ports": [4001, 9999]}, [4001]) == ["/ip4/198.18.0.9/tcp/4001"]
    for bad in ({"ok": False, "ip": "198.18.0.9", "ports": [4001]}, {"ok": True, "ip": "0.0.0.0", "ports": [4001]},
                {"ok": True, "ip": "x", "ports": [4001]}, {"ok": True, "ip": "1.2.3.4", "ports": "4001"}):
        assert reached_addrs(bad, [4001]) == []
    # a node listening on 0.0.0.0 announces what two peers reached it at, once public
    svc = NatService(_Net(["/ip4/0.0.0.0/tcp/4001"]), NatSettings())
    svc.reach.set_addrs(["/ip4/0.0.0.0/tcp/4001"], 0)
    svc._reached("a", ["/ip4/198.18.0.9/tcp/4001"])
    svc.reach.state = PUBLIC
    assert svc.verified_addrs() == ()  # one peer's word
    svc._reached("b", ["/ip4/198.18.0.9/tcp/4001"])
    assert svc.verified_addrs() == ("/ip4/198.18.0.9/tcp/4001",)
    svc.reach.state = BEHIND_NAT
    assert svc.verified_addrs() == ()
    assert nat.announceable(["/ip4/0.0.0.0/tcp/4001", "/ip4/198.18.0.9/tcp/4001"]) == ("/ip4/198.18.0.9/tcp/4001",)


def test_nat_traversal_can_be_switched_off(tmp_path):
    from p2pnet import config

    f = tmp_path / "off.toml"
    f.write_text("nat_traversal = false\n")
    assert config.nat_settings(config.build(f, data_dir=tmp_path)) is None


def test_connection_kinds():
    from libp2p.connection_types import ConnectionType

    from p2pnet.gossip.reachability import conn_is_relayed

    class Conn:
        def __init__(self, kind, addrs=None):
            self.kind, self._actual_transport_addresses = kind, addrs

        def get_connection_type(self):
            return self.kind

    assert conn_is_relayed(Conn(ConnectionType.RELAYED))
    assert not conn_is_relayed(Conn(ConnectionType.DIRECT))
    assert conn_is_relayed(Conn(ConnectionType.UNKNOWN))  # not tagged yet: never claimed direct
    assert not conn_is_relayed(Conn(ConnectionType.UNKNOWN, ["/ip4/198.18.0.1/tcp/4001"]))
    assert conn_is_relayed(Conn(ConnectionType.UNKNOWN, [f"/p2p/{RELAY}/p2p-circuit/p2p/X"]))
