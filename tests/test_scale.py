"""Issue 21, items 2 and 3: bounded connections, announcements with a TTL that
repeat only on change or refresh, and the directory a joining node fetches.

The policies are pure (p2pnet/gossip/policy.py) and tested alone; the
announcer runs on Trio's MockClock; the rest runs real py-libp2p hosts over
loopback in one process."""

import os
import random
import time

import pytest
import trio

from p2pnet import wire
from p2pnet.experts.directory import Directory
from p2pnet.gossip import topics
from p2pnet.gossip.errors import RpcFailed
from p2pnet.gossip.network import GossipNetwork
from p2pnet.gossip.policy import (
    AnnounceSchedule, AnnounceStore, Conn, Watermarks, check_directory, choose_trim,
)
from p2pnet.identity import Identity

from .conftest_net import wait_for


def card(expert_id="e1", load=0):
    return wire.ModelCard(expert_id=expert_id, model="m", sha256="00" * 32, quantization="q4", n_ctx=2048,
                          domains=("general",), prompt_tps=100.0, gen_tps=10.0, price_per_1k=0.1, load=load,
                          max_concurrency=1)


def pid(i: int) -> bytes:
    return wire.peer_id_from_public_key(bytes([i]) * 32)


# ------------------------------------------------------------ pure policies


def test_no_trim_up_to_the_high_watermark_then_back_to_the_low_one():
    marks = Watermarks(low=3, high=5, grace_s=10)
    rng = random.Random(1)
    conns = [Conn(pid(i), since=0.0) for i in range(5)]
    assert choose_trim(conns, marks, 100.0, keep_validators=False, rng=rng) == []
    conns.append(Conn(pid(5), since=0.0))
    drop = choose_trim(conns, marks, 100.0, keep_validators=False, rng=rng)
    assert len(drop) == 3 and len(set(drop)) == 3


def test_trim_spares_busy_young_bootstrap_mesh_and_validator_peers():
    marks = Watermarks(low=2, high=3, grace_s=10)
    rng = random.Random(2)
    conns = [
        Conn(pid(0), since=0.0, busy=True),        # a request in flight: never
        Conn(pid(1), since=95.0),                  # connected 5 s ago: never
        Conn(pid(2), since=0.0, bootstrap=True),   # last of all
        Conn(pid(3), since=0.0, validator=True),   # kept when following the ledger
        Conn(pid(4), since=0.0, mesh=2),
        Conn(pid(5), since=0.0),
        Conn(pid(6), since=0.0),
    ]
    drop = choose_trim(conns, marks, 100.0, keep_validators=True, rng=rng)
    assert sorted(drop[:2]) == sorted([pid(5), pid(6)])  # in no mesh, no role: first
    assert len(drop) == 5 and pid(0) not in drop and pid(1) not in drop
    assert drop[2:] == [pid(4), pid(3), pid(2)]  # mesh, then validator, then bootstrap
    not_following = choose_trim(conns, marks, 100.0, keep_validators=False, rng=random.Random(2))
    assert not_following.index(pid(3)) < not_following.index(pid(4))  # a validator is just a peer then
    with pytest.raises(ValueError):
        Watermarks(low=4, high=3)


def test_announce_schedule_on_change_at_most_once_per_gap_else_each_refresh():
    s = AnnounceSchedule(refresh_s=30, min_gap_s=3, echoes_s=())
    assert s.wait_s(0, "a") == 0
    s.sent(0, "a")
    assert s.wait_s(1, "a") == 29
    assert s.wait_s(1, "b") == 2       # changed: after the gap
    assert s.wait_s(5, "b") == 0
    s.sent(5, "b")
    s.force()                          # e.g. rejoined: counts as a change
    assert s.wait_s(6, "b") == 2


def test_a_new_announcement_is_echoed_then_only_refreshed():
    # a peer that joined the topic's mesh a moment late hears the change within seconds
    s = AnnounceSchedule(refresh_s=30, min_gap_s=3, echoes_s=(2, 6))
    s.sent(0, "a")
    assert s.wait_s(0, "a") == 2
    s.sent(2, "a")
    assert s.wait_s(2, "a") == 6
    s.sent(8, "a")
    assert s.wait_s(8, "a") == 30      # echoes done: the refresh period
    assert s.wait_s(9, "b") == 2       # a change restarts them, after the gap
    s.sent(11, "b")
    assert s.wait_s(11, "b") == 2


