"""Multi-process: real node processes on 127.0.0.1, started through the same
code as `p2pnet swarm up`, and the CLI run as a user would run it."""

import json
import os
import signal
import subprocess
import sys

import pytest

from p2pnet.api import client
from p2pnet_testnet import swarm

pytestmark = pytest.mark.slow


def cli(*args, check=True):
    out = subprocess.run([sys.executable, "-m", "p2pnet_cli", *args], capture_output=True, text=True, timeout=300)
    if check:
        assert out.returncode == 0, out.stderr
    return out


def wait_until(cond, timeout_s, what):
    swarm._wait(cond, timeout_s, what)


@pytest.fixture
def four_nodes(tmp_path):
    nodes = swarm.up(4, tmp_path / "sw", node_args=["--no-experts"], timeout_s=120)
    try:
        yield tmp_path / "sw", nodes
    finally:
        pids = [n["pid"] for n in nodes]
        swarm.down(tmp_path / "sw")
        for pid in pids:
            assert not swarm._alive(pid), f"node process {pid} survived swarm down"


def messages(api):
    return client.get_json(api + "/messages")["messages"]


def test_publish_exactly_once_then_survive_a_sigkill(four_nodes):
    sw, nodes = four_nodes
    out = json.loads(cli("swarm", "status", "--dir", str(sw), "--json").stdout)
    assert len(out["nodes"]) == 4
    for entry in out["nodes"]:
        assert {"peer_id", "api", "pid", "data_dir", "peers"} <= set(entry)
        assert len(entry["peers"]) == 3 and entry["peer_id"] not in entry["peers"]
    st = json.loads(cli("status", "--api", nodes[2]["api"], "--json").stdout)
    assert sorted(st["peers"]) == sorted(n["peer_id"] for n in nodes if n["index"] != 2)

    sender, others = nodes[0], nodes[1:]
    for i in range(20):
        assert client.post_json(sender["api"] + "/broadcast", {"text": f"first-{i}"})["ok"]
    wait_until(lambda: all(len(messages(n["api"])) >= 20 for n in others), 60, "first round")
    for n in others:
        texts = [m["text"] for m in messages(n["api"])]
        assert sorted(texts) == sorted(f"first-{i}" for i in range(20)), n  # every one, exactly once

    killed = swarm.kill_node(sw, 3, signal.SIGKILL)
    wait_until(lambda: not swarm._alive(killed), 30, "node 3 to die")
    for i in range(20):
        assert client.post_json(sender["api"] + "/broadcast", {"text": f"second-{i}"})["ok"]
    survivors = nodes[1:3]
    wait_until(lambda: all(len(messages(n["api"])) >= 40 for n in survivors), 60, "second round")
    for n in survivors:
        texts = [m["text"] for m in messages(n["api"])]
        assert sorted(t for t in texts if t.startswith("second")) == sorted(f"second-{i}" for i in range(20))
        assert len(texts) == 40


def test_cli_errors_are_one_line(tmp_path):
    out = cli("status", "--data-dir", str(tmp_path / "nothing"), check=False)
    assert out.returncode != 0
    assert out.stderr.strip().count("\n") == 0 and "Traceback" not in out.stderr
    assert "no running node" in out.stderr
    out = cli("node", "start", "--data-dir", str(tmp_path / "n"), "--listen", "garbage", check=False)
    assert out.returncode != 0 and "Traceback" not in out.stderr and "listen" in out.stderr
    out = cli("swarm", "down", "--dir", str(tmp_path / "none"), check=False)
    assert out.returncode != 0 and "no swarm" in out.stderr and "Traceback" not in out.stderr
    out = cli("swarm", "status", "--dir", str(tmp_path / "none"), "--json", check=False)
    assert out.returncode == 1 and out.stderr == ""  # a script still gets JSON on stdout
    assert json.loads(out.stdout) == {"dir": str(tmp_path / "none"), "nodes": [],
                                      "error": f"no swarm in {tmp_path / 'none'} (start one with `p2pnet swarm up`)"}
    key = tmp_path / "k"
    cli("node", "id", "--data-dir", str(key))
    os.chmod(key / "node.key", 0o644)
    out = cli("node", "id", "--data-dir", str(key), check=False)
    assert out.returncode != 0 and "chmod 600" in out.stderr and "Traceback" not in out.stderr


