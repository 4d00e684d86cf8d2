"""NAT traversal across real NATs: the namespace testnet (testnet/netns.py)
with three servers and three laptops — laptop0 behind a symmetric NAT,
laptop1 and laptop2 behind endpoint-independent ones — each a real
``p2pnet node start`` process. Only laptops host experts, each for a domain
no other node serves, so an answer proves the query reached that laptop.
Needs root, ip, nft and tc (CI has them); skipped otherwise.

The tests share one testnet and run in order; the last one kills a relay."""

import json
import os
import signal
import subprocess

import pytest

from p2pnet.gossip import nat
from p2pnet_testnet import netns
from p2pnet_testnet.nsexec import wait_until

TOOLS = [t for t in ("ip", "nft", "tc") if netns._which(t) is None]
pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or bool(TOOLS),
    reason="needs root and ip/nft/tc: " + ("not root" if os.geteuid() != 0 else f"missing {', '.join(TOOLS)}"))

LAPTOP1_EXPERT = "model=scripted:wrong,id=laptop1-expert,domains=nattest"
LAPTOP0_EXPERT = "model=scripted:wrong,id=laptop0-expert,domains=natsym"
RESERVATION_TTL_S = 30
SERVERS = ("server0", "server1", "server2")


def in_host(net, host, *args, check=True, timeout=120):
    argv, env = netns.exec_command(net["dir"], host, ["p2pnet", *args])
    out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)
    if check:
        assert out.returncode == 0, out.stderr
    return out


def status(net, host):
    return netns.api_get(net["ns"][host], "/status")


def peers(net, host):
    return {p["peer_id"]: p for p in json.loads(in_host(net, host, "peers", "--json").stdout)["peers"]}


def ask(net, host, domain, *, check=True):
    out = in_host(net, host, "ask", "--json", "--domain", domain, "--deadline", "90",
                  "What is the capital of France?", check=check)
    return json.loads(out.stdout) if out.returncode == 0 else out


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    if os.geteuid() != 0 or TOOLS:
        pytest.skip("needs root and ip/nft/tc")
    base = tmp_path_factory.mktemp("nat")
    cfg = base / "nat.toml"
    cfg.write_text(f"relay_reservation_ttl_s = {RESERVATION_TTL_S}\n")
    d = base / "tn"
    out = netns.up(6, d, nat=3, symmetric=1, validators=0, experts=[], node_args=["--config", str(cfg)],
                   host_experts={"laptop1": [LAPTOP1_EXPERT], "laptop0": [LAPTOP0_EXPERT]}, timeout_s=240)
    try:
        net = {"dir": d, "ns": {h["name"]: h["netns"] for h in out["hosts"]},
               "ids": {h["name"]: h["peer_id"] for h in out["hosts"]},
               "pid": {h["name"]: h["pid"] for h in out["hosts"]}}
        net["names"] = {v: k for k, v in net["ids"].items()}
        # every laptop holds two reservations and every node knows its reachability
        for name in net["ns"]:
            want = "public" if name in SERVERS else "behind-nat"
            wait_until(lambda: status(net, name)["nat"]["reachability"]["state"] == want, 90,
                       f"{name} to find itself {want}")
        for laptop in ("laptop0", "laptop1", "laptop2"):
            wait_until(lambda: len(status(net, laptop)["nat"]["circuit_addrs"]) >= 2, 60,
                       f"{laptop} to hold two reservations")
        yield net
    finally:
        if (d / netns.STATE_FILE).exists():
            netns.down(d)


def test_reachability_and_announced_addresses(net):
    for name in net["ns"]:
        st = status(net, name)
        assert st["announced"], name
        for addr in st["announced"]:
            assert nat.addr_scope(addr) in ("public", "circuit"), (name, addr)  # never loopback or private
        if name in SERVERS:
            assert st["nat"]["reachability"]["state"] == "public" and st["nat"]["relay_service"]
            assert st["announced"] == [f"/ip4/{st['listen'][0].split('/')[2]}/tcp/4001"]
        else:
            # behind NAT: only relayed addresses, through two different servers
            assert st["nat"]["reachability"]["state"] == "behind-nat" and not st["nat"]["relay_service"]
            relays = {nat.split_circuit(a)[1] for a in st["announced"]}
            assert len(relays) >= 2 and relays <= {net["ids"][s] for s in SERVERS}
    # each verdict took two peers dialling back on a fresh connection
    served = sum(status(net, name)["nat"]["dialback"]["served"] for name in net["ns"])
    assert served >= 2 * len(net["ns"])
    # what a server learned by peer exchange: no laptop's private address
    for p in peers(net, "server0").values():
        assert all(nat.addr_scope(a) == "public" for a in p["addrs"]), p
    shown = {h["name"]: (h["reachability"], h["relays"] >= 2) for h in netns.status(net["dir"])["hosts"]}
    assert shown == {name: ("public", False) if name in SERVERS else ("behind-nat", True) for name in net["ns"]}
    text = in_host(net, "laptop1", "status").stdout
    assert "reach     behind-nat" in text and "relay     /ip4/198.18.0." in text


