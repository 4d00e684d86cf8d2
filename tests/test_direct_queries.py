"""Issue 21, items 1 and 4: a query reaches only its respondents (over the
direct query stream, dialling a respondent that is not connected), bad direct
messages are dropped and counted, and only the nodes that keep the ledger take
its traffic. Real py-libp2p hosts and real nodes over loopback, in one process."""

import os
import time

import trio
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID

from p2pnet import config, sealing, wire
from p2pnet.consensus.genesis import Params, generate_genesis
from p2pnet.experts import scripted
from p2pnet.experts.expert import Expert
from p2pnet.gossip import rpc, topics
from p2pnet.gossip.direct import EarlyCancels, split_query
from p2pnet.gossip.network import GossipNetwork
from p2pnet.gossip.policy import Watermarks
from p2pnet.identity import Identity, load_or_create
from p2pnet.node import Node

from .conftest_net import wait_for

QUESTION = "What is the capital of France?"


def make_net(boot=None, **kw) -> GossipNetwork:
    ident = Identity(os.urandom(32))
    return GossipNetwork(ident, ident.signer(), ["/ip4/127.0.0.1/tcp/0"], [boot] if boot else [],
                         announce_interval_s=0.5, **kw)


def query_to(net_from: GossipNetwork, *recipients: GossipNetwork) -> wire.Query:
    return wire.Query(query_id=os.urandom(16), domain="general", deadline_ms=int((time.time() + 60) * 1000),
                      prompts=tuple(wire.SealedPrompt(r.peer_id, "e1", sealing.seal(net_from.identity, r.peer_id, b"hi"))
                                    for r in recipients))


class Taker:
    """Serves direct queries and cancels on ``net``; remembers them."""

    def __init__(self, net):
        self.got = []
        net.on_request(wire.Query.KIND, self.take)
        net.on_request(wire.Cancel.KIND, self.take)

    async def take(self, env):
        self.got.append(env.message)
        return wire.Ack()


def test_a_query_is_split_so_each_respondent_sees_only_its_own_prompt():
    a, b, c = (make_net() for _ in range(3))
    q = query_to(a, b, c)
    parts = split_query(q)
    assert [peer for peer, _ in parts] == [b.peer_id, c.peer_id]
    for peer, part in parts:
        assert part.query_id == q.query_id and part.deadline_ms == q.deadline_ms
        assert [p.recipient for p in part.prompts] == [peer]


async def test_a_query_goes_only_to_its_respondent_dialled_if_not_connected(nursery):
    """A and B each hold one connection, to C (their low watermark: nothing
    dials more). A learns B's address from its announcement and sends it a
    query: A dials B, B takes the query over the direct stream, and C, which
    is not a respondent, receives nothing of it, by stream or by gossip."""
    marks = Watermarks(low=1, high=4)
    c = make_net(watermarks=marks)
    await nursery.start(c.run)
    a = make_net(c.listen_addrs[0], watermarks=marks)
    b = make_net(c.listen_addrs[0], watermarks=marks)
    takers = {n: Taker(n) for n in (a, b, c)}
    b.on(topics.QUERIES, takers[b].take)  # B hosts experts: it takes the gossip fallback too (counted apart)
    await nursery.start(a.run)
    await nursery.start(b.run)
    await wait_for(lambda: a.book.addrs(b.peer_id), 30, "B's announcement at A")
    assert b.peer_id not in a.peers()

    q = query_to(a, b)
    a.send_query_nowait(q)
    await wait_for(lambda: takers[b].got, 30, "the query at B")
    assert takers[b].got[0].query_id == q.query_id
    assert a.stats.direct["dials"] == 1 and a.stats.direct["query_sent"] == 1
    assert b.stats.direct["query_in"] == 1

    a.send_cancel_nowait(q.query_id)  # the cancel goes the same way
    await wait_for(lambda: len(takers[b].got) == 2, 30, "the cancel at B")
    assert isinstance(takers[b].got[1], wire.Cancel)
    assert a.stats.direct["query_gossiped"] == 0 and a.stats.direct["cancel_gossiped"] == 0
    assert takers[c].got == [] and c.stats.direct["query_in"] == 0
    assert c.stats.received[topics.QUERIES] == 0 and b.stats.received[topics.QUERIES] == 0
    assert topics.QUERIES in c.subscribed()  # every node relays the fallback, none took this query by it


