"""The namespace testnet (`p2pnet testnet`): real namespaces, a real NAT and
real node processes with scripted experts. Needs root, ip, nft and tc (CI has
them); the rule-building and the not-root error are tested everywhere.

One testnet (3 servers, laptop0 behind a symmetric NAT, laptop1 behind an
endpoint-independent one) serves the tests in order; the last one takes it
down and checks that nothing is left."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from p2pnet_testnet import faults as faults_mod
from p2pnet_testnet import netns, nsexec, swarm
from p2pnet_testnet.nsexec import wait_until
from p2pnet_testnet.faults import Faults

SCRIPTED = "model=scripted:wrong,id=server-expert"
TOOLS = [t for t in ("ip", "nft", "tc") if netns._which(t) is None]
needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or bool(TOOLS),
    reason="needs root and ip/nft/tc: " + ("not root" if os.geteuid() != 0 else f"missing {', '.join(TOOLS)}"))


def cli(*args, check=True, env=None, timeout=120):
    out = subprocess.run([sys.executable, "-m", "p2pnet_cli", *args], capture_output=True, text=True,
                         timeout=timeout, env={**os.environ, **(env or {})})
    if check:
        assert out.returncode == 0, out.stderr
    return out


def root_state():
    """What the machine's own namespace shows: namespaces, links, nft tables."""
    return (netns._run("ip", "netns", "list").stdout, netns._run("ip", "-o", "link").stdout,
            netns._run("nft", "list", "tables").stdout)


# ---------------------------------------------------------------- no root needed

def test_not_root_is_one_clear_line(tmp_path):
    out = cli("testnet", "up", "--hosts", "2", "--dir", str(tmp_path / "tn"), check=False,
              env={netns.NOT_ROOT_ENV: "1"})
    assert out.returncode == 1
    assert out.stderr.strip().count("\n") == 0 and "Traceback" not in out.stderr
    assert "needs root" in out.stderr
    assert not (tmp_path / "tn").exists()


def test_fault_rules():
    public = {"server0": "198.18.0.1", "server1": "198.18.0.2", "laptop0": "198.18.1.1"}
    f = Faults()
    f.partition(["server0"], ["server1", "laptop0"], reject=True)
    f.set_loss(100, link=("laptop0", "server0"))
    f.set_loss(12.5, host="server1")
    f.set_loss(5)
    assert faults_mod.bridge_rules(f, public) == [
        "ip saddr { 198.18.0.1 } ip daddr { 198.18.0.2, 198.18.1.1 } drop",
        "ip saddr { 198.18.0.2, 198.18.1.1 } ip daddr { 198.18.0.1 } drop",
        "ip saddr 198.18.1.1 ip daddr 198.18.0.1 drop",
        "ip saddr 198.18.0.1 ip daddr 198.18.1.1 drop",
        "ip saddr 198.18.0.2 numgen random mod 10000 < 1250 drop",
        "ip daddr 198.18.0.2 numgen random mod 10000 < 1250 drop",
        "meta protocol ip numgen random mod 10000 < 500 drop",
    ]
    assert faults_mod.edge_rules("laptop0", f, public) == [
        "ip daddr { 198.18.0.1 } meta l4proto tcp reject with tcp reset", "ip daddr { 198.18.0.1 } reject"]
    assert Faults.from_json(json.loads(json.dumps(f.as_json()))) == f
    f.set_loss(0, link=("server0", "laptop0"))
    f.set_loss(0, host="server1")
    f.set_loss(0)
    f.partitions.clear()
    assert faults_mod.bridge_rules(f, public) == []
    assert faults_mod.tbf_args("1mbit")[:3] == ["tbf", "rate", "1000000bit"]
    for bad in ("fast", "1kbit", "-3mbit"):
        with pytest.raises(faults_mod.FaultError):
            faults_mod.parse_rate(bad)
    with pytest.raises(faults_mod.FaultError):
        f.set_loss(101)
    with pytest.raises(faults_mod.FaultError):
        f.partition(["server0"], ["server0"])


