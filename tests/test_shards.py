"""Issue 21, item 2: the directory without a global announcement per node.

A node that offers only its addresses does not gossip its announcement: it
keeps it for the directory exchange (push-pull with one peer at a time,
p2pnet/gossip/announcer.py). Pure parts run alone; the exchange runs real
py-libp2p hosts over loopback in one process."""

import os
import time


from p2pnet import wire
from p2pnet.gossip import topics
from p2pnet.gossip.announcer import gossips
from p2pnet.gossip.network import GossipNetwork
from p2pnet.gossip.policy import AnnounceSchedule, AnnounceStore
from p2pnet.identity import Identity

from .conftest_net import wait_for


def card(expert_id="e1", domains=("general",)):
    return wire.ModelCard(expert_id=expert_id, model="m", sha256="00" * 32, quantization="q4", n_ctx=2048,
                          domains=domains, prompt_tps=100.0, gen_tps=10.0, price_per_1k=0.1, load=0,
                          max_concurrency=1)


def make_net(boot=None, **kw):
    ident = Identity(os.urandom(32))
    net = GossipNetwork(ident, ident.signer(), ["/ip4/127.0.0.1/tcp/0"], [boot] if boot else [],
                        announce_interval_s=kw.pop("announce_interval_s", 60.0),
                        announce_min_gap_s=kw.pop("announce_min_gap_s", 1.0), **kw)
    net.fetch_directory_soon()
    return net


def test_only_experts_and_validators_gossip_their_announcements():
    assert not gossips(wire.Announce(addrs=("/ip4/1.2.3.4/tcp/1",)))
    assert gossips(wire.Announce(addrs=(), cards=(card(),)))
    assert gossips(wire.Announce(addrs=(), validator=True))


def test_a_kept_announcement_is_not_echoed():
    schedule = AnnounceSchedule(refresh_s=120.0, min_gap_s=3.0)
    schedule.sent(0.0, "k", echo=False)
    assert schedule.wait_s(1.0, "k") == 119.0  # the next refresh, no echo at 2 s
    schedule.sent(130.0, "j")
    assert schedule.wait_s(130.5, "j") == 1.5  # a gossiped change is echoed


def test_the_directory_can_be_asked_for_one_domain_only():
    store = AnnounceStore()
    now = time.time()
    for i, domains in enumerate((("math",), ("law", "math"), ("law",))):
        signer = wire.Signer(os.urandom(32))
        raw = signer.seal(wire.Announce(addrs=(), cards=(card(f"e{i}", domains),), ttl_s=90))
        store.put(wire.open_envelope(raw), now)
    quiet = wire.Signer(os.urandom(32))
    store.put(wire.open_envelope(quiet.seal(wire.Announce(addrs=("/ip4/1.2.3.4/tcp/1",), ttl_s=90))), now)
    assert len(store.current(now)) == 4
    assert sorted(e.message.cards[0].expert_id for e in store.current(now, domain="math")) == ["e0", "e1"]
    assert [e.message.cards[0].expert_id for e in store.current(now, domain="law", limit=1)] in (["e1"], ["e2"])
    assert store.current(now, domain="chemistry") == []
    assert len(store.raws()) == 4


def test_a_directory_request_carries_a_domain_and_the_askers_announcement_within_bounds():
    signer = wire.Signer(os.urandom(32))
    env = wire.open_envelope(signer.seal(wire.DirectoryRequest(domain="math", announce=b"x" * 10)))
    assert env.message.domain == "math" and env.message.announce == b"x" * 10
    for bad in (wire.DirectoryRequest(domain="d" * 65), wire.DirectoryRequest(announce=b"x" * (wire.MAX_ANNOUNCE_BYTES + 1))):
        try:
            wire.open_envelope(signer.seal(bad))
        except wire.WireError as exc:
            assert exc.reason == wire.SCHEMA
        else:
            raise AssertionError(f"{bad!r} was taken")