def test_early_cancels_are_kept_bounded_and_expire():
    cancels = EarlyCancels(limit=2, keep_s=10.0)
    cancels.note(b"a", b"q1", 0.0)
    assert cancels.cancelled(b"a", b"q1", 9.9)
    assert not cancels.cancelled(b"b", b"q1", 1.0)  # another coordinator's query of that id
    assert not cancels.cancelled(b"a", b"q1", 10.0) and len(cancels) == 0  # expired, forgotten
    for i in range(3):
        cancels.note(b"a", bytes([i]), 20.0)
    assert len(cancels) == 2 and not cancels.cancelled(b"a", bytes([0]), 20.0)  # the oldest went first


async def test_a_query_that_comes_after_its_own_cancel_is_dropped(nursery):
    """The Cancel overtakes the Query (separate streams): B remembers it and
    drops the Query when it comes, by direct stream or by gossip; another
    query goes through."""
    b = make_net()
    await nursery.start(b.run)
    a = make_net(b.listen_addrs[0])
    await nursery.start(a.run)
    taker = Taker(b)
    b.on(topics.QUERIES, taker.take)
    await wait_for(lambda: b.peer_id in a.peers(), 30, "A connected to B")
    q, other = query_to(a, b), query_to(a, b)
    reply = await a.request(b.peer_id, wire.Cancel(q.query_id), protocol=topics.QUERY_PROTOCOL)
    assert isinstance(reply, wire.Ack)
    reply = await a.request(b.peer_id, q, protocol=topics.QUERY_PROTOCOL)
    assert reply == wire.Ack("cancelled")
    assert [type(m) for m in taker.got] == [wire.Cancel]
    assert b.stats.direct["query_after_its_cancel"] == 1
    await a.request(b.peer_id, other, protocol=topics.QUERY_PROTOCOL)
    assert taker.got[-1].query_id == other.query_id
    # by gossip too: a cancelled query that comes on the fallback topic is dropped
    await wait_for(lambda: a.mesh().get(topics.QUERIES, 0) >= 1, 30, "the queries mesh")
    a.publish_nowait(topics.QUERIES, q)
    late = query_to(a, b)
    a.publish_nowait(topics.QUERIES, late)
    await wait_for(lambda: taker.got[-1].query_id == late.query_id, 30, "the later query by gossip")
    assert b.stats.direct["query_after_its_cancel"] == 2
    assert q.query_id not in [m.query_id for m in taker.got if isinstance(m, wire.Query)]


async def test_an_answer_whose_direct_request_failed_goes_back_directly_not_by_gossip(nursery):
    """The responder's fallback for an answer (publish on the answers topic)
    sends it over a direct stream to the coordinator whose Query came here,
    never to every node; an answer to a query that never came here is still
    gossiped; one whose coordinator cannot be reached is lost and counted."""
    b = make_net()
    await nursery.start(b.run)
    a = make_net(b.listen_addrs[0])
    await nursery.start(a.run)
    Taker(b)
    answers = []

    async def take_answer(env):
        answers.append(env.message)
        return wire.Ack()

    a.on_request(wire.Answer.KIND, take_answer)
    gossiped = []

    async def take_gossip(env):
        gossiped.append(env.message)

    a.on(topics.ANSWERS, take_gossip)
    await wait_for(lambda: b.peer_id in a.peers(), 30, "A connected to B")
    q = query_to(a, b)
    await a.request(b.peer_id, q, protocol=topics.QUERY_PROTOCOL)

    def answer(query_id):
        return wire.Answer(query_id=query_id, expert_id="e1", status="ok", box=b"sealed", answer_hash=b"h" * 32)

    assert b.publish_nowait(topics.ANSWERS, answer(q.query_id)) == b""
    await wait_for(lambda: b.stats.direct["answer_sent"] == 1, 30, "the answer at A by direct stream")
    assert answers[0].query_id == q.query_id
    await wait_for(lambda: b.pubsub.peer_topics.get(topics.ANSWERS), 30, "B to hear that A takes answers")
    stray = os.urandom(16)
    b.publish_nowait(topics.ANSWERS, answer(stray))  # no Query of that id came to B: gossiped as before
    await wait_for(lambda: gossiped, 30, "the stray answer by gossip")
    assert gossiped[0].query_id == stray and b.stats.sent[topics.ANSWERS] == 1
    assert [m.query_id for m in answers] == [q.query_id]

    # a coordinator B cannot reach yet (not started, no address): tried again with backoff,
    # and delivered once it can be reached (a relayed coordinator whose relay just died)
    late = make_net()
    late_answers = []

    async def take_late(env):
        late_answers.append(env.message)
        return wire.Ack()

    late.on_request(wire.Answer.KIND, take_late)
    b.direct.note_asker(b"r" * 16, late.peer_id)
    b.publish_nowait(topics.ANSWERS, answer(b"r" * 16))
    await wait_for(lambda: b.stats.direct["answer_retried"] >= 1, 30, "a second try of the unreachable answer")
    assert not late_answers and b.stats.direct["answer_lost"] == 0
    await nursery.start(late.run)
    b.book.note(late.peer_id, [a.split("/p2p/")[0] for a in late.listen_addrs])
    await wait_for(lambda: late_answers, 30, "the answer at the coordinator that came back")
    assert late_answers[0].query_id == b"r" * 16 and b.stats.direct["answer_lost"] == 0

    gone = make_net()  # a coordinator B never reaches (never started, no address): lost after every try
    b.direct.note_asker(b"q" * 16, gone.peer_id)
    retried = b.stats.direct["answer_retried"]
    b.publish_nowait(topics.ANSWERS, answer(b"q" * 16))
    await wait_for(lambda: b.stats.direct["answer_lost"] == 1, 60, "the unreachable coordinator's answer")
    assert b.stats.direct["answer_retried"] - retried == len(b.direct.ANSWER_RETRY_S)
    assert b.stats.sent[topics.ANSWERS] == 1


