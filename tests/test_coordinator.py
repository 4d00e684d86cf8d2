"""Coordinated queries between real nodes (in one process, real libp2p over
loopback, real HTTP API) whose experts are scripted: selection, sealed
prompts, signed answers, evaluation, provenance, ratings and the failure paths."""

import hashlib

import openai
import pytest
import trio

from p2pnet import config, wire
from p2pnet.experts import scripted
from p2pnet.experts.expert import Expert
from p2pnet.experts.selection import SelectionPolicy, UcbCostPolicy
from p2pnet.node import Node

from .conftest_net import wait_for

QUESTION = "What is the capital of France?"


async def start_node(nursery, tmp_path, name, boot=None, backend=None, expert_id="scripted",
                     domains=("general", "geography"), **settings):
    """A node on 127.0.0.1 hosting ``backend`` (if given) as an expert of
    ``domains``; ``settings`` override the config (announcing every 0.5 s)."""
    cfg = config.build(None, data_dir=tmp_path / name, listen=("/ip4/127.0.0.1/tcp/0",), api_port=0,
                       bootstrap=(boot,) if boot else (), **{"announce_interval_s": 0.5, **settings})
    experts = []
    if backend is not None:
        expert = Expert(expert_id, backend, domains=domains, max_concurrency=2)
        await expert.start()
        experts.append(expert)
    node = Node(cfg, experts=experts)
    await nursery.start(node.run)
    return node


def boot_addr(node):
    return node.network.listen_addrs[0]


async def start_cluster(nursery, tmp_path, backends):
    """node0 coordinates (no expert); node1.. host the given backends."""
    coord = await start_node(nursery, tmp_path, "coord")
    nodes = [coord]
    for i, backend in enumerate(backends):
        nodes.append(await start_node(nursery, tmp_path, f"n{i}", boot_addr(coord), backend))
    n = len(nodes)
    await wait_for(lambda: all(len(x.network.peers()) == n - 1 for x in nodes), 30, "mesh")
    coordinator = coordinator_of(coord)
    await wait_for(lambda: len(coordinator.directory.all(coordinator.clock())) == len(backends), 30,
                   "expert announcements")
    return nodes


def coordinator_of(node):
    return next(s.coordinator for s in node.services if hasattr(s, "coordinator"))


def ask(api, question=QUESTION, **extra):
    client = openai.OpenAI(base_url=api + "/v1", api_key="unused", max_retries=0, timeout=60)
    return client.chat.completions.create(model="p2pnet", messages=[{"role": "user", "content": question}],
                                          extra_body=extra)


def paris(**kw):
    return scripted.ScriptedBackend({QUESTION: "The capital of France is Paris."}, **kw)


async def test_query_answered_by_remote_experts_with_provenance_and_ratings(nursery, tmp_path):
    # two different models that both say Paris (copies of one model would count once)
    nodes = await start_cluster(nursery, tmp_path, [paris(seed=1), paris(seed=2), scripted.ScriptedBackend(
        {QUESTION: "Lyon is the capital of France."})])
    coord = nodes[0]
    resp = await trio.to_thread.run_sync(lambda: ask(coord.api_url, respondents=3, domain="geography"))
    assert resp.choices[0].message.content == "The capital of France is Paris."
    prov = resp.model_extra["p2pnet"]
    assert len(prov["respondents"]) == 3 and prov["domain"] == "geography"
    assert {r["status"] for r in prov["respondents"]} == {"ok"}
    expert_peers = {n.peer_id for n in nodes[1:]}
    assert prov["chosen"]["peer_id"] in expert_peers and prov["chosen"]["peer_id"] != coord.peer_id
    scores = {r["peer_id"]: r["score"] for r in prov["respondents"]}
    assert scores[nodes[3].peer_id] < scores[nodes[1].peer_id] == scores[nodes[2].peer_id]
    # one signed rating per respondent, in the durable queue
    coordinator = coordinator_of(coord)
    ratings = [wire.open_envelope(raw) for _, raw in coordinator.ratings.pending()]
    assert len(ratings) == 3
    assert all(r.sender == coord.network.peer_id and isinstance(r.message, wire.Rating) for r in ratings)
    by_peer = {wire.peer_id_str(r.message.respondent): r.message for r in ratings}
    assert by_peer[nodes[1].peer_id].answer_hash == hashlib.sha256(b"The capital of France is Paris.").digest()
    assert by_peer[nodes[3].peer_id].score < by_peer[nodes[1].peer_id].score


