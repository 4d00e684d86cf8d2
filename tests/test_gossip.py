"""Real py-libp2p hosts over loopback, in one process: the gossip layer and a
test for each py-libp2p 0.8.1 trap it works around (see ../shared/notes)."""

import os

import multiaddr
import pytest
import trio

from p2pnet import wire
from p2pnet.gossip import topics
from p2pnet.gossip.errors import OutboxFull, RpcFailed
from p2pnet.gossip.network import GossipNetwork
from p2pnet.identity import Identity

from .conftest_net import wait_for


def make_net(boot=None, **kw) -> GossipNetwork:
    ident = Identity(os.urandom(32))
    return GossipNetwork(ident, ident.signer(), ["/ip4/127.0.0.1/tcp/0"], [boot] if boot else [],
                         announce_interval_s=kw.pop("announce_interval_s", 0.5), **kw)


def addr_of(net: GossipNetwork) -> str:
    return net.listen_addrs[0]


def hears(net: GossipNetwork, other: GossipNetwork, topic: str) -> bool:
    """``net`` knows that ``other`` takes ``topic`` (a node subscribes only to the
    topics it handles; one that publishes without taking a topic sends to those)."""
    return other.peer_id in {p.to_bytes() for p in net.pubsub.peer_topics.get(topic, ())}


class Collector:
    def __init__(self, net, topic=topics.BROADCAST):
        self.items = []
        net.on(topic, self.take)

    async def take(self, env):
        self.items.append(env)

    def texts(self):
        return [e.message.text for e in self.items]


async def start_swarm(nursery, n, **kw):
    nets, cols = [], []
    for i in range(n):
        net = make_net(addr_of(nets[0]) if nets else None, **kw)
        cols.append(Collector(net))
        await nursery.start(net.run)
        nets.append(net)
    await wait_for(lambda: all(len(x.peers()) == n - 1 for x in nets), 30, "full mesh")
    await wait_for(lambda: all(x.mesh().get(topics.BROADCAST, 0) >= 1 for x in nets), 30, "gossip mesh")
    return nets, cols


async def test_star_becomes_mesh_and_delivery_is_exactly_once(nursery):
    nets, cols = await start_swarm(nursery, 4)  # 1..3 dial only node 0: peer exchange meshes them
    for i in range(30):
        nets[2].publish_nowait(topics.BROADCAST, wire.Broadcast(f"m{i}"))
    want = [f"m{i}" for i in range(30)]
    await wait_for(lambda: all(len(cols[i].items) >= 30 for i in (0, 1, 3)), 30, "delivery")
    for i in (0, 1, 3):
        assert sorted(cols[i].texts(), key=lambda t: int(t[1:])) == want  # each once, none lost
    assert cols[2].items == []  # own messages are not delivered back
    for net in nets:
        net.close()


async def test_trap1_trap4_burst_beyond_spam_limit_and_peer_queue(nursery):
    """200 back-to-back publishes: py-libp2p's default spam limit (10/s) and its
    32-deep per-peer queue would drop most; the paced outbox delivers all."""
    nets, cols = await start_swarm(nursery, 3)
    for i in range(200):
        nets[0].publish_nowait(topics.BROADCAST, wire.Broadcast(str(i)))
    await wait_for(lambda: len(cols[1].items) >= 200 and len(cols[2].items) >= 200, 60, "burst delivery")
    assert sorted(map(int, cols[1].texts())) == list(range(200))
    assert sorted(map(int, cols[2].texts())) == list(range(200))
    assert nets[0].stats.dropped == {}
    for net in nets:
        net.close()


async def test_trap2_heartbeat_is_fixed_at_one_second(nursery):
    nets, _ = await start_swarm(nursery, 2)
    gs = nets[0].gossipsub
    assert gs.heartbeat_interval == 1
    assert gs.adaptive_gossip_enabled is False
    assert gs.spam_protection_enabled is False
    for net in nets:
        net.close()


async def test_trap3_dial_at_once_after_start(nursery):
    """A peer dialling the moment we listen must not kill the node (pubsub runs first)."""
    a = make_net()
    col = Collector(a)
    await nursery.start(a.run)
    b = make_net(addr_of(a))
    await nursery.start(b.run)
    await wait_for(lambda: hears(b, a, topics.BROADCAST), 30, "a's subscription")
    b.publish_nowait(topics.BROADCAST, wire.Broadcast("alive"))
    await wait_for(lambda: col.texts() == ["alive"], 30, "delivery")
    a.close()
    b.close()


async def test_outbox_is_bounded_and_says_busy():
    net = make_net(outbox_size=4)
    for i in range(4):
        net.publish_nowait(topics.BROADCAST, wire.Broadcast(str(i)))
    with pytest.raises(OutboxFull):
        net.publish_nowait(topics.BROADCAST, wire.Broadcast("one too many"))
    assert net.stats.dropped["outbox_full"] == 1