async def test_an_unreachable_respondent_gets_the_query_by_gossip(nursery):
    """A respondent that does not serve the query protocol (or cannot be
    reached) gets the same query on the queries topic instead."""
    a = make_net()
    await nursery.start(a.run)
    b = make_net(a.listen_addrs[0])
    got = []

    async def take(env):
        got.append(env.message)

    b.on(topics.QUERIES, take)  # but no direct handler: the stream is refused as unsupported
    await nursery.start(b.run)
    await wait_for(lambda: a.gossipsub.fanout.get(topics.QUERIES) is not None
                   or b.peer_id in {p.to_bytes() for p in a.pubsub.peer_topics.get(topics.QUERIES, ())},
                   30, "B's subscription at A")
    q = query_to(a, b)
    a.send_query_nowait(q)
    await wait_for(lambda: got, 30, "the gossiped query at B")
    assert got[0].query_id == q.query_id and [p.recipient for p in got[0].prompts] == [b.peer_id]
    assert a.stats.direct["query_refused"] == 1 and a.stats.direct["query_gossiped"] == 1


async def test_a_respondent_that_does_not_reply_in_time_is_not_flooded_by_gossip(nursery):
    """The stream opened, the reply did not come (an overloaded or stalled
    node): the query may have arrived, so it is not gossiped to every node; it
    is tried again directly (a respondent takes a query id once), and counted
    as failed when its tries are spent."""
    a = make_net()
    await nursery.start(a.run)
    b = make_net(a.listen_addrs[0])
    taken, gossiped = [], []

    async def hang(env):
        taken.append(env.message)
        await trio.sleep_forever()

    async def by_gossip(env):
        gossiped.append(env.message)

    b.on_request(wire.Query.KIND, hang)
    b.on(topics.QUERIES, by_gossip)
    await nursery.start(b.run)
    await wait_for(lambda: b.peer_id in a.peers(), 30, "connected")
    a.direct.timeout_s = 1.0
    a.direct.QUERY_RETRY_S = (0.1, 0.1)
    a.send_query_nowait(query_to(a, b))
    await wait_for(lambda: a.stats.direct["query_failed"] == 1, 30, "the direct query to time out on every try")
    assert len(taken) == 3 and a.stats.direct["query_retried"] == 2  # it did arrive, three times
    assert a.stats.direct["query_gossiped"] == 0 and gossiped == []


