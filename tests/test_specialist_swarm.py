"""A swarm of specialists: `p2pnet swarm up` gives each node a different
expert by default (chemistry, geography, a bare generalist, units, in turn),
and a question without a domain is answered by the expert that knows it, on
the real default model."""

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from p2pnet.experts import grading, knowledge_build
from p2pnet.experts.knowledge import KnowledgeBase
from p2pnet.experts.spec import parse_expert_spec
from p2pnet_testnet import swarm


@pytest.mark.parametrize("n, layout", [
    (1, ["general"]), (2, ["chemistry", "general"]), (3, ["chemistry", "geography", "general"]),
    (4, ["chemistry", "geography", "general", "units"]),
    (6, ["chemistry", "geography", "general", "units", "chemistry", "geography"]),
])
def test_every_swarm_has_specialists_and_a_generalist(n, layout):
    assert swarm.expert_layout(n) == layout


def test_default_experts_are_valid_specs_with_installed_knowledge():
    args = swarm.default_expert_args(4)
    specs = {i: parse_expert_spec(a[1]) for i, a in args.items()}
    assert all(a[0] == "--expert" for a in args.values())
    assert specs[2].knowledge == "" and specs[2].domains == ("general",) and specs[2].model == "smollm2-135m"
    for i, name in ((0, "chemistry"), (1, "geography"), (3, "units")):
        spec = specs[i]
        assert (spec.model, spec.domains, spec.id) == ("smollm2-135m", (name,), name)
        assert KnowledgeBase.load(spec.knowledge).name == name  # found from the installed package


def test_a_missing_knowledge_base_is_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(knowledge_build, "shipped_dir", lambda: tmp_path)
    with pytest.raises(swarm.SwarmError, match="chemistry knowledge base is not installed"):
        swarm.expert_spec("chemistry")


@pytest.fixture
def asked(monkeypatch):
    calls = []

    def fake_up(n, swarm_dir, *, validators=0, node_args=(), extra_args=None, **kwargs):
        calls.append({"node_args": list(node_args), "extra_args": extra_args or {},
                      "probe_interval_s": kwargs.get("probe_interval_s")})
        return [{"index": i, "peer_id": f"peer{i}", "api": f"http://127.0.0.1:{9000 + i}", "peers": []}
                for i in range(n)]

    monkeypatch.setattr(swarm, "up", fake_up)
    monkeypatch.setattr("p2pnet_cli.swarm._ensure_models", lambda store, experts: None)
    return calls


def invoke(tmp_path, *args):
    from p2pnet_cli.main import _register, cli

    _register()
    return CliRunner().invoke(cli, ["swarm", "up", "--dir", str(tmp_path / "sw"), *args])


def test_swarm_up_gives_each_node_its_own_expert(tmp_path, asked):
    out = invoke(tmp_path, "--nodes", "3", "--json")
    assert out.exit_code == 0, out.output
    extra = asked[0]["extra_args"]
    assert [parse_expert_spec(extra[i][1]).id for i in range(3)] == ["chemistry", "geography", "smollm2-135m"]
    assert "--expert" not in asked[0]["node_args"]
    assert [n["expert"] for n in json.loads(out.output)["nodes"]] == ["chemistry", "geography", "general"]
    out = invoke(tmp_path, "--nodes", "3")
    assert "chemistry knowledge expert" in out.output and "bare generalist" in out.output


def test_swarm_validators_probe_every_30_s_by_default(tmp_path, asked):
    # the node's default (300 s) would leave a 3-node swarm's reputation flat for an hour
    assert invoke(tmp_path, "--nodes", "3").exit_code == 0
    assert invoke(tmp_path, "--nodes", "3", "--probe-interval", "5").exit_code == 0
    assert [c["probe_interval_s"] for c in asked] == [30.0, 5.0]
    assert invoke(tmp_path, "--nodes", "3", "--probe-interval", "0").exit_code != 0


def test_up_gives_validators_the_probe_interval(tmp_path, monkeypatch):
    launched = []

    class Proc:
        pid, returncode = 4242, None

        def poll(self):
            return None

    monkeypatch.setattr(swarm, "_launch", lambda args, log_path: launched.append(args) or Proc())
    monkeypatch.setattr(swarm, "_node_status", lambda d: None)
    monkeypatch.setattr(swarm, "down", lambda *a, **k: [])
    monkeypatch.setattr(swarm, "_wait", lambda *a, **k: (_ for _ in ()).throw(swarm.SwarmError("stop here")))
    with pytest.raises(swarm.SwarmError, match="stop here"):
        swarm.up(2, tmp_path / "sw", validators=1, probe_interval_s=30.0)
    (first,) = launched  # node 0 waits for itself to start: the stub stops there
    assert first[first.index("--probe-interval") + 1] == "30.0" and "--validator" in first


def test_expert_flag_still_overrides_the_default(tmp_path, asked):
    out = invoke(tmp_path, "--nodes", "3", "--expert", "model=smollm2-135m,domains=general")
    assert out.exit_code == 0, out.output
    assert asked[0]["extra_args"] == {}
    assert asked[0]["node_args"][:2] == ["--expert", "model=smollm2-135m,domains=general"]


def _ask(api, question):
    out = subprocess.run([sys.executable, "-m", "p2pnet_cli", "ask", "--api", api, "--json", "--max-tokens", "48",
                          "--deadline", "200", question], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.mark.slow
def test_a_question_without_a_domain_is_answered_by_its_specialist(tmp_path, model_cache, smollm2_path):
    """The real default model on three processes laid out as `swarm up` lays
    them out; `p2pnet ask` names no domain."""
    sw = tmp_path / "sw"
    nodes = swarm.up(3, sw, node_args=["--threads", "1"], extra_args=swarm.default_expert_args(3),
                     model_store=model_cache, timeout_s=300)
    try:
        experts = {n["peer_id"]: kind for n, kind in zip(nodes, swarm.expert_layout(3))}
        out = _ask(nodes[2]["api"], "What is the atomic number of tungsten?")  # asked at the generalist's node
        text, prov = out["choices"][0]["message"]["content"], out["p2pnet"]
        assert prov["routing"]["inferred"] and prov["domain"] == "chemistry"
        assert experts[prov["chosen"]["peer_id"]] == "chemistry" and prov["chosen"]["expert_id"] == "chemistry"
        assert grading.grade(text, grading.KnownAnswer("74", grading.NUMBER), "tungsten"), text
        assert "element/W" in prov["respondents"][0]["passages"]

        out = _ask(nodes[0]["api"], "What is the capital of France?")  # the README's question
        assert "Paris" in out["choices"][0]["message"]["content"], out
    finally:
        swarm.down(sw)