def test_laptop_question_answered_by_expert_on_other_laptop_through_relay(net):
    before = status(net, "laptop1")["answers_served"]
    answer = wait_until(lambda: (lambda a: a if isinstance(a, dict) else None)(ask(net, "laptop0", "nattest",
                                                                                  check=False)),
                        60, "laptop0 to get an answer for domain nattest")
    prov = answer["p2pnet"]
    assert prov["chosen"] == {"peer_id": net["ids"]["laptop1"], "expert_id": "laptop1-expert"}
    # laptop0 sits behind a symmetric NAT: no hole punch, the path stays relayed
    assert prov["paths"] == {net["ids"]["laptop1"]: "relayed"}
    assert status(net, "laptop1")["answers_served"] > before  # the query reached the laptop's expert
    seen = peers(net, "laptop0")[net["ids"]["laptop1"]]
    assert seen["path"] == "relayed" and net["names"][seen["relay"]] in SERVERS


def test_symmetric_nat_laptop_answers_through_a_relay(net):
    answer = wait_until(lambda: (lambda a: a if isinstance(a, dict) else None)(ask(net, "laptop2", "natsym",
                                                                                  check=False)),
                        60, "laptop2 to get an answer for domain natsym")
    prov = answer["p2pnet"]
    assert prov["chosen"] == {"peer_id": net["ids"]["laptop0"], "expert_id": "laptop0-expert"}
    assert prov["paths"] == {net["ids"]["laptop0"]: "relayed"}


def test_hole_punch_between_two_endpoint_independent_nats(net):
    l1 = net["ids"]["laptop1"]
    wait_until(lambda: peers(net, "laptop2").get(l1, {}).get("path") == "hole-punched", 120,
               "laptop2's connection to laptop1 to be hole-punched")
    answer = ask(net, "laptop2", "nattest")
    assert answer["p2pnet"]["chosen"]["peer_id"] == l1
    assert answer["p2pnet"]["paths"] == {l1: "hole-punched"}
    # a TCP connection straight between the two routers' public addresses,
    # from and to the nodes' listen port (the NATs kept the port)
    sockets = netns._run("ip", "netns", "exec", net["ns"]["laptop2"], "ss", "-tnH", "state", "established").stdout
    assert any(line.split()[-1] == "198.18.1.2:4001" and line.split()[-2] == "192.168.3.2:4001"
               for line in sockets.splitlines()), sockets


def test_reservations_are_refreshed(net):
    start = status(net, "laptop1")["nat"]["counts"]["reservations"]
    # reservations last RESERVATION_TTL_S; each is renewed two thirds into its term
    wait_until(lambda: status(net, "laptop1")["nat"]["counts"]["reservations"] >= start + 2,
               3 * RESERVATION_TTL_S, "laptop1 to renew its reservations")
    st = status(net, "laptop1")["nat"]
    assert len(st["relays"]) >= 2 and all(r["expires_in_s"] > 0 for r in st["relays"])


def test_kill_relay_during_a_relayed_query(net):
    l0, l1 = "laptop0", "laptop1"
    # laptop0 and laptop1 keep two circuits, through two relays: a relay's death leaves one
    relays = wait_until(lambda: (lambda r: r if len(r) >= 2 else None)(
        peers(net, l0).get(net["ids"][l1], {}).get("relays") or []), 60,
        "laptop0 to reach laptop1 through two relays")
    relay_id = relays[0]
    relay = net["names"][relay_id]
    pid = net["pid"][l1]
    argv, env = netns.exec_command(net["dir"], l0, ["p2pnet", "ask", "--json", "--domain", "nattest",
                                                     "--deadline", "90", "What is the capital of Peru?"])
    os.kill(pid, signal.SIGSTOP)  # laptop1 holds the query unanswered while its relay dies
    try:
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            wait_until(lambda: status(net, l0)["queries_in_flight"] >= 1 or proc.poll() is not None, 30,
                       "laptop0 to send the query")
            assert proc.poll() is None, proc.communicate()
            netns.kill(net["dir"], relay)  # kill -9
        finally:
            os.kill(pid, signal.SIGCONT)
        out, err = proc.communicate(timeout=120)
    finally:
        os.kill(pid, signal.SIGCONT)
    assert proc.returncode == 0, err
    answer = json.loads(out)
    assert answer["p2pnet"]["chosen"] == {"peer_id": net["ids"][l1], "expert_id": "laptop1-expert"}, answer
    # laptop0 still reaches laptop1 through a live relay (the circuit through the other relay
    # usually holds; on a loaded machine it was seen re-dialled, once in 14 runs)
    wait_until(lambda: (lambda r: r and relay_id not in r)(
        peers(net, l0).get(net["ids"][l1], {}).get("relays") or []), 60,
        f"laptop0 to reach laptop1 through a relay other than {relay}")
    # laptop1 replaced the dead relay: two reservations again, none on it
    wait_until(lambda: (lambda c: len(c) >= 2 and all(nat.split_circuit(a)[1] != relay_id for a in c))(
        status(net, l1)["nat"]["circuit_addrs"]), 60, f"laptop1 to move off {relay}")
    # and the next question finds laptop1 again through a live relay
    again = wait_until(lambda: (lambda a: a if isinstance(a, dict) else None)(ask(net, l0, "nattest", check=False)),
                       60, "a second answer after the relay died")
    assert again["p2pnet"]["chosen"]["peer_id"] == net["ids"][l1], again
    # laptop0's NAT is symmetric: whatever way the answer came, it was never a direct one
    assert again["p2pnet"]["paths"][net["ids"][l1]] in ("relayed", "not-connected"), again["p2pnet"]