async def test_trap5_linger_flushes_on_shutdown(nursery):
    nets, cols = await start_swarm(nursery, 2)
    done = trio.Event()

    async def run_and_stop():
        for i in range(100):
            nets[0].publish_nowait(topics.BROADCAST, wire.Broadcast(str(i)))
        nets[0].close()  # right away, with the outbox full
        done.set()

    nursery.start_soon(run_and_stop)
    await done.wait()
    await wait_for(lambda: len(cols[1].items) >= 100, 30, "flushed delivery")
    assert sorted(map(int, cols[1].texts())) == list(range(100))
    await wait_for(lambda: nets[0].flush_result is not None, 30, "shutdown flush")
    assert nets[0].flush_result == (1, 1)  # the peer confirmed our last message before we stopped
    nets[1].close()


async def test_flush_request_waits_for_the_named_message(autojump_clock):
    """A peer that is shutting down asks "have you got my message seq?"; the
    answer waits (bounded) for that message to pass the validator."""
    net = make_net(flush_wait_s=2.0)
    sender = wire.Signer(os.urandom(32))
    gossip = wire.open_envelope(sender.seal(wire.Broadcast("last")))
    ask = wire.open_envelope(sender.seal(wire.Flush(gossip.seq)))
    reply = await net._serve_flush(ask)
    assert reply == wire.Ack("not_seen")
    seen_at = []

    async def answer():
        seen_at.append(await net._serve_flush(ask))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(answer)
        await trio.sleep(0.5)
        assert seen_at == []  # still waiting
        net.guard.check(gossip, gossip.ts_ms)
    assert seen_at == [wire.Ack("seen")]


async def test_trap6_plaintext_dialer_is_refused(nursery):
    from libp2p import new_host
    from libp2p.crypto.ed25519 import create_new_key_pair
    from libp2p.peer.peerinfo import info_from_p2p_addr
    from libp2p.security.insecure.transport import PLAINTEXT_PROTOCOL_ID, InsecureTransport

    a = make_net()
    await nursery.start(a.run)
    kp = create_new_key_pair()
    la = [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]
    plain = new_host(key_pair=kp, sec_opt={PLAINTEXT_PROTOCOL_ID: InsecureTransport(kp)}, listen_addrs=la)
    async with plain.run(listen_addrs=la):
        with pytest.raises(Exception):
            with trio.fail_after(20):
                await plain.connect(info_from_p2p_addr(multiaddr.Multiaddr(addr_of(a))))
        assert plain.get_connected_peers() == []
    assert a.peers() == []
    a.close()


async def test_forged_and_malformed_messages_are_dropped_counted_and_peer_banned(nursery):
    a = make_net()
    col = Collector(a)
    await nursery.start(a.run)
    evil = make_net(addr_of(a))
    Collector(evil)  # evil takes the topic too, so a is in its mesh: each message reaches a once,
    # not again through IHAVE/IWANT gossip (a rejected message is not remembered as seen)
    await nursery.start(evil.run)
    await wait_for(lambda: evil.mesh().get(topics.BROADCAST, 0) >= 1, 30, "mesh")

    good = evil.signer.seal(wire.Broadcast("genuine"))
    forged = bytearray(evil.signer.seal(wire.Broadcast("forged")))
    forged[-3] ^= 0xFF  # break the Ed25519 signature
    await evil.pubsub.publish(topics.BROADCAST, bytes(forged))
    await evil.pubsub.publish(topics.BROADCAST, b"\xc1 not msgpack")
    await evil.pubsub.publish(topics.BROADCAST, evil.signer.seal(wire.Cancel(os.urandom(16))))  # wrong topic
    await evil.pubsub.publish(topics.BROADCAST, good)
    await wait_for(lambda: col.texts() == ["genuine"], 30, "the genuine message")
    dropped = a.stats.dropped
    assert dropped[wire.BAD_SIGNATURE] == 1 and dropped[wire.MALFORMED] == 1 and dropped[wire.SCHEMA] == 1
    assert a.stats.dropped_by_peer[wire.peer_id_str(evil.peer_id)] == 3

    # keep sending junk: past the strike limit the peer is disconnected and banned
    # (one at a time: py-libp2p drops a burst past its 32-deep peer queue)
    for i in range(a.penalties.limit - 3):
        before = a.stats.dropped[wire.MALFORMED]
        await evil.pubsub.publish(topics.BROADCAST, b"junk %d" % i)
        await wait_for(lambda: a.stats.dropped[wire.MALFORMED] > before, 30, "junk to arrive")
    await wait_for(lambda: a.stats.disconnected_for_abuse == 1, 30, "disconnect")
    await wait_for(lambda: evil.peer_id not in a.peers(), 30, "peer gone")
    assert a.penalties.is_banned(evil.peer_id, a.clock())
    assert col.texts() == ["genuine"]
    a.close()
    evil.close()