def test_directory_keeps_a_card_as_long_as_its_announcement_says():
    signer = wire.Signer(os.urandom(32), clock=lambda: 1000.0)
    d = Directory()
    d.take_announce(wire.open_envelope(signer.seal(wire.Announce((), (card(),), ttl_s=90))), now=1000.0)
    assert [r.card.expert_id for r in d.all(1089.0)] == ["e1"]
    assert d.all(1090.5) == []
    # an announcement made 60 s ago (from a directory) has 30 s left; an old node's lasts 30 s
    d.take_announce(wire.open_envelope(signer.seal(wire.Announce((), (card(),), ttl_s=90))), now=1060.0)
    assert d.all(1089.0) and not d.all(1090.5)
    d.take_announce(wire.open_envelope(signer.seal(wire.Announce((), (card(),)))), now=1000.0)
    assert d.all(1029.0) and not d.all(1030.5)


def test_announce_ttl_and_directory_reply_are_bounded_on_the_wire():
    signer = wire.Signer(os.urandom(32))
    raw = signer.seal(wire.Announce(("/ip4/127.0.0.1/tcp/1",), ttl_s=90))
    assert wire.open_envelope(raw).message.ttl_s == 90
    with pytest.raises(wire.WireError) as err:
        wire.open_envelope(signer.seal(wire.Announce((), ttl_s=wire.MAX_ANNOUNCE_TTL_S + 1)))
    assert err.value.reason == wire.SCHEMA
    too_many = wire.DirectoryReply((raw,) * (wire.MAX_DIRECTORY_ENTRIES + 1))
    with pytest.raises(wire.WireError):
        wire.open_envelope(signer.seal(too_many))
    with pytest.raises(wire.WireError):
        wire.open_envelope(signer.seal(wire.DirectoryReply((b"x" * (wire.MAX_ANNOUNCE_BYTES + 1),))))


def test_store_keeps_the_newest_unexpired_announcement_per_peer():
    signer = wire.Signer(os.urandom(32), clock=lambda: 1000.0)
    old = wire.open_envelope(signer.seal(wire.Announce((), ttl_s=60)))
    new = wire.open_envelope(signer.seal(wire.Announce((), (card(),), ttl_s=60)))
    store = AnnounceStore(limit=2)
    assert store.put(new, 1000.0) and not store.put(old, 1000.0)  # older: not news
    assert store.get(signer.peer_id) is new
    assert [e.sender for e in store.current(1059.0)] == [signer.peer_id]
    assert store.current(1060.0) == [] and len(store) == 0
    others = [wire.Signer(os.urandom(32), clock=lambda: 1000.0) for _ in range(3)]
    for o in others:
        store.put(wire.open_envelope(o.seal(wire.Announce((), ttl_s=60))), 1000.0)
    assert len(store) == 2  # bounded


def test_check_directory_takes_good_entries_and_names_the_bad_ones():
    now = 1000.0
    good = wire.Signer(os.urandom(32), clock=lambda: now)
    raw = good.seal(wire.Announce((), (card(),), ttl_s=90))
    forged = raw[:-1] + bytes([raw[-1] ^ 1])
    expired = wire.Signer(os.urandom(32), clock=lambda: now - 200).seal(wire.Announce((), ttl_s=90))
    not_announce = good.seal(wire.Broadcast("hi"))
    me = wire.Signer(os.urandom(32), clock=lambda: now)
    mine = me.seal(wire.Announce((), ttl_s=90))
    accepted, refused = check_directory(wire.DirectoryReply((raw, forged, expired, not_announce, mine, b"junk")),
                                        me.peer_id, now)
    assert [e.sender for e in accepted] == [good.peer_id]
    assert sorted(refused) == sorted([wire.BAD_SIGNATURE, "expired", wire.SCHEMA, wire.MALFORMED])


# ------------------------------------------------------ announcer, fake time


def make_net(boot=None, **kw) -> GossipNetwork:
    ident = Identity(os.urandom(32))
    net = GossipNetwork(ident, ident.signer(), ["/ip4/127.0.0.1/tcp/0"], [boot] if boot else [],
                        announce_interval_s=kw.pop("announce_interval_s", 0.5), **kw)
    net.fetch_directory_soon()
    return net


