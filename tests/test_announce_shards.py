"""Issue 21, item 2: experts' announcements sharded by domain.

An expert's announcement goes on the announce shard of each of its domains,
taken by the experts of that domain and the coordinators asking in it
(p2pnet/gossip/shards.py); every other node learns the card by the directory
exchange. Pure parts run alone; the rest runs real py-libp2p hosts over
loopback in one process."""

import os
import types

from p2pnet import wire
from p2pnet.gossip import topics
from p2pnet.gossip.network import GossipNetwork
from p2pnet.gossip.shards import MAX_SHARDS_PER_ANNOUNCE, ShardInterest, announce_topics
from p2pnet.identity import Identity

from .conftest_net import wait_for

MATH, LAW = topics.announce_shard("math"), topics.announce_shard("law")


def card(expert_id="e1", domains=("general",)):
    return wire.ModelCard(expert_id=expert_id, model="m", sha256="00" * 32, quantization="q4", n_ctx=2048,
                          domains=domains, prompt_tps=100.0, gen_tps=10.0, price_per_1k=0.1, load=0,
                          max_concurrency=1)


def make_net(boot=None, cards=(), **kw):
    ident = Identity(os.urandom(32))
    net = GossipNetwork(ident, ident.signer(), ["/ip4/127.0.0.1/tcp/0"], [boot] if boot else [],
                        announce_interval_s=kw.pop("announce_interval_s", 5.0),
                        announce_min_gap_s=kw.pop("announce_min_gap_s", 1.0),
                        announce_extra=lambda: {"cards": tuple(cards)}, **kw)
    net.fetch_directory_soon()
    return net


def boot_of(net) -> str:
    return net.listen_addrs[0] + f"/p2p/{wire.peer_id_str(net.peer_id)}"


def takers(net, topic) -> set:
    return {p.to_bytes() for p in net.pubsub.peer_topics.get(topic, ())}


def pubsub_up(net, other) -> bool:
    """``net``'s pubsub stream to ``other`` is registered. py-libp2p 0.8.1 builds
    the hello (our topics) before it registers a new peer, and a subscription
    made between the two reaches neither: a test that joins a shard waits for
    this first (the node's coordinators do not join shards by default)."""
    return any(p.to_bytes() == other.peer_id for p in net.pubsub.peers)


# ------------------------------------------------------------------ pure


def test_an_announcement_goes_on_its_domains_shards_a_validators_on_the_global_topic():
    assert announce_topics(wire.Announce(addrs=("/ip4/1.2.3.4/tcp/1",))) == ()
    assert announce_topics(wire.Announce(addrs=(), validator=True)) == (topics.ANNOUNCE,)
    two = wire.Announce(addrs=(), cards=(card("a", ("math", "law")), card("b", ("math",))))
    assert announce_topics(two) == (LAW, MATH)
    both = wire.Announce(addrs=(), cards=(card("a", ("math",)),), validator=True)
    assert announce_topics(both) == (topics.ANNOUNCE, MATH)
    many = wire.Announce(addrs=(), cards=(card("a", tuple(f"d{i:02}" for i in range(32))),))
    assert len(announce_topics(many)) == MAX_SHARDS_PER_ANNOUNCE
    assert topics.is_announce(MATH) and topics.is_announce(topics.ANNOUNCE)
    assert not topics.is_announce(topics.QUERIES)
    assert topics.shard_domain(MATH) == "math" and topics.shard_domain(topics.ANNOUNCE) == ""


def test_a_shard_is_wanted_from_the_first_ask_until_idle_and_always_for_own_domains():
    s = ShardInterest(idle_s=600.0)
    assert s.wanted(0.0, mine=("law",)) == {LAW}
    assert s.ask("math", 10.0)  # first ask: join
    assert not s.ask("math", 300.0)  # asked again: already in
    assert s.wanted(899.0) == {MATH}
    assert s.wanted(900.0) == set()  # 600 s after the last ask: leave
    assert s.ask("math", 901.0)  # a new ask joins again
    assert not s.ask("", 0.0) and not s.ask("x" * 65, 0.0)
    off = ShardInterest()  # the default: a coordinator does not join what it asks in
    assert not off.ask("math", 0.0) and off.wanted(1.0, mine=("law",)) == {LAW}
    small = ShardInterest(idle_s=60.0, max_asked=2)
    for i, d in enumerate(("a", "b", "c")):
        small.ask(d, float(i))
    assert small.asked(3.0) == {"b", "c"}  # bounded: the least recent forgotten