class _ByExpertId(SelectionPolicy):
    """Deterministic order for the test: expert "a" first, then "b", "c"."""

    name = "by-expert-id"

    def score(self, ref, domain, standing, total_evidence, rng) -> float:
        return -ord(ref.card.expert_id[0])


async def test_two_answers_that_differ_are_settled_by_a_third(nursery, tmp_path):
    coord = await start_node(nursery, tmp_path, "coord")
    nodes = [coord]
    for name, text in (("a", "Paris."), ("b", "Lyon."), ("c", "The answer is Paris.")):
        nodes.append(await start_node(nursery, tmp_path, name, boot_addr(coord),
                                      scripted.ScriptedBackend({QUESTION: text}), expert_id=name))
    await wait_for(lambda: all(len(x.network.peers()) == 3 for x in nodes), 30, "mesh")
    coordinator = coordinator_of(coord)
    await wait_for(lambda: len(coordinator.directory.all(coordinator.clock())) == 3, 30, "announcements")
    coordinator.policy = _ByExpertId()
    resp = await trio.to_thread.run_sync(lambda: ask(coord.api_url, respondents=2, domain="geography"))
    prov = resp.model_extra["p2pnet"]
    assert resp.choices[0].message.content in ("Paris.", "The answer is Paris.")  # the majority, not the fastest
    assert [t["expert_id"] for t in prov["tiebreakers"]] == ["c"]
    scores = {r["expert_id"]: r["score"] for r in prov["respondents"]}
    assert scores == {"a": 1.0, "b": 0.0, "c": 1.0}
    assert "majority answer (2 of 3 agree)" in prov["reason"]
    # with the tie-break off, the same question stays a tie: both answers unproven
    coordinator.tiebreak = 0
    prov = (await trio.to_thread.run_sync(lambda: ask(coord.api_url, respondents=2, domain="geography"))
            ).model_extra["p2pnet"]
    assert prov["tiebreakers"] == [] and len(prov["respondents"]) == 2
    assert {r["expert_id"]: r["score"] for r in prov["respondents"]} == {"a": 0.0, "b": 0.0}
    assert "no majority" in prov["reason"]
    # an undecided vote delivers the answer of the expert the ledger rates best;
    # its ratings stay those of the vote (0.0 each)
    for trusted, text in ((nodes[1], "Paris."), (nodes[2], "Lyon.")):
        favoured = trusted.network.peer_id
        coordinator.standing = lambda peer, domain, t=favoured: (0.9, 10.0) if peer == t else (0.4, 10.0)
        resp = await trio.to_thread.run_sync(lambda: ask(coord.api_url, respondents=2, domain="geography"))
        prov = resp.model_extra["p2pnet"]
        assert resp.choices[0].message.content == text, prov["reason"]
        assert {r["expert_id"]: r["score"] for r in prov["respondents"]} == {"a": 0.0, "b": 0.0}
        assert "no majority" in prov["reason"]


