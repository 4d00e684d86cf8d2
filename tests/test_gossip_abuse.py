"""Abuse that py-libp2p 0.8.1 used to refuse before the node saw it (issue 22,
items 2-4): real py-libp2p hosts on loopback, a hostile peer writing
hand-made GossipSub RPCs (tests/hostile.py)."""

import os

import pytest
import trio

from p2pnet import wire
from p2pnet.gossip import topics
from p2pnet.gossip.host import GossipParams, message_id
from p2pnet.identity import Identity

from .conftest_net import wait_for
from .hostile import HostilePeer, frame, rpc_bytes, signed_gossip
from .test_gossip import Collector, addr_of, make_net


async def _node_with_hostiles(nursery, n_hostile, **kw):
    net = make_net(**kw)
    col = Collector(net)
    await nursery.start(net.run)
    node_addr = f"{addr_of(net)}/p2p/{wire.peer_id_str(net.peer_id)}" if "/p2p/" not in addr_of(net) else addr_of(net)
    hostiles = []
    for _ in range(n_hostile):
        h = HostilePeer()
        await nursery.start(h.run)
        await h.connect(node_addr)
        hostiles.append(h)
    return net, col, hostiles


def _count(net, peer: bytes) -> int:
    return net.stats.dropped_by_peer.get(wire.peer_id_str(peer), 0)


async def test_the_same_junk_from_three_peers_is_counted_and_struck_for_each(nursery):
    net, _col, (a, b, c) = await _node_with_hostiles(nursery, 3)
    node = net.peer_id
    junk = a.gossip(topics.BROADCAST, b"\x93not an envelope")
    for sender in (a, b, c):  # b and c relay a's message byte for byte
        await sender.send(node, frame(rpc_bytes(junk)))
    await wait_for(lambda: all(_count(net, h.peer_id) == 1 for h in (a, b, c)), 30, "one drop per sender")
    # replaying the known-bad message costs each sender a strike every time, up to a ban
    for _ in range(net.penalties.limit):
        for sender in (b, c):
            await sender.send(node, frame(rpc_bytes(junk)))
    await wait_for(lambda: {wire.peer_id_str(b.peer_id), wire.peer_id_str(c.peer_id)}
                   <= {wire.peer_id_str(p) for p in net.penalties.banned(net.clock())}, 30, "b and c banned")
    assert wire.peer_id_str(a.peer_id) not in {wire.peer_id_str(p) for p in net.penalties.banned(net.clock())}
    assert net.stats.dropped[wire.MALFORMED] >= 2 * net.penalties.limit + 1


async def test_a_banned_forwarder_does_not_poison_the_honest_copy(nursery):
    net, col, (bad, honest) = await _node_with_hostiles(nursery, 2)
    node = net.peer_id
    origin = Identity(os.urandom(32))  # a genuine publisher that is not even connected
    envelope = origin.signer().seal(wire.Broadcast("genuine"))
    msg = signed_gossip(origin, topics.BROADCAST, envelope, 7)
    net.penalties.ban(bad.peer_id, net.clock())  # banned, still connected
    await bad.send(node, frame(rpc_bytes(msg)))
    await wait_for(lambda: net.stats.dropped.get("banned", 0) >= 1, 30, "the banned copy refused")
    await honest.send(node, frame(rpc_bytes(msg)))
    await wait_for(lambda: col.texts() == ["genuine"], 30, "the honest copy delivered")
    assert _count(net, honest.peer_id) == 0


async def test_a_replayed_envelope_is_the_origins_fault_not_the_forwarders(nursery):
    net, col, (origin, relay) = await _node_with_hostiles(nursery, 2)
    node = net.peer_id
    envelope = origin.envelope(wire.Broadcast("once"))
    await origin.send(node, frame(rpc_bytes(origin.gossip(topics.BROADCAST, envelope))))
    await wait_for(lambda: col.texts() == ["once"], 30, "first copy delivered")
    # the origin re-publishes the same envelope under a new seqno; an honest relay passes it on
    again = origin.gossip(topics.BROADCAST, envelope)
    await relay.send(node, frame(rpc_bytes(again)))
    await wait_for(lambda: _count(net, origin.peer_id) == 1, 30, "the replay counted against its origin")
    assert _count(net, relay.peer_id) == 0 and col.texts() == ["once"]


async def test_oversized_rpcs_are_counted_and_lead_to_a_ban(nursery):
    net, _col, (h,) = await _node_with_hostiles(nursery, 1)
    node = net.peer_id
    from libp2p.utils.varint import encode_uvarint

    too_big = encode_uvarint(net.pubsub.max_inbound_rpc_size + 1) + b"\0" * 64
    sent = 0
    while not net.penalties.is_banned(h.peer_id, net.clock()) and sent < 3 * net.penalties.limit:
        h.drop_streams()  # the node resets the stream after each one
        try:
            await h.send(node, too_big)
        except Exception:
            break  # banned and disconnected
        sent += 1
        await wait_for(lambda: net.stats.dropped.get("oversized", 0) >= sent, 30, f"oversize {sent} counted")
    assert net.penalties.is_banned(h.peer_id, net.clock())
    assert net.stats.dropped["oversized"] == net.penalties.limit == _count(net, h.peer_id)