async def test_the_coordinator_joins_the_shard_it_asks_in_and_generals_when_they_stand_in():
    from p2pnet.experts.coordinator import Coordinator
    from p2pnet.experts.directory import ExpertRef

    asked = []
    fake = types.SimpleNamespace(network=types.SimpleNamespace(ask_domain=asked.append))
    specialist = ExpertRef(b"p" * 34, card("s", ("math",)), 0.0)
    general = ExpertRef(b"q" * 34, card("g", ("general",)), 0.0)
    Coordinator._join_shards(types.SimpleNamespace(node=fake), "math", [specialist])
    Coordinator._join_shards(types.SimpleNamespace(node=fake), "law", [general])
    Coordinator._join_shards(types.SimpleNamespace(node=fake), "", [general])
    assert asked == ["math", "law", "general"]


# --------------------------------------------------------- real hosts


async def test_an_experts_announcement_reaches_its_domain_and_askers_only(nursery):
    """a and b serve math, c law, q nothing, k is a coordinator that asked in
    math; all connected to each other. Math announcements reach b and k by
    gossip, never q or c (their pubsub counters for the shards stay at 0).
    a's first announcement and its echoes (a change) also go on the global
    topic, so q and c hold a's card at once; a's unchanged refreshes reach
    only the shard."""
    a = make_net(cards=(card("a", ("math",)),))
    await nursery.start(a.run)
    b = make_net(boot_of(a), cards=(card("b", ("math",)),))
    c = make_net(boot_of(a), cards=(card("c", ("law",)),))
    q = make_net(boot_of(a))
    k = make_net(boot_of(a), shard_idle_s=600.0)
    nets = (a, b, c, q, k)
    for n in nets[1:]:
        await nursery.start(n.run)
    await wait_for(lambda: pubsub_up(k, a), 30, "k's pubsub stream to a")
    k.ask_domain("math")
    await wait_for(lambda: all(len(n.peers()) == 4 for n in nets), 60, "every node connected to the four others")
    await wait_for(lambda: {b.peer_id, k.peer_id} <= takers(a, MATH), 30, "b and k in a's view of the math shard")
    await wait_for(lambda: k.stats.received[MATH] >= 2 and b.stats.received[MATH] >= 1, 60,
                   "math announcements at b and k by gossip")
    await wait_for(lambda: all(n.announces.get(a.peer_id) is not None for n in (c, q)), 60,
                   "a's card at c and q")
    assert sorted(t for t in q.subscribed() if topics.is_announce(t)) == [topics.ANNOUNCE]
    assert sorted(t for t in c.subscribed() if topics.is_announce(t)) == [topics.ANNOUNCE, LAW]
    assert q.peer_id not in takers(a, MATH) and c.peer_id not in takers(a, MATH)
    for n in (q, c):  # nothing on the math shard
        assert n.stats.received[MATH] == 0
        assert n.stats.dropped["undecoded"] == 0
    assert q.stats.received[LAW] == 0 and a.stats.received[LAW] == 0 and k.stats.received[LAW] == 0
    assert q.announces.get(a.peer_id).message.cards[0].expert_id == "a"
    # the change (a's first announcement and its echoes) went on the global topic too, and no more
    await wait_for(lambda: not any(n.schedule.echoing for n in (a, b, c)), 60, "the experts' echoes over")
    assert a.stats.sent[topics.ANNOUNCE] == 1 + len(a.schedule.echoes_s)
    heard = {n.peer_id: n.stats.received[topics.ANNOUNCE] for n in (q, c)}
    assert heard[q.peer_id] >= 1  # q takes no shard: it heard the experts' changes on the global topic
    sent = a.stats.sent[MATH]
    await wait_for(lambda: a.stats.sent[MATH] >= sent + 2, 60, "two unchanged refreshes of a")
    assert a.stats.sent[topics.ANNOUNCE] == 1 + len(a.schedule.echoes_s)  # refreshes: the shard only
    assert {n.peer_id: n.stats.received[topics.ANNOUNCE] for n in (q, c)} == heard
    for n in nets:
        n.close()