async def test_announcer_repeats_on_change_rate_limited_else_each_refresh(autojump_clock):
    """Refresh 30 s, gap 3 s: announced at 0; a change of cards at 1 goes at
    3; changes at 4 and 4.5 go once, at 6, with the last cards; echoed 2, 6
    and 15 s after that (8, 14, 29). A change of load alone (at 35) is no
    change: it goes with the refresh at 59."""
    extra = {"cards": (card("e0", load=0),)}
    net = make_net(announce_interval_s=30, announce_min_gap_s=3, announce_extra=lambda: dict(extra))
    sent = []

    def publish(topic, message):
        c = message.cards[0]
        sent.append((round(trio.current_time(), 3), c.expert_id, c.load, message.ttl_s))
        return net.signer.seal(message)

    net.peers = lambda: [b"peer"]
    net._announce_heard = lambda wanted: wanted
    net.publish_nowait = publish
    async with trio.open_nursery() as nursery:
        nursery.start_soon(net._announcer)
        for at, expert_id, load in ((1.0, "e1", 0), (4.0, "e2", 0), (4.5, "e3", 0), (35.0, "e3", 7)):
            await trio.sleep_until(at)
            extra["cards"] = (card(expert_id, load=load),)
        await trio.sleep_until(60.0)
        nursery.cancel_scope.cancel()
    assert sent == [(0.0, "e0", 0, 360), (3.0, "e1", 0, 360), (6.0, "e3", 0, 360), (8.0, "e3", 0, 360),
                    (14.0, "e3", 0, 360), (29.0, "e3", 0, 360), (59.0, "e3", 7, 360)]


async def test_a_node_offering_only_its_addresses_refreshes_four_times_less_often(autojump_clock):
    """No expert, not a validator: nothing gossiped; its announcement is
    kept for the directory exchange at 0 (no echoes), then every 4 x 30 s,
    each true for 4 x 90 s; it exchanges directories with one peer every
    4 x 30 / 2 s."""
    net = make_net(announce_interval_s=30, announce_ttl_s=90, announce_min_gap_s=3, announce_extra=dict)
    kept, exchanged = [], []

    def publish(topic, message):
        raise AssertionError("a node offering only its addresses gossiped its announcement")

    keep = net._keep_own

    def keep_own(message):
        kept.append((round(trio.current_time(), 3), message.ttl_s))
        keep(message)

    async def fetch(most=0):
        exchanged.append((round(trio.current_time(), 3), most))
        net._directory = "done"

    net.peers = lambda: [b"peer"]
    net.publish_nowait = publish
    net._keep_own = keep_own
    net._fetch_directory_from_peers = fetch
    async with trio.open_nursery() as nursery:
        net._nursery = nursery
        nursery.start_soon(net._announcer)
        await trio.sleep_until(299.0)
        nursery.cancel_scope.cancel()
    assert kept == [(0.0, 360), (120.0, 360), (240.0, 360)]
    assert exchanged == [(0.0, 0), (60.0, 1), (120.0, 1), (180.0, 1), (240.0, 1)]
    assert net.announces.get(net.peer_id).message.ttl_s == 360


# ------------------------------------------------------- real nodes, loopback


def addr_of(net: GossipNetwork) -> str:
    return net.listen_addrs[0]


class Collector:
    def __init__(self, net, topic):
        self.items = []
        net.on(topic, self.take)

    async def take(self, env):
        self.items.append(env)


async def test_twelve_nodes_keep_their_watermarks_and_gossip_reaches_all(nursery):
    marks = Watermarks(low=3, high=5, grace_s=1.0)
    nets, cols = [], []
    for i in range(12):
        net = make_net(addr_of(nets[0]) if nets else None, watermarks=marks, announce_interval_s=2.0)
        net.connector.trim_check_s = 0.5
        cols.append(Collector(net, topics.BROADCAST))
        await nursery.start(net.run)
        nets.append(net)

    def counts():
        return [len(n.peers()) for n in nets]

    # Settled: every node within 3..5 for 5 s in a row (a trim can push a peer
    # below low for a moment, and it dials again: go-libp2p's trimming churns alike).
    held_since = None
    with trio.move_on_after(120):
        while held_since is None or trio.current_time() - held_since < 5.0:
            await trio.sleep(0.25)
            if all(marks.low <= c <= marks.high for c in counts()):
                held_since = held_since or trio.current_time()
            else:
                held_since = None
    assert held_since is not None and trio.current_time() - held_since >= 5.0, counts()
    assert sum(n.connector.trimmed for n in nets) > 0  # node 0 had 11 peers at one point
    index = {n.peer_id: i for i, n in enumerate(nets)}
    reach, todo = {0}, [0]
    while todo:
        for p in nets[todo.pop()].peers():
            if index.get(p) is not None and index[p] not in reach:
                reach.add(index[p])
                todo.append(index[p])
    assert len(reach) == 12, f"the connection graph is split: {sorted(reach)} apart from the rest"
    await wait_for(lambda: all(n.mesh().get(topics.BROADCAST, 0) >= 1 for n in nets), 30, "gossip mesh")
    nets[7].publish_nowait(topics.BROADCAST, wire.Broadcast("to all"))
    await wait_for(lambda: all(len(c.items) == 1 for i, c in enumerate(cols) if i != 7), 30, "delivery to all 11")
    for n in nets:
        st = n.connections()
        assert st["low"] == 3 and st["high"] == 5 and marks.low <= st["count"] <= marks.high
        n.close()