async def test_a_query_lost_on_its_way_is_tried_again_until_it_is_taken(nursery):
    """A relay that dies with the query in it, a respondent stalled while its
    relay died: the first try is never acknowledged, the next one is. A
    cancelled query, or one whose deadline is too close, is not tried again."""
    a = make_net()
    await nursery.start(a.run)
    b = make_net(a.listen_addrs[0])
    taken = []

    async def lose_each_first_copy(env):
        first = env.message.query_id not in [m.query_id for m in taken]
        taken.append(env.message)
        if first:
            await trio.sleep_forever()  # this copy is never acknowledged
        return wire.Ack()

    async def cancel(env):
        return wire.Ack()

    b.on_request(wire.Query.KIND, lose_each_first_copy)
    b.on_request(wire.Cancel.KIND, cancel)
    await nursery.start(b.run)
    await wait_for(lambda: b.peer_id in a.peers(), 30, "connected")
    a.direct.timeout_s = 2.0  # an acknowledged copy is back well within it
    a.direct.QUERY_RETRY_S = (0.1, 0.1)
    q = query_to(a, b)
    a.send_query_nowait(q)
    await wait_for(lambda: a.stats.direct["query_sent"] == 1, 30, "the second try to be taken")
    assert [m.query_id for m in taken] == [q.query_id, q.query_id]
    assert a.stats.direct["query_retried"] == 1 and a.stats.direct["query_failed"] == 0

    cancelled = query_to(a, b)  # its round ended while the first copy was on its way
    a.send_query_nowait(cancelled)
    # (cancelled once the copy is there: a Cancel that overtook it would have it dropped on arrival)
    await wait_for(lambda: cancelled.query_id in [m.query_id for m in taken], 30, "the first copy at B")
    a.send_cancel_nowait(cancelled.query_id)
    await wait_for(lambda: a.stats.direct["query_failed"] == 1, 30, "the cancelled query to be given up")
    late = wire.Query(query_id=os.urandom(16), domain="general", deadline_ms=int((time.time() + 1.0) * 1000),
                      prompts=query_to(a, b).prompts)
    a.send_query_nowait(late)
    await wait_for(lambda: a.stats.direct["query_failed"] == 2, 30, "the query past its deadline to be given up")
    assert a.stats.direct["query_retried"] == 1 and a.stats.direct["query_sent"] == 1
    assert [m.query_id for m in taken[2:]] == [cancelled.query_id, late.query_id]


async def _raw(net: GossipNetwork, peer: bytes, frame: bytes) -> bytes:
    """Open a query stream from ``net`` to ``peer``, write ``frame`` as is, return the reply frame."""
    stream = await net.host.new_stream(ID(peer), [TProtocol(topics.QUERY_PROTOCOL)])
    try:
        await stream.write(frame)
        return await rpc.read_frame(stream, 1 << 20)
    finally:
        await stream.close()