async def test_a_coordinator_leaves_a_shard_it_stopped_asking_in(nursery):
    """k asks in math once: it takes the shard (a sees it join), and leaves it
    once it has not asked there for ``shard_idle_s`` (a sees it leave);
    another ask takes it again."""
    a = make_net(cards=(card("a", ("math",)),))
    await nursery.start(a.run)
    k = make_net(boot_of(a), shard_idle_s=2.0, announce_poll_s=0.2)
    await nursery.start(k.run)
    await wait_for(lambda: a.peer_id in k.peers() and pubsub_up(k, a), 30, "k connected to a, pubsub up")
    assert MATH not in k.subscribed()
    k.ask_domain("math")
    await wait_for(lambda: k.peer_id in takers(a, MATH), 30, "k in the math shard, seen from a")
    assert MATH in k.subscribed()
    await wait_for(lambda: k.peer_id not in takers(a, MATH), 30, "k out of the math shard, seen from a")
    assert MATH not in k.subscribed()
    k.ask_domain("math")
    await wait_for(lambda: k.peer_id in takers(a, MATH), 30, "k back in the math shard")
    for n in (a, k):
        n.close()


async def test_an_expert_of_two_domains_sends_one_message_on_both_shards(nursery):
    """a serves math and law: its announcement is one message on both
    shards. b, on both, takes each once (no replay refused, nothing struck);
    k, asking in law only, takes it too; q, on neither, does not."""
    a = make_net(cards=(card("a", ("math", "law")),))
    await nursery.start(a.run)
    b = make_net(boot_of(a), cards=(card("b", ("law", "math")),))
    k = make_net(boot_of(a), shard_idle_s=600.0)
    q = make_net(boot_of(a))
    nets = (a, b, k, q)
    for n in nets[1:]:
        await nursery.start(n.run)
    await wait_for(lambda: pubsub_up(k, a), 30, "k's pubsub stream to a")
    k.ask_domain("law")
    await wait_for(lambda: all(len(n.peers()) == 3 for n in nets), 60, "every node connected to the three others")
    await wait_for(lambda: {b.peer_id, k.peer_id} <= takers(a, LAW), 30, "b and k in a's view of the law shard")
    await wait_for(lambda: a.stats.sent[LAW] >= 2 and k.stats.received[LAW] >= 2, 60, "a's announcements at k")
    assert a.stats.sent[MATH] >= 1
    assert b.stats.received[LAW] + b.stats.received[MATH] + b.stats.received[topics.ANNOUNCE] >= 2
    for n in nets:  # the copy on the second shard is neither a replay nor a message without a check
        assert all(n.stats.dropped[r] == 0 for r in (wire.REPLAYED, wire.SCHEMA, "undecoded")), n.stats.dropped
    assert q.stats.received[LAW] == 0 and q.stats.received[MATH] == 0
    await wait_for(lambda: q.announces.get(a.peer_id) is not None, 60, "a's card at q (its change, globally)")
    for n in nets:
        n.close()


def test_the_simulators_accounting_follows_the_shards():
    """sim/net.py counts an announcement where the node would deliver it: a
    validator's at every other peer; an expert's once at each other expert of
    its domains and each coordinator that asked there in the last 10 min."""
    from p2pnet.sim.net import AnnounceLayout

    layout = AnnounceLayout(idle_s=600.0)
    a, b, c, k = b"a" * 34, b"b" * 34, b"c" * 34, b"k" * 34
    layout.expert(a, ("math", "law"))
    layout.expert(b, ("math",))
    layout.expert(c, ("code",))
    layout.ask(k, "law", 0.0)
    two = wire.Announce(addrs=(), cards=(card("a", ("math", "law")),))
    assert layout.deliveries(a, two, 10.0, peers=100) == 2  # b (math) and k (law), each once
    assert layout.deliveries(a, two, 600.0, peers=100) == 1  # k stopped asking 10 min ago
    assert layout.deliveries(c, wire.Announce(addrs=(), cards=(card("c", ("code",)),)), 0.0, peers=100) == 0
    assert layout.deliveries(c, wire.Announce(addrs=(), validator=True), 0.0, peers=100) == 99
    assert layout.deliveries(k, wire.Announce(addrs=("/ip4/1.2.3.4/tcp/1",)), 0.0, peers=100) == 0
    default = AnnounceLayout()  # the node's default: coordinators join no shard
    default.expert(a, ("math", "law"))
    default.ask(k, "law", 0.0)
    assert default.deliveries(a, two, 10.0, peers=100) == 0