async def test_bad_gossipsub_signatures_are_counted(nursery):
    net, _col, (h,) = await _node_with_hostiles(nursery, 1)
    msg = h.gossip(topics.BROADCAST, h.envelope(wire.Broadcast("x")))
    msg.data = msg.data + b"!"  # the GossipSub signature no longer verifies
    await h.send(net.peer_id, frame(rpc_bytes(msg)))
    await wait_for(lambda: _count(net, h.peer_id) == 1, 30, "counted")
    assert net.stats.dropped[wire.BAD_SIGNATURE] == 1


def js_spec_msg_id(msg) -> bytes:
    """js-libp2p gossipsub's "spec" message id rule for StrictSign (go-libp2p's
    default), written from the GossipSub spec: the publisher's peer id
    (multihash bytes) then its seqno. scripts/interop checks it against a
    real js-libp2p peer."""
    return bytes(msg.from_id) + bytes(msg.seqno)


async def test_message_ids_are_the_spec_ids_a_js_peer_computes(nursery):
    receiver = make_net()
    col = Collector(receiver)
    seen_ids = []
    orig = receiver._make_validator

    def spy(topic):
        inner = orig(topic)

        def validate(fwd, msg):
            ok = inner(fwd, msg)
            if ok and topic == topics.BROADCAST:
                seen_ids.append((message_id(msg), js_spec_msg_id(msg)))
            return ok
        return validate

    receiver._make_validator = spy
    await nursery.start(receiver.run)
    pub = make_net(f"{addr_of(receiver)}")
    await nursery.start(pub.run)
    await wait_for(lambda: any(p.to_bytes() == receiver.peer_id
                               for p in pub.pubsub.peer_topics.get(topics.BROADCAST, ())),
                   30, "the publisher to know the receiver's subscription")
    for i in range(10):
        await pub.publish(topics.BROADCAST, wire.Broadcast(f"m{i}"))
    await wait_for(lambda: len(col.items) >= 10, 30, "delivery")
    assert len(seen_ids) == 10 and all(ours == js for ours, js in seen_ids)


def test_a_restarted_node_never_reuses_a_seqno(tmp_path):
    """With the spec id, a (from, seqno) pair reused within the seen-cache
    window would be dropped as a duplicate. py-libp2p starts seqnos at whole
    seconds, one per message: a node that sent 1,000 messages and restarted
    at once reused 1,000 of them."""
    from p2pnet.gossip.host import GossipParams, build_stack

    ident = Identity(os.urandom(32))
    last = None
    for _run in range(3):
        _host, pubsub, _gs = build_stack(ident, ["/ip4/127.0.0.1/tcp/0"], GossipParams(),
                                         on_reject=lambda *a: None, is_banned=lambda p: False)
        first = int.from_bytes(pubsub._next_seqno(), "big")
        if last is not None:
            assert first > last
        for _ in range(1000):
            last = int.from_bytes(pubsub._next_seqno(), "big")


@pytest.mark.parametrize("limit", [4, GossipParams().max_inflight])
async def test_a_flood_of_valid_messages_is_held_in_tcp_not_in_tasks(nursery, limit):
    """Trap 7: py-libp2p starts a task per received message, without limit.
    With ``max_inflight`` the node stops reading a stream while that many run,
    so at most one more RPC's worth is ever started, and nothing is lost (at
    the default bound, hundreds finish at once: py-libp2p's 32-slot
    subscription channels dropped most of them)."""
    per_rpc, rpcs = 10, 40
    net, col, (h,) = await _node_with_hostiles(nursery, 1, params=GossipParams(max_inflight=limit))
    seen_max = []
    orig = net.pubsub._is_subscribed_to_msg

    def spy(msg):
        ok = orig(msg)
        seen_max.append(net.pubsub.inflight)
        return ok

    net.pubsub._is_subscribed_to_msg = spy
    # a validator that takes its time, as a busy node's does: without the
    # bound, every message read would have a task waiting in it
    sync_validate = net._make_validator(topics.BROADCAST)

    async def slow_validate(fwd, msg):
        await trio.sleep(0.01)
        return sync_validate(fwd, msg)

    net.pubsub.set_topic_validator(topics.BROADCAST, slow_validate, True)
    batch = b""
    for r in range(rpcs):
        msgs = [h.gossip(topics.BROADCAST, h.envelope(wire.Broadcast(f"{r}-{i}"))) for i in range(per_rpc)]
        batch += frame(rpc_bytes(*msgs))
    await h.send(net.peer_id, batch)  # all of it at once
    await wait_for(lambda: len(col.items) == rpcs * per_rpc, 60, "every message delivered")
    assert max(seen_max) <= limit + per_rpc
    if limit < per_rpc:
        assert net.pubsub.throttled > 0  # the stream did wait for room
    assert net.pubsub.inflight == 0
