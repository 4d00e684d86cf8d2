"""Evaluation signals between real in-process nodes with scripted experts:
probes graded exactly and indistinguishable on the wire, peer judges
weighted by standing, and user feedback through POST /v1/feedback."""

import hashlib
import re

import pytest
import trio

from p2pnet import config, wire
from p2pnet.api import client
from p2pnet.api.errors import HttpError
from p2pnet.query import ChatRequest
from p2pnet.experts import scripted, signals
from p2pnet.experts.expert import Expert
from p2pnet.node import Node

from .conftest_net import wait_for

QUESTION = "What is the capital of France?"


async def start_node(nursery, tmp_path, name, boot=None, backend=None):
    cfg = config.build(None, data_dir=tmp_path / name, listen=("/ip4/127.0.0.1/tcp/0",), api_port=0,
                       bootstrap=(boot,) if boot else (), announce_interval_s=0.5)
    experts = []
    if backend is not None:
        expert = Expert("scripted", backend, domains=("general", "geography"), max_concurrency=2)
        await expert.start()
        experts.append(expert)
    node = Node(cfg, experts=experts)
    await nursery.start(node.run)
    return node


async def cluster(nursery, tmp_path, backends):
    """node 0 coordinates (no expert); nodes 1.. host the backends."""
    coord = await start_node(nursery, tmp_path, "coord")
    nodes = [coord] + [await start_node(nursery, tmp_path, f"n{i}", coord.network.listen_addrs[0], b)
                       for i, b in enumerate(backends)]
    await wait_for(lambda: all(len(x.network.peers()) == len(nodes) - 1 for x in nodes), 30, "mesh")
    co = coordinator_of(coord)
    await wait_for(lambda: len(co.directory.all(co.clock())) == len(backends), 30, "announcements")
    return nodes, co


def coordinator_of(node):
    return next(s.coordinator for s in node.services if hasattr(s, "coordinator"))


def ratings_of(co):
    return {wire.peer_id_str(e.message.respondent): e.message
            for e in (wire.open_envelope(raw) for _, raw in co.ratings.pending())}


def capital(city, model="scripted"):
    return scripted.ScriptedBackend({QUESTION: f"The capital of France is {city}."}, model=model)


def spy_queries(node):
    """The Queries that reach ``node`` over the direct query stream (how
    respondents get them; gossip is only the fallback)."""
    seen = []
    net = node.network
    serve = net._rpc_handlers[wire.Query.KIND]

    async def spy(env):
        seen.append(env.message)
        return await serve(env)

    net._rpc_handlers[wire.Query.KIND] = spy
    return seen


async def test_probe_grades_each_respondent_exactly_and_looks_like_a_user_query(nursery, tmp_path):
    nodes, co = await cluster(nursery, tmp_path, [capital("Paris"), capital("Lyon")])
    seen = spy_queries(nodes[1])
    prober = signals.Prober(co, respondents=2)
    result = await prober.probe_once(signals.Probe(QUESTION, "Paris", "geography"))
    assert result.text == "The capital of France is Paris."
    rated = ratings_of(co)
    assert (rated[nodes[1].peer_id].signal, rated[nodes[1].peer_id].score) == ("probe", 1.0)
    assert (rated[nodes[2].peer_id].signal, rated[nodes[2].peer_id].score) == ("probe", 0.0)
    # the same question asked by a user goes out the same way
    await co.chat(ChatRequest("p2pnet", (("user", QUESTION),), domain="geography", respondents=2))
    await wait_for(lambda: len(seen) == 2, 30, "both queries at the expert")
    probe_q, user_q = seen
    assert (probe_q.domain, len(probe_q.prompts)) == (user_q.domain, len(user_q.prompts))
    assert sorted(len(p.box) for p in probe_q.prompts) == sorted(len(p.box) for p in user_q.prompts)
    assert QUESTION.encode() not in probe_q.pack()
    assert prober.status() == {"probes_sent": 1, "probes_failed": 0}


def judge_for(city):
    """A scripted judge that picks the answer naming ``city``."""

    def rule(prompt):
        labels = re.findall(r"Answer ([A-P]):\n([^\n]*)", prompt)
        return next((f"The best answer is {label}." for label, text in labels if city in text), "I cannot tell.")

    return scripted.ScriptedBackend(rule=rule, model="judge")