async def test_copies_of_one_model_count_once_at_temperature_zero(nursery, tmp_path):
    """Experts that announce the same model file answer a temperature-0 prompt
    alike: their agreement is one computation, not evidence. The tie-break
    then asks another model; at a temperature above 0 each copy votes. When the
    node picks the respondents at temperature 0 it asks one copy per model."""
    coord = await start_node(nursery, tmp_path, "coord")
    nodes = [coord]
    # a and c are copies of one scripted model (same script, same sha256)
    for name, text in (("a", "Lyon."), ("b", "Paris."), ("c", "Lyon."), ("d", "The answer is Paris.")):
        nodes.append(await start_node(nursery, tmp_path, name, boot_addr(coord),
                                      scripted.ScriptedBackend({QUESTION: text}), expert_id=name))
    await wait_for(lambda: all(len(x.network.peers()) == 4 for x in nodes), 30, "mesh")
    coordinator = coordinator_of(coord)
    await wait_for(lambda: len(coordinator.directory.all(coordinator.clock())) == 4, 30, "announcements")
    cards = {ref.card.expert_id: ref.card for ref in coordinator.directory.all(coordinator.clock())}
    assert cards["a"].sha256 == cards["c"].sha256 != cards["b"].sha256
    coordinator.policy = _ByExpertId()
    # a and b differ; the tie-break skips c (a's copy) and asks d, which sides with b
    resp = await trio.to_thread.run_sync(lambda: ask(coord.api_url, respondents=2, domain="geography"))
    prov = resp.model_extra["p2pnet"]
    assert [t["expert_id"] for t in prov["tiebreakers"]] == ["d"]
    assert resp.choices[0].message.content in ("Paris.", "The answer is Paris.")
    # sampled answers are independent draws: c is asked, and the copies' majority wins
    resp = await trio.to_thread.run_sync(lambda: ask(coord.api_url, respondents=2, domain="geography",
                                                     temperature=0.7))
    prov = resp.model_extra["p2pnet"]
    assert [t["expert_id"] for t in prov["tiebreakers"]] == ["c"] and resp.choices[0].message.content == "Lyon."
    # asked together at temperature 0, the copies are one voice against d: a tie, nobody rated up
    coordinator.tiebreak = 0
    prov = (await trio.to_thread.run_sync(lambda: ask(coord.api_url, respondents=3, domain="geography"))
            ).model_extra["p2pnet"]
    scores = {r["expert_id"]: r["score"] for r in prov["respondents"]}
    assert scores == {"a": 0.0, "b": 0.0, "c": 0.0} and "no majority" in prov["reason"]
    assert "1 copy of the same model's same answer counted once" in prov["reason"]
    # when the request leaves the respondents to the node, a copy is not asked at
    # temperature 0 (the next model is), and is at 0.7
    coordinator.default_respondents = 3
    prov = (await trio.to_thread.run_sync(lambda: ask(coord.api_url, domain="geography"))).model_extra["p2pnet"]
    assert sorted(r["expert_id"] for r in prov["respondents"]) == ["a", "b", "d"]
    prov = (await trio.to_thread.run_sync(lambda: ask(coord.api_url, domain="geography", temperature=0.7))
            ).model_extra["p2pnet"]
    assert sorted(r["expert_id"] for r in prov["respondents"]) == ["a", "b", "c"]
    coordinator.default_respondents = 4
    prov = (await trio.to_thread.run_sync(lambda: ask(coord.api_url, domain="geography"))).model_extra["p2pnet"]
    assert sorted(r["expert_id"] for r in prov["respondents"]) == ["a", "b", "d"]
    assert "3 not 4: 1 more is a copy of a chosen model" in prov["selection"]["reason"]


class _OneByExpertId(_ByExpertId):
    """Asks one expert ("a") when the request leaves k open; escalates below 0.5."""

    escalate_below = 0.5

    def respondents(self, candidates, domain, standing=None, requested_k=None):
        return requested_k or 1