async def test_a_joining_node_fetches_the_directory_instead_of_waiting(nursery):
    """Announcements repeat every 60 s here; a node that joins after the
    others announced knows their cards at once, from one peer's directory."""
    slow = dict(announce_interval_s=60.0, announce_min_gap_s=60.0)
    a = make_net(**slow)
    await nursery.start(a.run)
    b = make_net(addr_of(a), **slow, announce_extra=lambda: {"cards": (card("b-expert"),)})
    await nursery.start(b.run)
    await wait_for(lambda: a.announces.get(b.peer_id) is not None, 30, "b's announcement at a")
    await trio.sleep(6)  # past GossipSub's message cache (5 heartbeats): c cannot get it by gossip (IWANT)
    c = make_net(addr_of(a), **slow)
    directory = Directory()

    async def take(env):
        directory.take_announce(env, c.clock())

    c.on(topics.ANNOUNCE, take)
    with trio.fail_after(20):  # far less than the 60 s period
        await nursery.start(c.run)
        await wait_for(lambda: directory.get(b.peer_id, "b-expert") is not None, 20, "b's card at c")
    assert c.stats.received["directory"] >= 1
    assert c.stats.received[topics.ANNOUNCE] == 0  # none of it came by gossip
    for n in (a, b, c):
        n.close()


async def test_a_forged_or_oversized_directory_is_refused_and_counted(nursery):
    honest = wire.Signer(os.urandom(32))
    good = honest.seal(wire.Announce((), (card("h"),), ttl_s=90))
    forged = good[:-1] + bytes([good[-1] ^ 1])
    expired = wire.Signer(os.urandom(32), clock=lambda: time.time() - 300).seal(wire.Announce((), ttl_s=90))
    replies = []
    evil = make_net()

    async def serve(env):
        return replies.pop(0) if replies else wire.DirectoryReply(())

    evil.on_request(wire.DirectoryRequest.KIND, serve)
    await nursery.start(evil.run)
    me = make_net(addr_of(evil))
    heard = Collector(me, topics.ANNOUNCE)
    await nursery.start(me.run)
    await wait_for(lambda: me._directory == "done" and evil.peer_id in me.peers(), 30, "joined")

    # one forged and one expired entry among good ones: the good one is taken
    replies.append(wire.DirectoryReply((forged, expired, good)))
    assert await me.fetch_directory(evil.peer_id) == 1
    def from_honest():
        return [e for e in heard.items if e.sender == honest.peer_id]  # evil's own announcements come by gossip

    assert len(from_honest()) == 1
    assert me.stats.dropped["directory_bad_signature"] == 1
    assert me.stats.dropped["directory_expired"] == 1
    # an answer above the size bound: refused whole
    replies.append(wire.DirectoryReply(tuple(os.urandom(wire.MAX_ANNOUNCE_BYTES) for _ in range(10))))
    with pytest.raises(RpcFailed):
        await me.fetch_directory(evil.peer_id)
    # too many entries (within the frame): refused by the schema
    replies.append(wire.DirectoryReply((good,) * (wire.MAX_DIRECTORY_ENTRIES + 1)))
    with pytest.raises(RpcFailed):
        await me.fetch_directory(evil.peer_id)
    assert me.stats.dropped["directory_refused"] == 2
    assert me.stats.dropped_by_peer[wire.peer_id_str(evil.peer_id)] >= 3
    assert len(from_honest()) == 1
    for n in (evil, me):
        n.close()


def test_watermark_and_announce_settings_are_checked():
    from p2pnet.config import ConfigError, NodeConfig

    NodeConfig().validate()
    for bad in (dict(conn_low=0), dict(conn_low=9, conn_high=8), dict(announce_ttl_s=601),
                dict(announce_interval_s=50.0), dict(announce_min_gap_s=-1.0)):
        with pytest.raises(ConfigError):
            NodeConfig(**bad).validate()