def test_plan_checks_counts(tmp_path):
    hosts = netns.plan(5, 2, 1, "p2ptnx", tmp_path)
    assert [(h["name"], h["role"], h["nat"]) for h in hosts] == [
        ("server0", "server", None), ("server1", "server", None), ("server2", "server", None),
        ("laptop0", "laptop", "symmetric"), ("laptop1", "laptop", "endpoint-independent")]
    for n, nat, sym in ((3, 3, 0), (3, 1, 2), (0, 0, 0)):
        with pytest.raises(netns.NetnsError):
            netns.plan(n, nat, sym, "p2ptnx", tmp_path)
    assert netns.prefix_for(tmp_path / "a") != netns.prefix_for(tmp_path / "b")


# ---------------------------------------------------------------- real namespaces

@pytest.fixture(scope="module")
def net(tmp_path_factory):
    if os.geteuid() != 0 or TOOLS:
        pytest.skip("needs root and ip/nft/tc")
    before = root_state()
    d = tmp_path_factory.mktemp("testnet") / "tn"
    started = time.monotonic()
    out = netns.up(5, d, nat=2, symmetric=1, validators=0, experts=[SCRIPTED],
                   host_experts={"laptop0": [], "laptop1": []}, timeout_s=150)
    print(f"testnet of 5 up in {time.monotonic() - started:.1f}s")
    try:
        yield {"dir": d, "up": out, "before": before,
               "ns": {h["name"]: h["netns"] for h in out["hosts"]},
               "addr": {h["name"]: h["addr"] for h in out["hosts"]},
               "ids": {h["name"]: h["peer_id"] for h in out["hosts"]}}
    finally:
        if (d / netns.STATE_FILE).exists():
            netns.down(d)


def peer_names(net):
    return {h["name"]: set(h["peer_names"]) for h in netns.status(net["dir"])["hosts"]}


@needs_root
def test_status_and_connectivity(net):
    out = json.loads(cli("testnet", "status", "--dir", str(net["dir"]), "--json").stdout)
    hosts = {h["name"]: h for h in out["hosts"]}
    assert sorted(hosts) == ["laptop0", "laptop1", "server0", "server1", "server2"]
    for h in out["hosts"]:
        assert {"name", "netns", "role", "behind_nat", "addr", "api"} <= set(h)
        assert h["alive"] and h["netns"].startswith(out["prefix"] + "-")
        assert h["api"] == "http://127.0.0.1:8700"
        assert (h["role"] == "laptop") == h["behind_nat"]
        shown = netns._run("ip", "-n", h["netns"], "-o", "-4", "addr", "show", "dev", "eth0").stdout
        assert f" {h['addr']}/" in shown
        routes = netns._run("ip", "-n", h["netns"], "route").stdout
        # servers reach only the bridge; laptops go through their home router
        assert ("default" in routes) == h["behind_nat"], routes
    assert hosts["server0"]["addr"].startswith("198.18.") and hosts["laptop0"]["addr"].startswith("192.168.")
    servers = {"server0", "server1", "server2"}
    for name in servers:
        assert servers - {name} <= set(hosts[name]["peer_names"])
    for name in ("laptop0", "laptop1"):
        # a laptop dials out through its NAT; nobody can dial it (no NAT traversal yet)
        assert set(hosts[name]["peer_names"]) & servers, hosts[name]
        assert hosts[name]["public_addr"].startswith("198.18.1.")
    # the routers' only table is the NAT; nothing of the testnet is in the machine's own namespace
    assert netns.NAT_TABLE in netns._run("ip", "netns", "exec", f"{out['prefix']}-router0", "nft", "list",
                                           "tables").stdout
    assert out["prefix"] not in netns._run("ip", "-o", "link").stdout


@needs_root
@pytest.mark.parametrize("laptop", ["laptop1", "laptop0"])
def test_question_on_a_laptop_is_answered_by_a_server(net, laptop):
    servers = {net["ids"][s] for s in ("server0", "server1", "server2")}
    deadline = time.monotonic() + 60
    while True:  # until the laptop has learned the servers' experts
        out = cli("testnet", "exec", "--dir", str(net["dir"]), laptop, "--", "p2pnet", "ask", "--json",
                  "What is the capital of France?", check=False)
        if out.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert out.returncode == 0, out.stderr
    answer = json.loads(out.stdout)
    assert answer["choices"][0]["message"]["content"]
    ok = [r for r in answer["p2pnet"]["respondents"] if r["status"] == "ok"]
    assert ok and all(r["peer_id"] in servers and r["expert_id"] == "server-expert" for r in ok)