async def test_an_answer_below_the_confidence_bar_is_escalated(nursery, tmp_path):
    """A single answer whose own confidence (sealed in its signed Answer) is
    below the policy's escalate_below gets a second expert; when the two
    differ the tie-break settles it. A sure answer is delivered alone."""
    coord = await start_node(nursery, tmp_path, "coord")
    nodes, backends = [coord], {}
    for name, text in (("a", "Lyon."), ("b", "Paris."), ("c", "The answer is Paris.")):
        backends[name] = scripted.ScriptedBackend({QUESTION: text}, confidence=scripted.claimed_confidence(0.9))
        nodes.append(await start_node(nursery, tmp_path, name, boot_addr(coord), backends[name], expert_id=name))
    await wait_for(lambda: all(len(x.network.peers()) == 3 for x in nodes), 30, "mesh")
    coordinator = coordinator_of(coord)
    await wait_for(lambda: len(coordinator.directory.all(coordinator.clock())) == 3, 30, "announcements")
    coordinator.policy = _OneByExpertId()
    backends["a"].confidence = scripted.claimed_confidence(0.3)
    resp = await trio.to_thread.run_sync(lambda: ask(coord.api_url, domain="geography"))
    prov = resp.model_extra["p2pnet"]
    assert resp.choices[0].message.content in ("Paris.", "The answer is Paris."), prov["reason"]
    assert prov["escalated"]["reason"] == "its confidence 0.30 is below 0.50"
    assert [e["expert_id"] for e in prov["escalated"]["to"]] == ["b"]
    assert [t["expert_id"] for t in prov["tiebreakers"]] == ["c"]
    assert {r["expert_id"]: r["confidence"] for r in prov["respondents"]} == {"a": 0.3, "b": 0.9, "c": 0.9}
    assert {r["expert_id"]: r["score"] for r in prov["respondents"]} == {"a": 0.0, "b": 1.0, "c": 1.0}
    # sure of itself: one answer, right or wrong, and no second expert
    backends["a"].confidence = scripted.claimed_confidence(0.8)
    resp = await trio.to_thread.run_sync(lambda: ask(coord.api_url, domain="geography"))
    prov = resp.model_extra["p2pnet"]
    assert resp.choices[0].message.content == "Lyon." and prov["escalated"] is None
    assert [(r["expert_id"], r["confidence"]) for r in prov["respondents"]] == [("a", 0.8)]
    # a request that names its respondents is not escalated
    backends["a"].confidence = scripted.claimed_confidence(0.3)
    prov = (await trio.to_thread.run_sync(lambda: ask(coord.api_url, respondents=1, domain="geography"))
            ).model_extra["p2pnet"]
    assert prov["escalated"] is None and len(prov["respondents"]) == 1
    # the policy judges no second expert worth its price: the unsure answer stands, and says why
    coordinator.policy = _OneNeverChecked()
    resp = await trio.to_thread.run_sync(lambda: ask(coord.api_url, domain="geography"))
    prov = resp.model_extra["p2pnet"]
    assert resp.choices[0].message.content == "Lyon." and prov["escalated"] is None
    assert prov["escalation_declined"] == ("its confidence 0.30 is below 0.50, but no second expert is asked: "
                                           "not worth its price (test)")
    assert [r["expert_id"] for r in prov["respondents"]] == ["a"]


async def test_an_unsure_answer_whose_only_peers_are_copies_says_so(nursery, tmp_path):
    """At temperature 0 a copy of the unsure expert's model would repeat its
    answer: no second expert is asked, and provenance says why."""
    coord = await start_node(nursery, tmp_path, "coord")
    nodes = [coord]
    for name in ("a", "c"):  # one scripted model, two hosts
        backend = scripted.ScriptedBackend({QUESTION: "Lyon."}, confidence=scripted.claimed_confidence(0.3))
        nodes.append(await start_node(nursery, tmp_path, name, boot_addr(coord), backend, expert_id=name))
    await wait_for(lambda: all(len(x.network.peers()) == 2 for x in nodes), 30, "mesh")
    coordinator = coordinator_of(coord)
    await wait_for(lambda: len(coordinator.directory.all(coordinator.clock())) == 2, 30, "announcements")
    coordinator.policy = _OneByExpertId()
    prov = (await trio.to_thread.run_sync(lambda: ask(coord.api_url, domain="geography"))).model_extra["p2pnet"]
    assert [r["expert_id"] for r in prov["respondents"]] == ["a"] and prov["escalated"] is None
    assert prov["escalation_declined"] == (
        "its confidence 0.30 is below 0.50, but no second expert is asked: no other expert "
        "(1 more is a copy of its model, which would repeat its answer at temperature 0)")
    # a sampled answer is an independent draw: the copy is asked
    prov = (await trio.to_thread.run_sync(lambda: ask(coord.api_url, domain="geography", temperature=0.7))
            ).model_extra["p2pnet"]
    assert [e["expert_id"] for e in prov["escalated"]["to"]] == ["c"] and prov["escalation_declined"] is None


class _OneNeverChecked(_OneByExpertId):
    def second_opinion(self, first, confidence, rest, domain, standing=None, rng=None):
        assert first.card.expert_id == "a" and confidence == 0.3 and {r.card.expert_id for r in rest} == {"b", "c"}
        return None, "not worth its price (test)"