async def test_replayed_envelope_is_dropped_by_the_topic_validator():
    """GossipSub's own dedup forgets messages after its seen-TTL; then the
    envelope's (sender, seq) replay guard must catch a re-sent copy."""
    from libp2p.peer.id import ID
    from libp2p.pubsub.pb import rpc_pb2

    a, b = make_net(), make_net()
    validate = a._make_validator(topics.BROADCAST)
    raw = b.signer.seal(wire.Broadcast("once"))
    msg = rpc_pb2.Message(from_id=b.peer_id, data=raw, seqno=b"\0" * 8, topicIDs=[topics.BROADCAST])
    assert validate(ID(b.peer_id), msg) is True
    assert validate(ID(b.peer_id), msg) is False
    assert a.stats.dropped[wire.REPLAYED] == 1
    # a third peer re-publishing b's envelope under its own name is refused too
    c = make_net()
    stolen = rpc_pb2.Message(from_id=c.peer_id, data=raw, seqno=b"\1" * 8, topicIDs=[topics.BROADCAST])
    assert validate(ID(c.peer_id), stolen) is False
    assert a.stats.dropped[wire.BAD_SIGNATURE] == 1


async def test_direct_request_response(nursery):
    a, b = make_net(), None
    await nursery.start(a.run)
    b = make_net(addr_of(a))
    await nursery.start(b.run)
    await wait_for(lambda: a.peers(), 30, "connection")

    async def echo(env):
        return wire.Broadcast("echo:" + env.message.text)

    a.on_request(wire.Broadcast.KIND, echo)
    reply = await b.request(a.peer_id, wire.Broadcast("hi"))
    assert reply == wire.Broadcast("echo:hi")
    with pytest.raises(RpcFailed) as exc:
        await b.request(a.peer_id, wire.Cancel(os.urandom(16)))
    assert exc.value.code == "unsupported"
    a.close()
    b.close()


async def test_publishing_after_shutdown_began_says_busy(nursery):
    net = make_net()
    await nursery.start(net.run)
    net.close()
    with pytest.raises(OutboxFull):
        net.publish_nowait(topics.BROADCAST, wire.Broadcast("late"))
    await wait_for(lambda: net._outbox_send.statistics().open_send_channels == 0, 30, "the outbox to close")
    with pytest.raises(OutboxFull):
        net.publish_raw_nowait(topics.BROADCAST, net.signer.seal(wire.Broadcast("late")))
    with pytest.raises(OutboxFull):
        await net.publish(topics.BROADCAST, wire.Broadcast("late"))


async def test_an_aged_rating_is_gossiped_inside_a_fresh_tx(nursery):
    """A rating queued across a restart is older than receivers accept. Sent
    bare it is dropped as stale (and counts against its sender); the ledger
    service re-stamps it by wrapping it in a wire.Tx of its own node, which
    leaves the rating itself, and so its nonce, untouched."""
    from p2pnet.ledger_service import TX_WRAP_AGE_MS, _Net

    a = make_net()
    got = Collector(a, topics.TXS)
    await nursery.start(a.run)
    b = make_net(addr_of(a))
    await nursery.start(b.run)
    await wait_for(lambda: hears(b, a, topics.TXS), 30, "a's subscription")

    def rating(ts_ms):
        return b.signer.seal(wire.Rating(query_hash=os.urandom(32), respondent=a.peer_id, expert_id="e",
                                         domain="trivia", answer_hash=os.urandom(32), score=1.0), ts_ms=ts_ms)

    now_ms = int(b.clock() * 1000)
    stale = rating(now_ms - 3 * wire.MAX_STALENESS_MS)
    b.publish_raw_nowait(topics.TXS, stale)  # what the node did before
    await wait_for(lambda: a.stats.dropped[wire.STALE] == 1, 30, "the bare stale rating to be dropped")
    aged = rating(now_ms - 3 * wire.MAX_STALENESS_MS)
    fresh = rating(now_ms)
    assert now_ms - wire.open_envelope(aged).ts_ms > TX_WRAP_AGE_MS
    await _Net(b).publish_tx(aged)
    await _Net(b).publish_tx(fresh)
    await wait_for(lambda: len(got.items) == 2, 30, "both ratings")
    wrapped, bare = sorted(got.items, key=lambda env: env.kind != wire.Tx.KIND)
    assert wrapped.kind == wire.Tx.KIND and wrapped.message.envelope == aged
    assert bare.kind == wire.Rating.KIND and bare.raw == fresh
    assert a.stats.dropped[wire.STALE] == 1 and sum(a.stats.dropped.values()) == 1
    a.close()
    b.close()
