"""The small-then-large cascade on the real SmolLM2 (through xllamacpp, with
token log-probabilities): confidence in [0, 1], escalation at threshold 1,
none at 0, and --local-only never publishing a Query."""

import dataclasses
import json
import subprocess
import sys
import types

import pytest
import trio

from p2pnet import config, wire
from p2pnet.experts import scripted
from p2pnet.experts.backend import Backend, GenerationResult, ModelInfo, confidence_from_logprobs
from p2pnet.experts.cascade import (
    LOCAL, LOGPROB, NETWORK, SELF_AGREEMENT, Cascade, CascadeSettings, should_escalate,
)
from p2pnet.experts.expert import Expert
from p2pnet.experts.llama import LlamaBackend, LlamaSettings
from p2pnet.node import Node
from p2pnet.query import ChatRequest, ChatResult, ExpertKey, NoExpertAvailable, Provenance

from .conftest_net import wait_for

RUN = "import sys; from p2pnet_cli.main import main; main(sys.argv[1:])"
TWO = ChatRequest("p2pnet", (("user", "What is 2+2?"),), max_tokens=8)


@pytest.fixture(scope="module")
def smol(smollm2_path):
    backend = LlamaBackend(smollm2_path, LlamaSettings(n_threads=2, n_ctx=512))
    backend.load()
    yield backend
    backend.close()


def p2pnet(*args):
    return subprocess.run([sys.executable, "-c", RUN, *args], capture_output=True, text=True, timeout=300)


class Network:
    """A fake escalation target that counts calls."""

    def __init__(self, fail=None):
        self.calls, self.fail = [], fail

    async def __call__(self, req):
        self.calls.append(req)
        if self.fail:
            raise self.fail
        return ChatResult("4", "stop", 5, 1, "q1", Provenance(chosen=ExpertKey("x", "e")))


def test_confidence_and_rule():
    assert confidence_from_logprobs([]) == 0.0
    assert confidence_from_logprobs([0.0, 0.0]) == 1.0
    assert confidence_from_logprobs([-0.5, -1.5]) == round(2.718281828 ** -1.0, 4)
    assert should_escalate(0.99, 1.0) and should_escalate(0.3, 0.5)
    assert not should_escalate(0.0, 0.0) and not should_escalate(0.5, 0.5)
    with pytest.raises(ValueError):
        CascadeSettings(threshold=1.5)


async def test_real_model_confidence_and_escalation(smol):
    net = Network()
    low = await Cascade(smol, net, CascadeSettings(threshold=0.0)).ask(TWO)
    assert low.path == LOCAL and low.local.method == LOGPROB and net.calls == []
    assert 0.0 <= low.confidence <= 1.0 and low.text.strip()
    high = await Cascade(smol, net, CascadeSettings(threshold=1.0)).ask(TWO)
    assert high.path == NETWORK and high.text == "4" and len(net.calls) == 1
    assert 0.0 <= high.confidence <= 1.0 and high.to_json()["network"]["query_id"] == "q1"


async def test_network_failure_keeps_the_local_answer(smol):
    net = Network(fail=NoExpertAvailable("nobody"))
    result = await Cascade(smol, net, CascadeSettings(threshold=1.0)).ask(TWO)
    assert result.path == LOCAL and "network failed" in result.reason and len(net.calls) == 1


class Alternating(Backend):
    """Greedy answers "Paris."; sampled answers alternate Paris / Lyon."""

    name = "alternating"

    def __init__(self):
        self.n = 0

    def load(self): pass
    def close(self): pass
    def info(self): return ModelInfo("alt", "0" * 64, "none", 512, "alternating")

    def generate(self, messages, *, max_tokens, temperature=0.0, deadline=None, on_token=None, cancel=None):
        if temperature == 0.0:
            return GenerationResult("Paris.", "stop", 3, 2)
        self.n += 1
        return GenerationResult("Paris." if self.n % 2 else "Lyon.", "stop", 3, 2)