async def test_prompts_are_sealed_to_the_chosen_respondents(nursery, tmp_path):
    nodes = await start_cluster(nursery, tmp_path, [paris()])
    seen = []
    net = nodes[1].network
    serve = net._rpc_handlers[wire.Query.KIND]

    async def spy(env):
        seen.append(env.message)
        return await serve(env)

    net._rpc_handlers[wire.Query.KIND] = spy  # queries come over the direct query stream
    await trio.to_thread.run_sync(lambda: ask(nodes[0].api_url, respondents=1))
    query = next(m for m in seen if isinstance(m, wire.Query))
    assert QUESTION.encode() not in query.pack()  # only ciphertext on the wire
    assert [p.recipient for p in query.prompts] == [nodes[1].network.peer_id]
    assert net.stats.received["p2pnet/queries/1"] == 0  # none came by gossip


async def test_all_respondents_busy_is_503(nursery, tmp_path):
    nodes = await start_cluster(nursery, tmp_path, [paris(failure=scripted.BUSY), paris(failure=scripted.BUSY)])
    with pytest.raises(openai.APIStatusError) as exc:
        await trio.to_thread.run_sync(lambda: ask(nodes[0].api_url, respondents=2))
    assert exc.value.status_code == 503
    assert exc.value.body["code"] == "no_expert_available"


class _ContextTooSmall(scripted.ScriptedBackend):
    """Refuses every prompt the way llama.cpp refuses one longer than its context."""

    async def agenerate(self, *args, **kwargs):
        from p2pnet.query import BadQuery
        raise BadQuery("request (9026 tokens) exceeds the available context size (2048 tokens)")


async def test_a_prompt_every_expert_refuses_is_400_and_rates_nobody(nursery, tmp_path):
    """Not 503 'try again': the prompt itself is at fault (e.g. too long for the
    model), and a refusal says nothing about the experts' quality."""
    nodes = await start_cluster(nursery, tmp_path, [_ContextTooSmall({}), paris(failure=scripted.BUSY)])
    with pytest.raises(openai.APIStatusError) as exc:
        await trio.to_thread.run_sync(lambda: ask(nodes[0].api_url, respondents=2))
    assert exc.value.status_code == 400 and exc.value.body["code"] == "invalid_request", exc.value.body
    assert "1 of 2 experts cannot answer this prompt" in exc.value.body["message"]
    assert "exceeds the available context size" in exc.value.body["message"]
    assert list(coordinator_of(nodes[0]).ratings.pending()) == [], "a refusal must not be rated"


async def test_respondent_dies_mid_answer(nursery, tmp_path, monkeypatch):
    """One respondent's node goes away while it generates. Its connection
    closes, so the coordinator stops waiting for it at once (status "gone",
    not "slow" after its patience nor a timeout at the deadline), answers from
    the other, and forgets the dead node's cards. (A SIGKILLed process's
    connection closes by itself, seen by its peers within 0.2 s here; a node
    stopped inside this process keeps its sockets open, so the test hides its
    connection from the coordinator's peer list once it has stopped.)"""
    nodes = await start_cluster(nursery, tmp_path, [paris(), paris(failure=scripted.HANG)])
    dying = nodes[2]
    co = coordinator_of(nodes[0])
    co.watch_s, co.patience_floor_s = 0.1, 1000.0  # patience: half the deadline
    connected = nodes[0].network.peers

    async def kill_when_busy():
        await wait_for(lambda: dying.services[0].inflight > 0, 30, "the hanging generation")
        dying.stop()
        monkeypatch.setattr(nodes[0].network, "peers", lambda: [p for p in connected() if p != dying.network.peer_id])

    nursery.start_soon(kill_when_busy)
    resp = await trio.to_thread.run_sync(lambda: ask(nodes[0].api_url, respondents=2, deadline_s=60))
    assert resp.choices[0].message.content == "The capital of France is Paris."
    statuses = {r["peer_id"]: r["status"] for r in resp.model_extra["p2pnet"]["respondents"]}
    assert statuses == {nodes[1].peer_id: "ok", dying.peer_id: "gone"}
    assert co.status()["respondents_gone"] == 1 and co.status()["respondents_forgotten"] == 1
    assert [r.peer for r in co.directory.all(co.clock())] == [nodes[1].network.peer_id]


