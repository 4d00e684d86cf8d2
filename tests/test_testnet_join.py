"""Joining and consensus across real network stacks (issue 20, item 4, the
tests without NAT traversal): real node processes in namespaces, started by
`testnet up` through the network spec it writes.

One testnet serves the tests in order: four validator servers (server0-3)
and laptop0 behind a home NAT, scripted experts on server1-3 (server0 and the
laptop host none, so their answers cross the network), empty blocks every
second so the chain moves on its own. The last test takes it down and checks
that nothing is left. Needs root, ip, nft and tc (CI has them)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from p2pnet import netspec
from p2pnet.errors import P2PNetError
from p2pnet_testnet import netns, nsexec, swarm
from p2pnet_testnet.nsexec import wait_until

SCRIPTED = "model=scripted:wrong,id=server-expert"
SERVERS = ["server0", "server1", "server2", "server3"]
TOOLS = [t for t in ("ip", "nft", "tc") if netns._which(t) is None]
pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    os.geteuid() != 0 or bool(TOOLS),
    reason="needs root and ip/nft/tc: " + ("not root" if os.geteuid() != 0 else f"missing {', '.join(TOOLS)}"))]


def cli(*args, check=True, timeout=120):
    out = subprocess.run([sys.executable, "-m", "p2pnet_cli", *map(str, args)], capture_output=True, text=True,
                         timeout=timeout)
    if check:
        assert out.returncode == 0, out.stdout + out.stderr
    return out


def root_state(prefix):
    """What this testnet could leave in the machine's own namespace: its
    namespaces, links named with its prefix, nftables tables. (Other
    testnets may come and go meanwhile: only this one's names count.)"""
    links = [line for line in netns._run("ip", "-o", "link").stdout.splitlines() if prefix in line]
    return netns.our_namespaces(prefix), links, netns._run("nft", "list", "tables").stdout


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    d = tmp_path_factory.mktemp("join") / "tn"
    before = root_state(netns.prefix_for(d))
    started = time.monotonic()
    out = netns.up(5, d, nat=1, validators=4, experts=[SCRIPTED], host_experts={"server0": [], "laptop0": []},
                   genesis_params={"create_empty_blocks_interval_ms": 1000}, timeout_s=150)
    print(f"testnet of 5 up in {time.monotonic() - started:.1f}s")
    try:
        yield {"dir": d, "up": out, "before": before, "ns": {h["name"]: h["netns"] for h in out["hosts"]},
               "ids": {h["name"]: h["peer_id"] for h in out["hosts"]},
               "data": {h["name"]: h["data_dir"] for h in out["hosts"]}}
    finally:
        if (d / netns.STATE_FILE).exists():
            netns.down(d)


def status(net, name):
    try:
        return netns.api_get(net["ns"][name], "/status", timeout=5)
    except (P2PNetError, OSError):
        return None


def heights(net, names):
    return {n: (status(net, n) or {}).get("height", -1) for n in names}


def consensus_received(net, name):
    from p2pnet.gossip import topics

    return ((status(net, name) or {}).get("counters", {}).get("received", {})).get(topics.CONSENSUS, 0)


def block_hash(net, name, height):
    return netns.api_get(net["ns"][name], f"/ledger/block?height={height}")["hash"]


def one_chain(net, names):
    """Every block up to the lowest common height is the same on every node."""
    top = min(heights(net, names).values())
    for h in range(1, top + 1):
        hashes = {block_hash(net, n, h) for n in names}
        assert len(hashes) == 1, f"fork at height {h}: {hashes}"
    return top


def ask(net, name, question):
    body = {"model": "p2pnet", "messages": [{"role": "user", "content": question}], "max_tokens": 16,
            "deadline_s": 60}
    return nsexec.api_post(net["ns"][name], "/v1/chat/completions", body, timeout=90)


def verified_everywhere(net, names, running=True):
    """`ledger verify` on each node's LMDB. ``verify_chain`` reads the height
    and the stored state in separate read transactions, so beside a node
    that commits a block meanwhile it can report a false mismatch: each
    running node is paused (SIGSTOP) for its check, one at a time (the other
    three keep the quorum), and resumed."""
    pids = {h["name"]: h["pid"] for h in netns.load_state(net["dir"])["hosts"]} if running else {}
    for n in names:
        if running:
            os.kill(pids[n], signal.SIGSTOP)
        try:
            out = cli("ledger", "verify", "--data-dir", net["data"][n])
        finally:
            if running:
                os.kill(pids[n], signal.SIGCONT)
        assert out.stdout.startswith("OK"), f"{n}: {out.stdout}{out.stderr}"


def test_every_node_joined_through_the_testnets_network_spec(net):
    spec = netspec.load_spec(net["dir"] / "network.json")
    assert netns.status(net["dir"])["network"] == str(net["dir"] / "network.json")
    assert spec.bootstrap_peers() == [net["ids"][s] for s in SERVERS]
    for name in [*SERVERS, "laptop0"]:
        st = status(net, name)
        assert st["network"] == spec.name and st["chain_id"] == spec.genesis.chain_id
        assert st["state"] == "ready"
    wait_until(lambda: min(heights(net, [*SERVERS, "laptop0"]).values()) >= 2, 60, "the chain to move")
    one_chain(net, SERVERS)


def test_a_2_2_split_commits_nothing_and_forks_nothing_then_resumes(net):
    d = net["dir"]
    cli("testnet", "partition", "--dir", d, "server0,server1,laptop0", "server2,server3")
    # a block whose precommits were already out may still land: allow one
    top = max(heights(net, SERVERS).values()) + 1
    seen = {n: consensus_received(net, n) for n in SERVERS}
    # each side keeps voting and re-sending its votes (every 1.5 s at round 0) but holds only half the
    # power: once every validator has heard 12 more consensus messages from its side, a whole network
    # would have committed several blocks (one a second)
    wait_until(lambda: all(consensus_received(net, n) >= seen[n] + 12 for n in SERVERS), 90,
               "both sides to keep voting during the split")
    during = heights(net, SERVERS)
    assert max(during.values()) <= top, during
    stuck = one_chain(net, SERVERS)  # no fork, even on the blocks that made it
    cli("testnet", "heal", "--dir", d)
    wait_until(lambda: min(heights(net, SERVERS).values()) >= max(during.values()) + 2, 120,
               "the chain to resume after the heal")
    assert one_chain(net, SERVERS) > stuck
    verified_everywhere(net, SERVERS)


def test_a_validator_cut_off_alone_falls_behind_then_catches_up(net):
    d = net["dir"]
    cli("testnet", "partition", "--dir", d, "server3")
    start = heights(net, SERVERS)
    wait_until(lambda: min(heights(net, SERVERS[:3]).values()) >= max(start.values()) + 3, 90,
               "the other three to commit three blocks")
    alone = heights(net, ["server3"])["server3"]
    assert alone <= start["server3"] + 1, (start, alone)
    cli("testnet", "heal", "--dir", d)
    target = max(heights(net, SERVERS[:3]).values())
    wait_until(lambda: heights(net, ["server3"])["server3"] >= target, 120, "server3 to catch up")
    one_chain(net, SERVERS)
    verified_everywhere(net, SERVERS)


def test_5_percent_loss_on_every_link_answers_all_20_queries(net):
    d = net["dir"]
    cli("testnet", "loss", "--dir", d, "5")
    try:
        start = max(heights(net, SERVERS).values())
        answered = []
        for i in range(20):
            out = ask(net, "server0", f"Question {i}: what is the capital of France?")
            ok = [r for r in out["p2pnet"]["respondents"] if r["status"] == "ok"]
            assert out["choices"][0]["message"]["content"] and ok, out["p2pnet"]
            assert all(r["peer_id"] != net["ids"]["server0"] for r in ok)  # server0 hosts no expert
            answered.append(i)
        assert len(answered) == 20
        wait_until(lambda: min(heights(net, SERVERS).values()) >= start + 2, 120, "blocks under 5% loss")
        one_chain(net, SERVERS)
    finally:
        cli("testnet", "loss", "--dir", d, "0")
    verified_everywhere(net, SERVERS)


def test_a_laptop_capped_at_1_mbit_joins_through_the_spec_and_gets_an_answer(net):
    d = net["dir"]
    cli("testnet", "kill", "--dir", d, "laptop0")
    wait_until(lambda: status(net, "laptop0") is None, 30, "laptop0's node to die")
    cli("testnet", "bandwidth", "--dir", d, "1mbit", "--host", "laptop0")
    args = next(h for h in netns.load_state(d)["hosts"] if h["name"] == "laptop0")["args"]
    assert args[args.index("--network") + 1] == str(d / "network.json") and "--bootstrap" not in args
    cli("testnet", "restart", "--dir", d, "laptop0", timeout=180)  # returns once it sees a bootstrap server
    rules = netns._run("tc", "-n", f"{net['up']['prefix']}-router0", "qdisc", "show", "dev", "wan").stdout
    assert "tbf" in rules and "rate 1Mbit" in rules, rules
    experts = {net["ids"][s] for s in ("server1", "server2", "server3")}

    def answered():
        out = cli("testnet", "exec", "--dir", d, "laptop0", "--", "p2pnet", "ask", "--json",
                  "What is the capital of France?", check=False)
        return out if out.returncode == 0 else None
    wait_until(answered, 90, "laptop0 to get an answer")
    reply = json.loads(answered().stdout)
    ok = [r for r in reply["p2pnet"]["respondents"] if r["status"] == "ok"]
    assert reply["choices"][0]["message"]["content"] and ok and {r["peer_id"] for r in ok} <= experts
    top = max(heights(net, SERVERS).values())
    wait_until(lambda: heights(net, ["laptop0"])["laptop0"] >= top, 120, "laptop0 to sync the chain at 1 Mbit/s")
    one_chain(net, [*SERVERS, "laptop0"])


def test_down_leaves_nothing_behind(net):
    d, prefix = net["dir"], net["up"]["prefix"]
    pids = [h["pid"] for h in netns.status(d)["hosts"]]
    cli("testnet", "down", "--dir", d)
    assert netns.our_namespaces(prefix) == []
    assert root_state(prefix) == net["before"] == ([], [], net["before"][2])
    assert not any(swarm._alive(pid) for pid in pids)
    tn_dir = str(d).encode()
    for pid in filter(str.isdigit, os.listdir("/proc")):  # no process of this testnet survived
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                assert tn_dir not in fh.read(), f"process {pid} of the testnet survived"
        except OSError:
            pass
    verified_everywhere(net, [*SERVERS, "laptop0"], running=False)  # still valid after the stop
