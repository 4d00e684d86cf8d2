"""The real default model behind a NAT: a question asked on a laptop behind a
symmetric NAT is answered by SmolLM2 hosted on another laptop behind an
endpoint-independent NAT, through a relay, in the namespace testnet. Needs
root, ip, nft and tc, and the model (downloaded once into the test model
cache, as tests/test_real_swarm.py does)."""

import json
import os
import subprocess
import time

import pytest

from p2pnet_testnet import netns

TOOLS = [t for t in ("ip", "nft", "tc") if netns._which(t) is None]
pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or bool(TOOLS),
    reason="needs root and ip/nft/tc: " + ("not root" if os.geteuid() != 0 else f"missing {', '.join(TOOLS)}"))


def test_real_model_on_a_natted_laptop_answers_the_other_laptop(tmp_path, model_cache, smollm2_path):
    d = tmp_path / "tn"
    out = netns.up(5, d, nat=2, symmetric=1, validators=0, experts=[], model_store=model_cache,
                   host_experts={"laptop1": ["model=smollm2-135m,id=laptop-model,domains=natreal"]}, timeout_s=300)
    try:
        ids = {h["name"]: h["peer_id"] for h in out["hosts"]}
        ns0 = {h["name"]: h["netns"] for h in out["hosts"]}["laptop0"]

        def path_to_laptop1():
            try:
                peers = netns.api_get(ns0, "/peers")["peers"]
            except Exception:
                return None
            return next((p.get("path") for p in peers if p["peer_id"] == ids["laptop1"]), None)

        deadline = time.monotonic() + 120
        while path_to_laptop1() != "relayed":  # laptop0 dials laptop1 through a relay
            assert time.monotonic() < deadline, "laptop0 never reached laptop1 through a relay"
            time.sleep(0.5)
        argv, env = netns.exec_command(d, "laptop0", ["p2pnet", "ask", "--json", "--domain", "natreal",
                                                      "--deadline", "120", "What is the capital of France?"])
        deadline = time.monotonic() + 120
        while True:  # until laptop0 has heard laptop1's announcement (through the servers)
            res = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=200)
            if res.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert res.returncode == 0, res.stderr
        answer = json.loads(res.stdout)
        assert answer["choices"][0]["message"]["content"].strip()
        prov = answer["p2pnet"]
        assert prov["chosen"] == {"peer_id": ids["laptop1"], "expert_id": "laptop-model"}
        assert prov["paths"] == {ids["laptop1"]: "relayed"}  # laptop0's NAT is symmetric: no hole punch
    finally:
        netns.down(d)