async def test_a_silent_respondent_is_replaced_after_its_patience(nursery, tmp_path):
    """A respondent that stays connected but sends nothing is given up on
    after its patience (here 0.5 s) and its copy answers the same query; the
    silent one is rated as failed, and kept in the directory (it may only be
    overloaded)."""
    nodes = await start_cluster(nursery, tmp_path, [paris(failure=scripted.HANG), paris()])
    hung, spare = nodes[1].network.peer_id, nodes[2].network.peer_id
    co = coordinator_of(nodes[0])
    co.policy, co.patience_floor_s = UcbCostPolicy(exploration=0.0), 0.5
    co.standing = lambda peer, domain: {hung: (0.95, 50.0), spare: (0.9, 50.0)}.get(peer, (0.5, 0.0))
    resp = await trio.to_thread.run_sync(lambda: ask(nodes[0].api_url, deadline_s=60))
    assert resp.choices[0].message.content == "The capital of France is Paris."
    prov = resp.model_extra["p2pnet"]
    assert [(r["peer_id"], r["status"], r["score"]) for r in prov["respondents"]] == [
        (nodes[1].peer_id, "slow", 0.0), (nodes[2].peer_id, "ok", None)], prov
    assert co.status()["respondents_slow"] == 1 and co.status()["respondents_forgotten"] == 0
    assert len(co.directory.all(co.clock())) == 2


async def test_a_respondent_that_is_gone_is_forgotten_until_it_announces(nursery, tmp_path, monkeypatch):
    """A node that died keeps its cards in the directory until they expire.
    A query that picks it, when it is not connected, gives up on it after its
    patience and asks the copy that is still there; the dead node's cards are
    forgotten, so the next query goes to the copy at once. (Here the "dead"
    node sends no answers and its connection is hidden from the coordinator's
    peer list.)"""
    nodes = await start_cluster(nursery, tmp_path, [paris(), paris()])
    dead, live = nodes[1], nodes[2]
    co = coordinator_of(nodes[0])
    co.policy, co.patience_floor_s = UcbCostPolicy(exploration=0.0), 0.5
    co.standing = lambda peer, domain: (0.95, 50.0) if peer == dead.network.peer_id else (0.9, 50.0)
    async def never_answers(*args, **kwargs):
        pass

    monkeypatch.setattr(dead.services[0], "_send", never_answers)
    connected = nodes[0].network.peers
    monkeypatch.setattr(nodes[0].network, "peers", lambda: [p for p in connected() if p != dead.network.peer_id])
    resp = await trio.to_thread.run_sync(lambda: ask(nodes[0].api_url, deadline_s=60))
    assert [(r["peer_id"], r["status"]) for r in resp.model_extra["p2pnet"]["respondents"]] == [
        (dead.peer_id, "slow"), (live.peer_id, "ok")]
    assert co.status()["respondents_forgotten"] == 1
    assert [r.peer for r in co.directory.all(co.clock())] == [live.network.peer_id]
    resp = await trio.to_thread.run_sync(lambda: ask(nodes[0].api_url))
    assert [r["peer_id"] for r in resp.model_extra["p2pnet"]["respondents"]] == [live.peer_id]
    # its next announcement brings it back
    monkeypatch.setattr(nodes[0].network, "peers", connected)
    await wait_for(lambda: len(co.directory.all(co.clock())) == 2, 30, "the next announcement")


async def test_deadline_with_no_answer_is_504(nursery, tmp_path):
    nodes = await start_cluster(nursery, tmp_path, [paris(failure=scripted.HANG)])
    with pytest.raises(openai.APIStatusError) as exc:
        await trio.to_thread.run_sync(lambda: ask(nodes[0].api_url, respondents=1, deadline_s=1))
    # the only expert: nobody could replace it, so it is waited for until the deadline
    assert exc.value.status_code == 504 and "respondents: timeout" in exc.value.body["message"]
    # still connected, so only late: it stays in the directory
    co = coordinator_of(nodes[0])
    assert co.status()["respondents_forgotten"] == 0 and len(co.directory.all(co.clock())) == 1


