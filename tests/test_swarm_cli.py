"""`p2pnet swarm up`'s choice of validators, without starting processes: the
swarm library's ``up`` is replaced by one that records what it was asked."""

import json

import pytest
from click.testing import CliRunner

from p2pnet_testnet import swarm


@pytest.fixture
def asked(monkeypatch):
    calls = []

    def fake_up(n, swarm_dir, *, validators=0, **kwargs):
        calls.append({"n": n, "validators": validators})
        return [{"index": i, "peer_id": f"peer{i}", "api": f"http://127.0.0.1:{9000 + i}", "peers": []}
                for i in range(n)]

    monkeypatch.setattr(swarm, "up", fake_up)
    return calls


def invoke(tmp_path, *args):
    from p2pnet_cli.main import _register, cli

    _register()
    return CliRunner().invoke(cli, ["swarm", "up", "--no-experts", "--dir", str(tmp_path / "sw"), *args])


@pytest.mark.parametrize("nodes, expected", [(1, 1), (3, 3), (4, 4), (7, 4)])
def test_every_node_up_to_four_validates_by_default(tmp_path, asked, nodes, expected):
    out = invoke(tmp_path, "--nodes", str(nodes))
    assert out.exit_code == 0, out.output
    assert asked == [{"n": nodes, "validators": expected}]
    assert f"{expected} validator" in out.output and "the ledger" in out.output


def test_validators_zero_runs_without_a_ledger(tmp_path, asked):
    out = invoke(tmp_path, "--nodes", "3", "--validators", "0", "--json")
    assert out.exit_code == 0, out.output
    assert asked == [{"n": 3, "validators": 0}]
    assert json.loads(out.output)["validators"] == 0