def test_sigterm_flushes_acknowledged_messages(four_nodes):
    """Messages the API acknowledged are delivered even when SIGTERM comes right after."""
    sw, nodes = four_nodes
    for i in range(50):
        assert client.post_json(nodes[0]["api"] + "/broadcast", {"text": f"m{i}"})["ok"]
    pid = swarm.kill_node(sw, 0, signal.SIGTERM)
    wait_until(lambda: not swarm._alive(pid), 30, "node 0 to exit")
    log = open(os.path.join(nodes[0]["data_dir"], "node.log")).read()
    assert "received SIGTERM" in log and "Traceback" not in log
    assert "shutdown: 3 of 3 peers confirmed our last message" in log, log[-2000:]
    for n in nodes[1:]:  # confirmed means read off the wire; handlers may still be running
        wait_until(lambda n=n: len(messages(n["api"])) >= 50, 60, f"delivery to node {n['index']}")
        assert sorted(m["text"] for m in messages(n["api"])) == sorted(f"m{i}" for i in range(50))


def test_swarm_genesis_is_kept_for_the_same_validators_and_old_ledgers_are_set_aside(tmp_path):
    from p2pnet.consensus.genesis import load_genesis
    from p2pnet.consensus.store import Ledger
    from p2pnet.identity import load_or_create

    dirs = [tmp_path / f"node{i}" for i in range(3)]
    keys = [load_or_create(d).public_key for d in dirs]
    said = []
    path = swarm.prepare_genesis(tmp_path, dirs, keys[:2], said.append)
    first = load_genesis(path)
    Ledger.open(dirs[0] / "ledger", genesis=first).close()
    # `swarm up` again with the same validators: the same chain, the ledger stays
    assert swarm.prepare_genesis(tmp_path, dirs, keys[:2], said.append) == path
    assert load_genesis(path) == first and (dirs[0] / "ledger" / "data.mdb").exists()
    assert "the ledgers carry on" in said[-1]
    # other validators: a new chain, and the old chain's ledger is moved aside, not lost
    swarm.prepare_genesis(tmp_path, dirs, keys, said.append)
    second = load_genesis(path)
    assert second.chain_id != first.chain_id and len(second.validators) == 3
    assert not (dirs[0] / "ledger").exists()
    with Ledger.open(dirs[0] / f"ledger.{first.chain_id}", readonly=True) as old:
        assert old.genesis == first
    # a ledger of some other chain beside a kept genesis is moved aside too
    Ledger.open(dirs[1] / "ledger", genesis=first).close()
    swarm.prepare_genesis(tmp_path, dirs, keys, said.append)
    assert load_genesis(path) == second and (dirs[1] / f"ledger.{first.chain_id}").exists()
    assert sum("moved the ledger of another chain aside" in line for line in said) == 2
    # a ledger this release cannot read (a reputation state of another release's format, as
    # after the format-4 rater rule) beside the kept genesis: moved aside too, and said so
    import lmdb
    Ledger.open(dirs[2] / "ledger", genesis=second).close()
    env = lmdb.open(str(dirs[2] / "ledger"), max_dbs=8)
    with env.begin(write=True) as txn:
        txn.put(b"app_state", b"\x95\x03", db=env.open_db(b"meta", txn=txn))
    env.close()
    swarm.prepare_genesis(tmp_path, dirs, keys, said.append)
    assert (dirs[2] / "ledger.unreadable").exists() and not (dirs[2] / "ledger").exists()
    assert "a ledger this release cannot read" in said[-2] and "ledger.unreadable" in said[-2]