async def test_tampered_answer_is_rejected(nursery, tmp_path, monkeypatch):
    """An answer whose text does not match its signed hash is thrown out and rated 0."""
    nodes = await start_cluster(nursery, tmp_path, [paris(), paris()])
    liar = nodes[2]
    from p2pnet import sealing

    real_seal = sealing.seal

    def tampering_seal(identity, peer, plaintext):
        if identity is liar.identity and plaintext.startswith(wire.AnswerBody("", "").pack()[:1]):
            body = wire.AnswerBody.unpack(plaintext)
            if body.text:
                plaintext = wire.AnswerBody("The capital of France is Berlin.", body.finish_reason).pack()
        return real_seal(identity, peer, plaintext)

    monkeypatch.setattr("p2pnet.experts.responder.sealing.seal", tampering_seal)
    resp = await trio.to_thread.run_sync(lambda: ask(nodes[0].api_url, respondents=2))
    assert resp.choices[0].message.content == "The capital of France is Paris."
    rows = {r["peer_id"]: r for r in resp.model_extra["p2pnet"]["respondents"]}
    assert rows[liar.peer_id]["status"] == "invalid" and rows[liar.peer_id]["score"] == 0.0


async def test_forged_answer_signature_is_refused(nursery, tmp_path):
    nodes = await start_cluster(nursery, tmp_path, [paris()])
    coord, expert_node = nodes[0], nodes[1]
    bad = bytearray(expert_node.signer.seal(wire.Answer(b"q" * 16, "scripted", "ok", b"", b"\0" * 32)))
    bad[-2] ^= 1
    from p2pnet.gossip import rpc
    from libp2p.custom_types import TProtocol
    from libp2p.peer.id import ID

    stream = await expert_node.network.host.new_stream(ID(coord.network.peer_id), [TProtocol("/p2pnet/rpc/1.0.0")])
    await rpc.write_frame(stream, bytes(bad))
    reply = wire.open_envelope(await rpc.read_frame(stream, 1 << 20))
    assert isinstance(reply.message, wire.RpcError) and reply.message.code == "bad_request"
    assert coord.network.stats.dropped[wire.BAD_SIGNATURE] == 1