def _seen_ports(net, laptop, local_port):
    """The source ports server0 and server1 see for two connections the
    laptop opens from one local port."""
    listeners = {}
    for s in ("server0", "server1"):
        sock = nsexec.in_netns(net["ns"][s], socket.create_server, (net["addr"][s], 0))
        sock.settimeout(10)
        listeners[s] = sock

    def dial(addr, port):
        c = socket.socket()
        c.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        c.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        c.bind((net["addr"][laptop], local_port))
        c.settimeout(5)
        c.connect((addr, port))
        return c

    seen, clients = [], []
    try:
        for s, sock in listeners.items():
            clients.append(nsexec.in_netns(net["ns"][laptop], dial, net["addr"][s], sock.getsockname()[1]))
            conn, (ip, port) = sock.accept()
            conn.close()
            seen.append((ip, port))
    finally:
        for c in clients + list(listeners.values()):
            c.close()
    return seen


@needs_root
def test_nat_mapping(net):
    public = {h["name"]: h["public_addr"] for h in net["up"]["hosts"]}
    eim = _seen_ports(net, "laptop1", 41001)
    assert eim == [(public["laptop1"], 41001)] * 2  # one mapping, port kept, for every destination
    sym = _seen_ports(net, "laptop0", 41002)
    assert {ip for ip, _ in sym} == {public["laptop0"]}
    assert sym[0][1] != sym[1][1]  # a new random port per destination


@needs_root
def test_partition_and_heal(net):
    d, ns, addr = net["dir"], net["ns"], net["addr"]
    port = netns.P2P_PORT
    assert nsexec.tcp_connect(ns["server0"], addr["server1"], port)
    cli("testnet", "partition", "--dir", str(d), "server0", "server1")
    assert not nsexec.tcp_connect(ns["server0"], addr["server1"], port, timeout=0.5)
    assert not nsexec.tcp_connect(ns["server1"], addr["server0"], port, timeout=0.5)
    assert nsexec.tcp_connect(ns["server0"], addr["server2"], port)
    cli("testnet", "heal", "--dir", str(d))
    assert nsexec.tcp_connect(ns["server0"], addr["server1"], port)
    wait_until(lambda: {"server1", "server2"} <= peer_names(net)["server0"], 60, "server0 to see server1")

    # laptop1 against every server, rejecting: open connections break at once
    cli("testnet", "partition", "--reject", "--dir", str(d), "laptop1")
    assert not nsexec.tcp_connect(ns["laptop1"], addr["server0"], port, timeout=0.5)
    for name in ("laptop1", "server0"):  # traffic makes both ends meet the resets
        nsexec.api_post(ns[name], "/broadcast", {"text": f"during the partition, from {name}"})

    def cut_off():
        seen = peer_names(net)
        return not seen["laptop1"] and all("laptop1" not in peers for peers in seen.values())
    wait_until(cut_off, 30, "laptop1 to lose every peer")
    cli("testnet", "heal", "--dir", str(d))
    assert nsexec.tcp_connect(ns["laptop1"], addr["server0"], port)
    wait_until(lambda: peer_names(net)["laptop1"] & {"server0", "server1", "server2"}, 60, "laptop1 to rejoin")