async def test_judges_rank_hidden_answers_weighted_by_standing(nursery, tmp_path):
    nodes, co = await cluster(nursery, tmp_path, [capital("Paris", "author"), capital("Lyon", "author"),
                                                  judge_for("Paris"), judge_for("Lyon")])
    paris, lyon, good_judge, bad_judge = (n.peer_id for n in nodes[1:])
    # the weak judge stays above the selection policy's floor, so it is asked, but counts less
    standings = {nodes[3].network.peer_id: (0.9, 100.0), nodes[4].network.peer_id: (0.55, 100.0)}
    co.standing = lambda peer, domain: standings.get(peer, (0.5, 0.0))
    result = await co.chat(ChatRequest("author", (("user", QUESTION),), domain="geography",
                                       respondents=2, judges=2))
    prov = result.provenance
    strong, weak = signals.judge_weight(0.9, 100.0), signals.judge_weight(0.55, 100.0)
    share = round(strong / (strong + weak), 4)
    judges = {j.peer_id: j for j in prov.judges}
    assert set(judges) == {good_judge, bad_judge}  # never an author
    assert judges[good_judge].pick.peer_id == paris and judges[bad_judge].pick.peer_id == lyon
    rows = {r.peer_id: r for r in prov.respondents}
    assert rows[paris].signals["judge"] == share and rows[lyon].signals["judge"] == round(1 - share, 4)
    assert prov.chosen.peer_id == paris and result.text == "The capital of France is Paris."
    rated = ratings_of(co)
    assert rated[paris].signal == "judge+agreement" and rated[paris].score > rated[lyon].score
    assert set(rated) == {paris, lyon}  # judges are not rated


async def test_feedback_rates_the_chosen_answer_once(nursery, tmp_path):
    nodes, co = await cluster(nursery, tmp_path, [capital("Paris")])
    api = nodes[0].api_url
    chat = {"model": "p2pnet", "messages": [{"role": "user", "content": QUESTION}], "respondents": 1}
    out = await trio.to_thread.run_sync(lambda: client.post_json(api + "/v1/chat/completions", chat))
    query_id = out["p2pnet"]["query_id"]
    assert len(co.ratings) == 0  # one answer: no agreement evidence

    def feedback(body):
        return client.post_json(api + "/v1/feedback", body)

    got = await trio.to_thread.run_sync(feedback, {"query_id": query_id, "accept": False})
    assert got["recorded"] is True and got["respondent"] == nodes[1].peer_id
    assert "keeps no ledger" in got["note"]  # queued, and the reply says no block will take it yet
    rating = ratings_of(co)[nodes[1].peer_id]
    assert (rating.signal, rating.score, rating.domain) == ("feedback", 0.0, "general")
    assert rating.answer_hash == hashlib.sha256(b"The capital of France is Paris.").digest()
    for body, status in (({"query_id": query_id, "accept": True}, 409),
                         ({"query_id": "00" * 16, "accept": True}, 404),
                         ({"query_id": query_id, "accept": "yes"}, 400),
                         ({"query_id": query_id}, 400)):
        with pytest.raises(HttpError) as exc:
            await trio.to_thread.run_sync(feedback, body)
        assert exc.value.status == status
    assert len(co.ratings) == 1


RUN = "import sys; from p2pnet_cli.main import main; main(sys.argv[1:])"


def p2pnet(*args, stdin=""):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-c", RUN, *args], input=stdin, capture_output=True, text=True,
                          timeout=120)


async def test_cli_ask_feedback_then_repeat_is_refused(nursery, tmp_path):
    nodes, co = await cluster(nursery, tmp_path, [capital("Paris")])
    api = nodes[0].api_url
    out = await trio.to_thread.run_sync(lambda: p2pnet("ask", "--api", api, "--no-stream", "--feedback", QUESTION,
                                                       stdin="r\n"))
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("The capital of France is Paris.")
    query_id = re.search(r"query: ([0-9a-f]{32})", out.stderr).group(1)
    assert "feedback reject" in out.stderr and "recorded" in out.stderr
    rating = ratings_of(co)[nodes[1].peer_id]
    assert (rating.signal, rating.score) == ("feedback", 0.0)
    again = await trio.to_thread.run_sync(lambda: p2pnet("feedback", query_id, "accept", "--api", api))
    assert again.returncode != 0 and "409" in again.stderr