async def test_a_pushed_announcement_must_be_the_askers_own():
    """Sent with a directory request: the asker's own is taken; another
    peer's (a replayed or relayed one) and junk are refused, counted and
    struck against the asker."""
    net = make_net()
    asker, other = wire.Signer(os.urandom(32)), wire.Signer(os.urandom(32))
    own = asker.seal(wire.Announce(addrs=("/ip4/10.0.0.1/tcp/4001",), ttl_s=300))
    await net._take_pushed(asker.peer_id, own)
    assert net.announces.get(asker.peer_id).raw == own
    assert net.stats.received["directory_pushed"] == 1
    await net._take_pushed(asker.peer_id, own)  # held already: not checked or counted again
    assert net.stats.received["directory_pushed"] == 1
    foreign = other.seal(wire.Announce(addrs=("/ip4/10.0.0.2/tcp/4001",), ttl_s=300))
    await net._take_pushed(asker.peer_id, foreign)
    await net._take_pushed(asker.peer_id, b"junk")
    assert net.announces.get(other.peer_id) is None
    name = wire.peer_id_str(asker.peer_id)
    assert net.stats.dropped_by_peer[name] == 2
    assert net.stats.dropped[f"directory_{wire.BAD_SIGNATURE}"] == 1


async def test_nodes_without_experts_find_each_other_by_exchange_not_gossip(nursery):
    """b and c offer only their addresses and join through a. Nothing goes
    on the announce topic, yet each node ends up holding the others'
    announcements: b's reached a with b's join-time request, and c got it
    from a's directory (or a later exchange)."""
    a = make_net(announce_interval_s=5.0)
    await nursery.start(a.run)
    b = make_net(a.listen_addrs[0] + f"/p2p/{wire.peer_id_str(a.peer_id)}", announce_interval_s=5.0)
    await nursery.start(b.run)
    await wait_for(lambda: a.announces.get(b.peer_id) is not None, 30, "b's announcement at a")
    c = make_net(a.listen_addrs[0] + f"/p2p/{wire.peer_id_str(a.peer_id)}", announce_interval_s=5.0)
    await nursery.start(c.run)
    nets = (a, b, c)
    await wait_for(lambda: all(n.announces.get(m.peer_id) is not None for n in nets for m in nets), 60,
                   "every node holding every announcement")
    for n in nets:
        assert n.stats.sent[topics.ANNOUNCE] == 0
        assert n.stats.received[topics.ANNOUNCE] == 0
    assert c.announces.get(b.peer_id).raw == a.announces.get(b.peer_id).raw  # b's own signature
    for n in nets:
        n.close()


async def test_a_settled_mesh_sends_no_graft_or_prune(nursery):
    """Eight nodes, each connected to the seven others (more than D_high = 5
    in every topic). py-libp2p's opportunistic grafting, left on, grafted
    every peer outside the mesh at each heartbeat and pruned it at the next:
    control traffic that grows with the connections (network.py
    ``no_opportunistic_grafting``). Once the meshes settle, a few heartbeats
    pass with no GRAFT or PRUNE at all."""
    from p2pnet.gossip.policy import Watermarks

    nets = []
    for i in range(8):
        net = make_net(nets[0].listen_addrs[0] + f"/p2p/{wire.peer_id_str(nets[0].peer_id)}" if nets else None,
                       watermarks=Watermarks(low=7, high=10))
        await nursery.start(net.run)
        nets.append(net)
    await wait_for(lambda: all(len(n.peers()) == 7 for n in nets), 60, "every node connected to the seven others")
    control = []
    beats = []
    for n in nets:
        gs = n.gossipsub
        for name in ("handle_graft", "handle_prune"):
            def counted(*a, _orig=getattr(gs, name), _name=name, **k):
                control.append(_name)
                return _orig(*a, **k)
            setattr(gs, name, counted)
        heartbeat = gs.mesh_heartbeat

        def beat(_orig=heartbeat):
            beats.append(1)
            return _orig()
        gs.mesh_heartbeat = beat
    # settled: 3 heartbeats of every node in a row without a GRAFT or PRUNE
    quiet_since = None

    def settled():
        nonlocal quiet_since
        if control:
            control.clear()
            quiet_since = len(beats)
        elif quiet_since is None:
            quiet_since = len(beats)
        return len(beats) - quiet_since >= 3 * len(nets)

    await wait_for(settled, 60, "three heartbeats of every node with no GRAFT or PRUNE")
    for n in nets:
        assert all(2 <= size <= 5 for size in n.mesh().values()), n.mesh()
        n.close()
