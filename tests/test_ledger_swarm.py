"""Multi-process: 4 validator processes commit blocks of the rating records
that real queries (the real SmolLM2 model) produce; one validator is SIGKILLed,
restarts, catches up, and `p2pnet ledger verify` passes on every node."""

import json
import signal
import subprocess
import sys

import pytest

from p2pnet.api import client
from p2pnet_testnet import swarm

pytestmark = pytest.mark.slow


def cli(*args):
    return subprocess.run([sys.executable, "-m", "p2pnet_cli", *args], capture_output=True, text=True, timeout=300)


def height(node):
    return client.get_json(node["api"] + "/status").get("height", -1)


def ask(api, question):
    # sampled (temperature > 0): copies of one model then answer independently, so their
    # agreement is evidence and rated (at temperature 0 they count as one answer, unrated)
    body = {"model": "p2pnet", "messages": [{"role": "user", "content": question}], "respondents": 3,
            "max_tokens": 24, "deadline_s": 200, "temperature": 0.7}
    return client.post_json(api + "/v1/chat/completions", body, timeout=240)


def test_validators_commit_real_ratings_and_survive_a_sigkill(tmp_path, model_cache, smollm2_path):
    sw = tmp_path / "sw"
    nodes = swarm.up(4, sw, validators=4, node_args=["--threads", "1"], model_store=model_cache, timeout_s=300)
    try:
        out = ask(nodes[0]["api"], "What is the capital of France?")
        assert out["choices"][0]["message"]["content"]
        # the coordinator rates every respondent but its own node's expert
        rated = {r["peer_id"] for r in out["p2pnet"]["respondents"]
                 if r["score"] is not None and r["peer_id"] != nodes[0]["peer_id"]}
        assert rated, out["p2pnet"]
        # the coordinator's ratings reach a committed block on every validator
        swarm._wait(lambda: all(
            len(json.loads(cli("reputation", "--api", n["api"], "--json").stdout)["standings"]) >= len(rated)
            for n in nodes), 120, "ratings committed everywhere")
        standings = json.loads(cli("reputation", "--api", nodes[3]["api"], "--json").stdout)["standings"]
        assert {s["peer_id"] for s in standings} == rated

        killed = swarm.kill_node(sw, 3, signal.SIGKILL)
        swarm._wait(lambda: not swarm._alive(killed), 30, "node 3 to die")
        before = height(nodes[0])
        ask(nodes[0]["api"], "What is the capital of Italy?")  # 3 of 4 validators keep committing
        swarm._wait(lambda: height(nodes[0]) > before, 120, "a commit without node 3")

        swarm.restart_node(sw, 3)
        nodes[3] = next(n for n in swarm.status(sw) if n["index"] == 3)  # a new API port
        target = height(nodes[0])
        swarm._wait(lambda: height(nodes[3]) >= target, 120, "node 3 to catch up")
        ask(nodes[1]["api"], "What is the capital of Spain?")
        top = height(nodes[1])
        swarm._wait(lambda: all(height(n) >= top for n in nodes), 120, "all at the same height")
        hashes = {json.loads(cli("ledger", "show", str(top), "--api", n["api"], "--json").stdout)["hash"] for n in nodes}
        assert len(hashes) == 1  # one chain
    finally:
        swarm.down(sw)
    for n in nodes:
        res = cli("ledger", "verify", "--data-dir", n["data_dir"])
        assert res.returncode == 0 and res.stdout.startswith("OK"), res.stdout + res.stderr