async def test_a_prompt_longer_than_the_local_context(smol):
    """local-only: 400 (the prompt is at fault), not 500; a cascade escalates it instead."""
    from p2pnet.query import BadQuery

    long = ChatRequest("p2pnet", (("user", "hello " * 600),), max_tokens=8)  # the fixture's n_ctx is 512
    with pytest.raises(BadQuery, match="context"):
        await Cascade(smol, None, CascadeSettings(local_only=True)).ask(long)
    network = Network()
    out = await Cascade(smol, network, CascadeSettings()).ask(long)
    assert (out.path, len(network.calls)) == (NETWORK, 1) and out.local.refused


async def test_self_agreement_without_logprobs():
    result = await Cascade(Alternating(), Network(), CascadeSettings(threshold=0.0, samples=3)).ask(TWO)
    assert (result.local.method, result.confidence) == (SELF_AGREEMENT, 0.5)
    same = scripted.ScriptedBackend({"What is 2+2?": "4"})
    result = await Cascade(same, Network(), CascadeSettings(threshold=0.9)).ask(TWO)
    assert (result.local.method, result.confidence, result.path) == (SELF_AGREEMENT, 1.0, LOCAL)


async def test_local_only_publishes_no_query(nursery, tmp_path, smol, model_cache):
    coord = await _node(nursery, tmp_path, "coord")
    expert = Expert("scripted", scripted.ScriptedBackend({"What is 2+2?": "2 + 2 = 4"}), domains=("general",))
    await _node(nursery, tmp_path, "n1", expert, (coord.network.listen_addrs[0],))
    co = next(s.coordinator for s in coord.services if hasattr(s, "coordinator"))
    await wait_for(lambda: len(co.directory.all(co.clock())) == 1, 30, "the expert's announcement")
    published = _spy_publish(coord)
    local = await Cascade(smol, co.chat, CascadeSettings(threshold=1.0, local_only=True)).ask(TWO)
    assert local.path == LOCAL and "local only" in local.reason
    assert not any(isinstance(m, wire.Query) for m in published)
    # the same cascade without --local-only does send it (the spy sees queries)
    remote = await Cascade(smol, co.chat, CascadeSettings(threshold=1.0)).ask(TWO)
    assert remote.path == NETWORK and remote.text == "2 + 2 = 4"
    assert sum(isinstance(m, wire.Query) for m in published) == 1
    # the command escalates through the node's HTTP API
    out = await trio.to_thread.run_sync(lambda: p2pnet(
        "ask", "--cascade", "--threshold", "1", "--api", coord.api_url, "--model-store", str(model_cache),
        "--max-tokens", "8", "--json", "What is 2+2?"))
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)  # the shape of `ask --json`, the cascade's account under p2pnet
    how = got["p2pnet"]["cascade"]
    assert (how["path"], got["choices"][0]["message"]["content"], how["method"]) == (NETWORK, "2 + 2 = 4", LOGPROB)
    assert 0.0 <= how["confidence"] <= 1.0 and len(got["p2pnet"]["query_id"]) == 32
    assert got["object"] == "chat.completion" and got["usage"]["completion_tokens"] > 0
    assert sum(isinstance(m, wire.Query) for m in published) == 2


def test_cli_cascade_local_only(model_cache, smollm2_path, tmp_path):
    out = p2pnet("ask", "--local-only", "--model-store", str(model_cache),
                 "--data-dir", str(tmp_path), "--max-tokens", "8", "What is 2+2?")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip()
    assert "answered by: local (local confidence" in out.stderr and "local only" in out.stderr
    assert "threshold" not in out.stderr  # it plays no part
    # options that only shape a network answer are refused before the model loads
    out = p2pnet("ask", "--local-only", "-k", "2", "--threshold", "1", "--data-dir", str(tmp_path), "What is 2+2?")
    assert out.returncode == 2 and out.stderr == (
        "p2pnet: error: --respondents, --threshold only apply to answers from the network; "
        "--local-only never asks it\n")
    out = p2pnet("ask", "--local-only", "--json", "--model-store", str(model_cache), "--data-dir", str(tmp_path),
                 "--max-tokens", "8", "What is 2+2?")
    got = json.loads(out.stdout)
    assert got["choices"][0]["message"]["content"].strip() and got["p2pnet"]["cascade"]["path"] == LOCAL