def framed(data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + data


async def test_bad_direct_messages_are_dropped_and_counted(nursery):
    b = make_net()
    await nursery.start(b.run)
    a = make_net(b.listen_addrs[0])
    await nursery.start(a.run)
    taker = Taker(b)
    await wait_for(lambda: a.peer_id in b.peers(), 30, "connected")

    good = a.signer.seal(query_to(a, b))
    tampered = bytearray(good)
    tampered[-5] ^= 0xFF  # inside the signature
    forged = Identity(os.urandom(32)).signer().seal(query_to(a, b))  # signed by someone else
    wrong_kind = a.signer.seal(wire.Broadcast("not a query"))
    cases = [
        (framed(b"\x93not msgpack at all"), wire.MALFORMED),
        ((2 << 20).to_bytes(4, "big"), wire.OVERSIZED),  # a 2 MiB frame is refused before it is read
        (framed(bytes(tampered)), wire.BAD_SIGNATURE),
        (framed(forged), wire.BAD_SIGNATURE),
        (framed(wrong_kind), wire.SCHEMA),
    ]
    for frame, reason in cases:
        before = b.stats.direct[f"query_dropped_{reason}"]
        reply = wire.open_envelope(await _raw(a, b.peer_id, frame))
        assert isinstance(reply.message, wire.RpcError) and reply.message.code == "bad_request"
        assert b.stats.direct[f"query_dropped_{reason}"] == before + 1, reason

    reply = wire.open_envelope(await _raw(a, b.peer_id, framed(good)))
    assert isinstance(reply.message, wire.Ack) and len(taker.got) == 1
    reply = wire.open_envelope(await _raw(a, b.peer_id, framed(good)))  # the same envelope again
    assert isinstance(reply.message, wire.RpcError)
    assert b.stats.direct[f"query_dropped_{wire.REPLAYED}"] == 1 and len(taker.got) == 1

    # a query sent over the request protocol is not taken there
    stream = await a.host.new_stream(ID(b.peer_id), [TProtocol(topics.RPC_PROTOCOL)])
    await rpc.write_frame(stream, a.signer.seal(query_to(a, b)))
    reply = wire.open_envelope(await rpc.read_frame(stream, 1 << 20))
    await stream.close()
    assert reply.message.code == "unsupported" and len(taker.got) == 1

    assert b.stats.dropped_by_peer[wire.peer_id_str(a.peer_id)] == 6  # each struck against the sender
    # B still serves: a fresh valid query is taken
    a.send_query_nowait(query_to(a, b))
    await wait_for(lambda: len(taker.got) == 2, 30, "a valid query after the bad ones")


# ------------------------------------------------------------- real nodes


def node_config(tmp_path, name, boot=None, **kw):
    return config.build(None, data_dir=tmp_path / name, listen=("/ip4/127.0.0.1/tcp/0",), api_port=0,
                        bootstrap=(boot,) if boot else (), announce_interval_s=0.5, **kw)


async def start_node(nursery, cfg, expert_id=None):
    experts = []
    if expert_id is not None:
        backend = scripted.ScriptedBackend({QUESTION: "Paris."})
        expert = Expert(expert_id, backend, domains=("general",), max_concurrency=2)
        await expert.start()
        experts.append(expert)
    node = Node(cfg, experts=experts)
    await nursery.start(node.run)
    return node


async def test_only_the_chosen_respondent_of_a_node_query_receives_it(nursery, tmp_path):
    """A coordinator, two expert nodes and a bystander without experts: a
    query for one respondent reaches that one only."""
    from p2pnet.query import ChatRequest

    coord = await start_node(nursery, node_config(tmp_path, "coord"))
    boot = coord.network.listen_addrs[0]
    experts = [await start_node(nursery, node_config(tmp_path, f"e{i}", boot), f"x{i}") for i in range(2)]
    bystander = await start_node(nursery, node_config(tmp_path, "by", boot))
    co = next(s.coordinator for s in coord.services if hasattr(s, "coordinator"))
    await wait_for(lambda: len(co.directory.all(co.clock())) == 2, 30, "both experts' announcements")

    result = await co.chat(ChatRequest(model="p2pnet", messages=(("user", QUESTION),), respondents=1, max_tokens=8))
    assert result.text == "Paris."
    got = [n.network.stats.direct["query_in"] for n in experts]
    assert sorted(got) == [0, 1]
    assert bystander.network.stats.direct["query_in"] == 0
    for n in (*experts, bystander):
        assert n.network.stats.received[topics.QUERIES] == 0


async def test_a_node_without_the_ledger_takes_no_ledger_traffic(nursery, tmp_path):
    """A validator (a chain committing an empty block every 300 ms), a
    follower of the chain and a user node that only asks questions: the
    follower receives consensus messages, the user node none, nor ratings."""
    load_or_create(tmp_path / "val")
    genesis = tmp_path / "genesis.json"
    g = generate_genesis([load_or_create(tmp_path / "val").public_key], chain_id=f"direct-{time.time_ns()}",
                         params=Params(create_empty_blocks_interval_ms=300))
    genesis.write_text(g.to_json())
    val = await start_node(nursery, node_config(tmp_path, "val", genesis=genesis, validator=True))
    boot = val.network.listen_addrs[0]
    follower = await start_node(nursery, node_config(tmp_path, "fol", boot, genesis=genesis))
    user = await start_node(nursery, node_config(tmp_path, "user", boot))
    await wait_for(lambda: len(user.network.peers()) >= 1 and len(follower.network.peers()) >= 1, 30, "connected")
    await wait_for(lambda: follower.network.stats.received[topics.CONSENSUS] >= 5, 60,
                   "consensus messages at the follower")
    assert {topics.CONSENSUS, topics.TXS} <= set(follower.network.subscribed())
    assert topics.CONSENSUS not in user.network.subscribed() and topics.TXS not in user.network.subscribed()
    assert user.network.stats.received[topics.CONSENSUS] == 0 and user.network.stats.received[topics.TXS] == 0
    assert user.network.mesh().get(topics.CONSENSUS) is None