async def test_malformed_api_requests_are_400(nursery, tmp_path):
    from p2pnet.api import client
    from p2pnet.api.errors import HttpError

    nodes = await start_cluster(nursery, tmp_path, [paris()])
    url = nodes[0].api_url + "/v1/chat/completions"
    for body in ({}, {"model": "p2pnet", "messages": []}, {"model": "p2pnet", "messages": [{"role": "x"}]},
                 {"model": "p2pnet", "messages": [{"role": "user", "content": "hi"}], "max_tokens": -1}):
        with pytest.raises(HttpError) as exc:
            await trio.to_thread.run_sync(lambda: client.post_json(url, body))
        assert exc.value.status == 400
    with pytest.raises(HttpError) as exc:
        await trio.to_thread.run_sync(lambda: client.post_json(
            url, {"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]}))
    assert exc.value.status == 404


async def test_single_respondent_streams_as_it_generates(nursery, tmp_path):
    answer = "The capital of France is Paris, a city on the Seine."
    nodes = await start_cluster(nursery, tmp_path, [scripted.ScriptedBackend({QUESTION: answer}, token_latency=0.02)])
    client = openai.OpenAI(base_url=nodes[0].api_url + "/v1", api_key="unused", max_retries=0, timeout=60)

    def stream():
        chunks = client.chat.completions.create(model="p2pnet", messages=[{"role": "user", "content": QUESTION}],
                                                stream=True, extra_body={"respondents": 1})
        return [c.choices[0].delta.content or "" for c in chunks if c.choices]

    pieces = await trio.to_thread.run_sync(stream)
    assert "".join(pieces) == answer
    # the text came over AnswerChunks while it was generated, not only after the Answer
    assert coordinator_of(nodes[0]).chunks_received >= 2


async def test_a_failed_answer_is_replaced_by_a_copy(nursery, tmp_path):
    """At temperature 0 the node asks one expert per model; when that answer
    fails, the copy it left out covers for it."""
    nodes = await start_cluster(nursery, tmp_path, [paris(failure=scripted.ERROR), paris()])
    broken, spare = nodes[1].network.peer_id, nodes[2].network.peer_id
    co = coordinator_of(nodes[0])
    co.policy, co.default_respondents = UcbCostPolicy(exploration=0.0), 2
    co.standing = lambda peer, domain: {broken: (0.95, 50.0), spare: (0.9, 50.0)}.get(peer, (0.5, 0.0))
    resp = await trio.to_thread.run_sync(lambda: ask(nodes[0].api_url, domain="geography"))
    prov = resp.model_extra["p2pnet"]
    assert resp.choices[0].message.content == "The capital of France is Paris."
    assert "1 not 2: 1 more is a copy of a chosen model" in prov["selection"]["reason"]
    rows = [(r["peer_id"], r["status"]) for r in prov["respondents"]]
    assert rows == [(nodes[1].peer_id, "error"), (nodes[2].peer_id, "ok")], prov


async def test_busy_respondent_is_replaced_by_another_expert(nursery, tmp_path):
    nodes = await start_cluster(nursery, tmp_path, [paris(failure=scripted.BUSY), paris()])
    busy, free = nodes[1].network.peer_id, nodes[2].network.peer_id
    co = coordinator_of(nodes[0])
    # the policy's first choice is the (busy) expert with the better standing
    co.standing = lambda peer, domain: {busy: (0.95, 50.0), free: (0.7, 50.0)}.get(peer, (0.5, 0.0))
    resp = await trio.to_thread.run_sync(lambda: ask(nodes[0].api_url, respondents=1))
    assert resp.choices[0].message.content == "The capital of France is Paris."
    rows = [(r["peer_id"], r["status"]) for r in resp.model_extra["p2pnet"]["respondents"]]
    assert rows == [(nodes[1].peer_id, "busy"), (nodes[2].peer_id, "ok")]


async def test_a_domain_with_no_known_expert_is_found_through_dht_provider_records(nursery, tmp_path):
    """The coordinator holds no announcement of any geography expert (they
    re-announce only every 5 min here, and what it heard is wiped): it asks the
    DHT who provides the domain, fetches that peer's directory of the domain
    and is answered by the expert found that way."""
    quiet = {"announce_interval_s": 300.0, "announce_ttl_s": 600.0, "dht": True}
    coord = await start_node(nursery, tmp_path, "coord", **quiet)
    expert_node = await start_node(nursery, tmp_path, "n0", boot_addr(coord), paris(), domains=("geography",),
                                   **quiet)
    coordinator = coordinator_of(coord)
    await wait_for(lambda: expert_node.network.providers.provided >= 1, 60, "the expert to provide its domain")
    coordinator.directory.forget(expert_node.network.peer_id)
    coord.network.announces.expire(float("inf"))
    assert coordinator.directory.candidates(coordinator.clock(), "geography", None) == []
    resp = await trio.to_thread.run_sync(lambda: ask(coord.api_url, respondents=1, domain="geography"))
    assert resp.choices[0].message.content == "The capital of France is Paris."
    assert resp.model_extra["p2pnet"]["chosen"]["peer_id"] == expert_node.peer_id
    assert coordinator.status()["experts_discovered_dht"] >= 1


async def test_a_node_that_knows_no_expert_asks_its_peers_directories_before_giving_up(nursery, tmp_path):
    """Without the DHT: the coordinator has no card at all (announcements
    not arrived yet, as right after joining): before answering "no expert"
    it fetches a connected peer's directory and is answered."""
    quiet = {"announce_interval_s": 300.0, "announce_ttl_s": 600.0}
    coord = await start_node(nursery, tmp_path, "coord", **quiet)
    expert_node = await start_node(nursery, tmp_path, "n0", boot_addr(coord), paris(), **quiet)
    coordinator = coordinator_of(coord)
    await wait_for(lambda: coord.network.peers(), 30, "the two nodes to connect")
    await wait_for(lambda: coordinator.directory.all(coordinator.clock()), 30, "the expert's announcement")
    coordinator.directory.forget(expert_node.network.peer_id)
    coord.network.announces.expire(float("inf"))
    resp = await trio.to_thread.run_sync(lambda: ask(coord.api_url, respondents=1))
    assert resp.choices[0].message.content == "The capital of France is Paris."
    assert resp.model_extra["p2pnet"]["chosen"]["peer_id"] == expert_node.peer_id
    status = coordinator.status()
    assert status["experts_discovered"] >= 1 and status["experts_discovered_dht"] == 0