def test_cli_cascade_with_no_node_running_keeps_the_local_answer(model_cache, smollm2_path, tmp_path):
    out = p2pnet("ask", "--cascade", "--threshold", "1", "--model-store", str(model_cache),
                 "--data-dir", str(tmp_path), "--max-tokens", "8", "What is 2+2?")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip()
    assert "the network failed (no running node found" in out.stderr and "kept the local answer" in out.stderr
    bad = p2pnet("ask", "--cascade", "--api", "localhost:8700", "--model-store", str(model_cache), "What?")
    assert bad.returncode == 2 and "--api" in bad.stderr and not bad.stdout  # refused before the model runs


def test_cli_cascade_finds_the_model_the_local_swarm_pulled(model_cache, smollm2_path, tmp_path):
    """After the README's main command the default model lies in the swarm's
    directory only; `ask --cascade` with no store given finds it there."""
    import os

    env = {**os.environ, "P2PNET_HOME": str(tmp_path)}
    run = [sys.executable, "-c", RUN, "ask", "--local-only", "--max-tokens", "8", "What is 2+2?"]
    out = subprocess.run(run, capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 1 and "is not stored in" in out.stderr and "Traceback" not in out.stderr
    (tmp_path / "swarm").mkdir()
    (tmp_path / "swarm" / "models").symlink_to(model_cache / "models", target_is_directory=True)
    out = subprocess.run(run, capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() and "answered by: local" in out.stderr


# ------------------------------------------------------- the cascade over HTTP

async def _node(nursery, tmp_path, name, expert=None, boot=()):
    cfg = config.build(None, data_dir=tmp_path / name, listen=("/ip4/127.0.0.1/tcp/0",), api_port=0,
                       bootstrap=boot, announce_interval_s=0.5)
    experts = []
    if expert is not None:
        await expert.start()
        experts.append(expert)
    node = Node(cfg, experts=experts)
    await nursery.start(node.run)
    return node


def _spy_publish(node) -> list:
    """Every message ``node`` publishes or sends to respondents from now on, in order."""
    published = []
    real_publish = node.network.publish_nowait
    real_send = node.network.send_query_nowait

    def spy(topic, message):
        published.append(message)
        return real_publish(topic, message)

    def spy_send(query):
        published.append(query)
        return real_send(query)

    node.network.publish_nowait = spy
    node.network.send_query_nowait = spy_send
    return published


async def test_http_cascade_answers_locally_escalates_and_refuses(nursery, tmp_path):
    """The coordinating node hosts a (scripted) model that answers "Lyon";
    the network's one expert answers "Paris" in the query's domain."""
    from p2pnet.api import client
    from p2pnet.api.errors import HttpError

    question = "What is the capital of France?"
    local = Expert("local", scripted.ScriptedBackend({question: "Lyon."}), domains=("general",))
    coord = await _node(nursery, tmp_path, "coord", local)
    remote = Expert("remote", scripted.ScriptedBackend({question: "Paris."}), domains=("geography",))
    other = await _node(nursery, tmp_path, "n1", remote, (coord.network.listen_addrs[0],))
    co = next(s.coordinator for s in coord.services if hasattr(s, "coordinator"))
    await wait_for(lambda: any(r.peer == other.network.peer_id for r in co.directory.all(co.clock())), 30,
                   "the remote expert's announcement")
    published = _spy_publish(coord)

    def ask(api, **extra):
        body = {"model": "p2pnet", "domain": "geography", "max_tokens": 8,
                "messages": [{"role": "user", "content": question}], **extra}
        return client.post_json(api + "/v1/chat/completions", {k: v for k, v in body.items() if v is not None})

    async def post(api, **extra):
        return await trio.to_thread.run_sync(lambda: ask(api, **extra))

    # confident (the scripted model always agrees with itself): answered here, nothing sent
    out = await post(coord.api_url, cascade=True)
    info = out["p2pnet"]["cascade"]
    assert out["choices"][0]["message"]["content"] == "Lyon."
    assert (info["path"], info["method"], info["confidence"], info["threshold"]) == (LOCAL, SELF_AGREEMENT, 1.0, 0.5)
    assert not any(isinstance(m, wire.Query) for m in published)
    # a threshold of 1 always asks the network: the remote expert's answer, with its provenance
    out = await post(coord.api_url, cascade_threshold=1.0)
    assert out["choices"][0]["message"]["content"] == "Paris."
    assert out["p2pnet"]["cascade"]["path"] == NETWORK and out["p2pnet"]["cascade"]["local_text"] == "Lyon."
    assert out["p2pnet"]["chosen"]["peer_id"] == other.peer_id
    assert sum(isinstance(m, wire.Query) for m in published) == 1
    # local only: never sent
    out = await post(coord.api_url, local_only=True, domain=None)
    assert out["choices"][0]["message"]["content"] == "Lyon."
    assert "local only" in out["p2pnet"]["cascade"]["reason"]
    assert sum(isinstance(m, wire.Query) for m in published) == 1
    # without the cascade keys the request is an ordinary network query
    out = await post(coord.api_url)
    assert out["choices"][0]["message"]["content"] == "Paris." and "cascade" not in out["p2pnet"]
    # bad values, and a node that hosts no model
    bare = await _node(nursery, tmp_path, "bare", None, (coord.network.listen_addrs[0],))
    for api, extra, status, code in ((coord.api_url, {"cascade": "yes"}, 400, "invalid_type"),
                                     (coord.api_url, {"cascade_threshold": 1.5}, 400, "invalid_value"),
                                     (coord.api_url, {"model": "nope", "local_only": True, "domain": None}, 404,
                                      "model_not_found"),
                                     # keys that only shape a network answer are refused, not ignored
                                     (coord.api_url, {"local_only": True, "domain": None, "cascade_threshold": 1.0},
                                      400, "unsupported_value"),
                                     (coord.api_url, {"local_only": True}, 400, "unsupported_value"),
                                     (bare.api_url, {"cascade": True}, 400, "cascade_unavailable")):
        with pytest.raises(HttpError) as exc:
            await post(api, **extra)
        assert (exc.value.status, exc.value.code) == (status, code), exc.value


async def test_cascade_answers_take_a_slot_of_the_hosted_expert():
    """A cascade's local generation counts in the expert's advertised load and
    its concurrency limit: a network query meanwhile is turned away busy, a
    second cascade request goes straight to the network, a local-only one is busy."""
    from p2pnet.experts.backend import Speed
    from p2pnet.experts.cascade import BUSY, CascadingService
    from p2pnet.query import Busy

    release = trio.Event()

    class Slow(scripted.ScriptedBackend):
        async def agenerate(self, *args, **kwargs):
            await release.wait()
            return await super().agenerate(*args, **kwargs)

    expert = Expert("slow", Slow({"What is 2+2?": "4"}), domains=("general",), max_concurrency=1)
    await expert.start(Speed(100.0, 10.0))
    network = Network()
    service = CascadingService(types.SimpleNamespace(chat=network, requested_model=lambda req: None), [expert])
    req = ChatRequest("p2pnet", (("user", "What is 2+2?"),), max_tokens=8, cascade=True)
    results = []
    async with trio.open_nursery() as nursery:
        async def first():
            results.append(await service.chat(req))

        nursery.start_soon(first)
        await wait_for(lambda: expert.load == 1, 10, "the first cascade answer to start")
        assert expert.card().load == 1 and service.running == 1
        prompt = wire.PromptBody((wire.ChatMessage("user", "What is 2+2?"),), max_tokens=8)
        with trio.fail_after(10):  # without the bounds a regression would wait: fail, not hang
            turned_away = await expert.answer(b"q" * 16, prompt, timeout=5.0)
            escalated = await service.chat(req)
        assert turned_away.status == "busy", turned_away
        cascade = escalated.provenance.cascade
        assert (escalated.text, cascade["path"], cascade["method"]) == ("4", NETWORK, BUSY), cascade
        assert "local model busy" in cascade["reason"] and len(network.calls) == 1
        with pytest.raises(Busy), trio.fail_after(10):
            await service.chat(dataclasses.replace(req, local_only=True))
        assert len(network.calls) == 1  # local-only never reaches the network
        release.set()
    assert results[0].text == "4" and results[0].provenance.cascade["path"] == LOCAL
    assert service.status()["cascade_answered_locally"] == 1 and service.status()["cascade_escalated"] == 1
    assert service.running == 0 and expert.load == 0
    await expert.aclose()