@needs_root
def test_loss_and_bandwidth_rules(net):
    d, ns, addr = net["dir"], net["ns"], net["addr"]
    port = netns.P2P_PORT
    inet = f"{net['up']['prefix']}-inet"
    cli("testnet", "loss", "--dir", str(d), "100", "--link", "server0", "server1")
    assert not any(nsexec.tcp_connect(ns["server0"], addr["server1"], port, timeout=0.3) for _ in range(5))
    assert nsexec.tcp_connect(ns["server0"], addr["server2"], port)
    cli("testnet", "loss", "--dir", str(d), "0", "--link", "server0", "server1")
    assert all(nsexec.tcp_connect(ns["server0"], addr["server1"], port) for _ in range(5))

    cli("testnet", "loss", "--dir", str(d), "30", "--host", "server2")
    cli("testnet", "bandwidth", "--dir", str(d), "1mbit", "--host", "laptop0")
    rules = netns._run("ip", "netns", "exec", inet, "nft", "list", "ruleset").stdout
    assert f"ip saddr {addr['server2']} numgen random mod 10000 < 3000 drop" in rules
    assert "tbf" in netns._run("tc", "-n", inet, "qdisc", "show", "dev", "l0").stdout
    assert "tbf" in netns._run("tc", "-n", f"{net['up']['prefix']}-router0", "qdisc", "show", "dev", "wan").stdout
    cli("testnet", "loss", "--dir", str(d), "0", "--host", "server2")
    cli("testnet", "bandwidth", "--dir", str(d), "off")
    assert "numgen" not in netns._run("ip", "netns", "exec", inet, "nft", "list", "ruleset").stdout
    assert "tbf" not in netns._run("tc", "-n", inet, "qdisc", "show", "dev", "l0").stdout


@needs_root
def test_kill_and_restart(net):
    d = net["dir"]
    old = netns.status(d)["hosts"][2]["pid"]
    cli("testnet", "kill", "--dir", str(d), "server2")
    wait_until(lambda: all("server2" not in peers for peers in peer_names(net).values()), 30,
               "the others to notice that server2 died")
    assert not swarm._alive(old)  # dead (a zombie until reaped: this test process is its parent)
    cli("testnet", "restart", "--dir", str(d), "server2")
    wait_until(lambda: all("server2" in peer_names(net)[s] for s in ("server0", "server1")), 60,
               "server2 to rejoin")


@needs_root
def test_down_removes_everything(net):
    d, prefix = net["dir"], net["up"]["prefix"]
    pids = [h["pid"] for h in netns.status(d)["hosts"]]
    assert any(ns.startswith(prefix) for ns in netns.our_namespaces(prefix))
    cli("testnet", "down", "--dir", str(d))
    assert netns.our_namespaces(prefix) == []
    assert root_state() == net["before"]
    assert not any(swarm._alive(pid) for pid in pids)
    assert not (d / netns.STATE_FILE).exists()


@needs_root
def test_a_failure_in_the_middle_of_up_leaves_nothing(tmp_path):
    before = root_state()
    d = tmp_path / "tn"
    out = cli("testnet", "up", "--hosts", "2", "--nat", "1", "--validators", "0", "--no-experts",
              "--dir", str(d), check=False, env={netns.FAIL_AT_ENV: "nodes"}, timeout=150)
    assert out.returncode == 1
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("p2pnet: error: failure injected after starting the first node"), out.stderr
    assert "Traceback" not in out.stderr
    assert netns.our_namespaces(netns.prefix_for(d)) == []
    assert root_state() == before
    node_dir = str(d / "server0").encode()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                assert node_dir not in fh.read(), f"process {pid} of the failed testnet survived"
        except OSError:
            pass


@needs_root
def test_up_clears_leftovers_and_refuses_what_it_cannot_clear(tmp_path, monkeypatch):
    d = tmp_path / "tn"
    prefix = netns.prefix_for(d)
    netns._run("ip", "netns", "add", f"{prefix}-server0")  # as a crashed run would leave it
    try:
        with pytest.raises(netns.NetnsError, match="failure injected after building"):
            netns.up(2, d, validators=0, experts=[], fail_at="network")
        assert netns.our_namespaces(prefix) == []
        monkeypatch.setattr(netns, "our_namespaces", lambda p: [f"{p}-stuck"])
        monkeypatch.setattr(netns, "_teardown", lambda state, **kw: {})
        with pytest.raises(netns.NetnsError, match="cannot be removed"):
            netns.up(2, d, validators=0, experts=[])
    finally:
        monkeypatch.undo()
        for ns in netns.our_namespaces(prefix):
            netns._run("ip", "netns", "del", ns)

