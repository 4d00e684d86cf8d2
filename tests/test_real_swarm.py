"""The real thing: a 3-process swarm hosting the real SmolLM2 model, asked
through one node's OpenAI-compatible API with the official `openai` client."""

import os
import signal
import threading

import openai
import pytest

from p2pnet.api import client as api_client
from p2pnet_testnet import swarm

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def real_swarm(tmp_path_factory, model_cache, smollm2_path):
    sw = tmp_path_factory.mktemp("real") / "sw"
    # node 0 only coordinates, so every answer comes from another node's expert
    nodes = swarm.up(3, sw, node_args=["--threads", "1"], extra_args={0: ["--no-experts"]},
                     model_store=model_cache, timeout_s=300)
    try:
        yield nodes
    finally:
        swarm.down(sw)


def test_openai_client_gets_a_real_answer_from_another_node(real_swarm):
    coord, experts = real_swarm[0], real_swarm[1:]
    client = openai.OpenAI(base_url=coord["api"] + "/v1", api_key="unused", max_retries=0, timeout=240)
    models = [m.id for m in client.models.list()]
    assert "smollm2-135m" in models
    resp = client.chat.completions.create(
        model="p2pnet", messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=48, extra_body={"respondents": 2, "deadline_s": 200})
    text = resp.choices[0].message.content
    assert "Paris" in text
    prov = resp.model_extra["p2pnet"]
    assert prov["chosen"]["peer_id"] in {n["peer_id"] for n in experts}
    assert resp.usage.completion_tokens > 0

    stream = client.chat.completions.create(
        model="smollm2-135m", messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=48, stream=True, extra_body={"respondents": 1, "deadline_s": 200})
    pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert "Paris" in "".join(pieces) and len([p for p in pieces if p]) > 1


def test_a_respondent_killed_mid_answer_is_gone_and_the_other_answers(real_swarm):
    """Runs last: it kills node 2. SIGKILL one of two respondents while it
    generates: its connection closes, so the coordinator stops waiting for it
    ("gone", not "slow" after its patience nor a timeout at the deadline) and
    delivers the other respondent's answer."""
    coord, keep, victim = real_swarm
    client = openai.OpenAI(base_url=coord["api"] + "/v1", api_key="unused", max_retries=0, timeout=240)
    result = {}

    def ask():
        try:
            result["resp"] = client.chat.completions.create(
                model="p2pnet", messages=[{"role": "user", "content": "Tell a long story about a dragon."}],
                max_tokens=400, extra_body={"respondents": 2, "deadline_s": 200})
        except Exception as exc:  # reported by the assertion below
            result["error"] = exc

    asking = threading.Thread(target=ask)
    asking.start()
    try:
        swarm._wait(lambda: api_client.get_json(victim["api"] + "/status")["experts"][0]["load"] > 0, 120,
                    "node 2 to generate")
    finally:
        os.kill(victim["pid"], signal.SIGKILL)
        asking.join(240)
    assert not asking.is_alive() and "error" not in result, result
    prov = result["resp"].model_extra["p2pnet"]
    assert {r["peer_id"]: r["status"] for r in prov["respondents"]} == {
        keep["peer_id"]: "ok", victim["peer_id"]: "gone"}, prov
    status = api_client.get_json(coord["api"] + "/status")
    assert status["respondents_gone"] == 1 and status["respondents_forgotten"] == 1
