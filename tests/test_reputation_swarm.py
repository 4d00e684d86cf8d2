"""Multi-process: a real swarm of 4 validators hosting the real SmolLM2 model,
plus one deliberately bad expert (`model=scripted:wrong`, always wrong). The
validators' probes (questions with known answers, sent like user queries)
rate the experts; the bad expert's reputation falls below everyone else's and
the selection policy stops sending it user queries."""

import json
import subprocess
import sys

import pytest

from p2pnet.api import client
from p2pnet.api.errors import HttpError
from p2pnet_testnet import swarm

pytestmark = pytest.mark.slow


def reputation(api):
    out = subprocess.run([sys.executable, "-m", "p2pnet_cli", "reputation", "--api", api, "--json"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)["standings"]


def ask_retrying(api, body, experts, attempts=20):
    """Like a client that honours 503 ("busy"): the validators' probes keep the
    experts busy at times, so wait until one is free and ask again."""
    def one_free():
        return any(card["load"] < card["max_concurrency"]
                   for n in experts for card in client.get_json(n["api"] + "/status").get("experts", []))

    for attempt in range(attempts):
        try:
            return client.post_json(api + "/v1/chat/completions", body, timeout=240)
        except HttpError as exc:
            if exc.status != 503 or attempt == attempts - 1:
                raise
            swarm._wait(one_free, 60, "a free expert")


def test_probes_sink_a_bad_experts_reputation_and_traffic(tmp_path, model_cache, smollm2_path):
    sw = tmp_path / "sw"
    nodes = swarm.up(4, sw, validators=4, model_store=model_cache, timeout_s=300,
                     node_args=["--threads", "1", "--probe-interval", "2", "--log-level", "warning"],
                     extra_args={**{i: ["--expert", "model=smollm2-135m,concurrency=2"] for i in range(3)},
                                 3: ["--expert", "model=scripted:wrong,id=bad"]})
    try:
        bad = nodes[3]["peer_id"]
        api = nodes[1]["api"]  # the node whose ledger view we check is the one we query

        def committed_ratings():
            top = client.get_json(api + "/status")["height"]
            return [tx for h in range(1, top + 1)
                    for tx in client.get_json(api + f"/ledger/block?height={h}")["txs"] if "respondent" in tx]

        def evidence():
            """Probe scores committed so far, by respondent and by (respondent, domain)."""
            out = {}
            for tx in committed_ratings():
                if tx["signal"] == "probe":
                    out.setdefault(tx["respondent"], []).append(tx["score"])
                    out.setdefault((tx["respondent"], tx["domain"]), []).append(tx["score"])
            return out

        real = [n["peer_id"] for n in nodes[:3]]

        def bad_sunk():
            """In the querying node's ledger view: the bad expert has enough
            evidence in geography to be shut out (>= 2 ratings, below the 0.5
            floor), and some real expert is not."""
            rows = {(r["peer_id"], r["domain"]): r for r in reputation(api)}

            def shut_out(peer):
                row = rows.get((peer, "geography"))
                return row is not None and row["count"] >= 2 and row["score"] < 0.5

            return shut_out(bad) and not all(shut_out(p) for p in real)

        swarm._wait(bad_sunk, 400, "probes to sink the bad expert")
        ev = evidence()
        assert ev[bad] and set(ev[bad]) == {0.0}  # every probe it answered was graded wrong
        standings = reputation(api)
        assert all(r["score"] < 0.5 for r in standings if r["peer_id"] == bad), standings  # below the prior
        # user queries now go to the good experts only. The probes go on meanwhile, and
        # SmolLM2-135M misses many of them too, so real experts can sink as well; once all
        # have, every candidate is below the floor, the ledger cannot tell them from the bad
        # one, and the policy picks among them all (a flake, 1 run in 9, while this was
        # checked once before the three queries). So each query is asked only once the
        # ledger again shows a real expert above the floor; the selection reasons in the
        # assertion message say whether that still changed in between
        chosen, reasons = [], []
        for q in ("What is the capital of France?", "What is the capital of Italy?",
                  "What is the capital of Spain?"):
            swarm._wait(bad_sunk, 400, "a real expert above the floor, the bad one below it")
            body = {"model": "p2pnet", "messages": [{"role": "user", "content": q}], "max_tokens": 24,
                    "deadline_s": 200, "domain": "geography"}
            out = ask_retrying(api, body, nodes[:3])
            chosen += [r["peer_id"] for r in out["p2pnet"]["respondents"]]
            reasons.append(out["p2pnet"]["selection"])
        assert chosen and bad not in chosen, (reasons, reputation(nodes[1]["api"]))
        # this node's traffic shares (probes included) are reported beside the standings
        traffic = client.get_json(nodes[1]["api"] + "/reputation")["traffic"]
        assert traffic["queries"] >= 3 and set(traffic["share"]) >= set(chosen)
        out = subprocess.run([sys.executable, "-m", "p2pnet_cli", "reputation", "--api", nodes[1]["api"]],
                             capture_output=True, text=True, timeout=120)
        assert "traffic" in out.stdout and bad in out.stdout
    finally:
        swarm.down(sw)
