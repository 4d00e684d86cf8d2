"""Peer routing by the Kademlia DHT across real NATs, in the namespace
testnet (testnet/netns.py): three servers and two laptops, laptop0 behind a
symmetric NAT (no hole punch: its path stays relayed), laptop1 behind an
endpoint-independent one; every node a real ``p2pnet node start`` process
with ``dht = true`` and no expert (nothing to offer: no reason for anyone
to dial a laptop but this test).

laptop1 knows laptop0 only by its peer ID. ``p2pnet peers find ID --fresh``
drops what laptop1 knew of laptop0 (connection, peerstore, routing table),
asks the DHT, and dials what it finds: the answer must hold laptop0's
``/p2p-circuit`` addresses through the servers and nothing private (the
FIND_NODE answers and identify carry only reachable addresses), and the
dial must go through a relay. Needs root, ip, nft and tc; skipped otherwise."""

import json
import os
import subprocess

import pytest

from p2pnet.gossip import nat
from p2pnet_testnet import netns
from p2pnet_testnet.nsexec import wait_until

TOOLS = [t for t in ("ip", "nft", "tc") if netns._which(t) is None]
pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or bool(TOOLS),
    reason="needs root and ip/nft/tc: " + ("not root" if os.geteuid() != 0 else f"missing {', '.join(TOOLS)}"))

SERVERS = ("server0", "server1", "server2")


def in_host(d, host, *args, timeout=120):
    argv, env = netns.exec_command(d, host, ["p2pnet", *args])
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)


def test_a_natted_laptop_finds_another_by_id_through_the_dht_and_dials_it_via_a_relay(tmp_path):
    cfg = tmp_path / "dht.toml"
    cfg.write_text("dht = true\n")
    d = tmp_path / "tn"
    out = netns.up(5, d, nat=2, symmetric=1, validators=0, experts=[], node_args=["--config", str(cfg)],
                   timeout_s=240)
    prefix = netns.load_state(d)["prefix"]
    try:
        ns = {h["name"]: h["netns"] for h in out["hosts"]}
        ids = {h["name"]: h["peer_id"] for h in out["hosts"]}

        def status(name):
            return netns.api_get(ns[name], "/status")

        for laptop in ("laptop0", "laptop1"):
            wait_until(lambda: status(laptop)["nat"]["reachability"]["state"] == "behind-nat", 90,
                       f"{laptop} to find itself behind NAT")
            wait_until(lambda: len(status(laptop)["nat"]["circuit_addrs"]) >= 2, 60,
                       f"{laptop} to hold two reservations")
        wait_until(lambda: all((status(s)["dht"] or {}).get("routing_table", 0) >= 3 for s in SERVERS), 60,
                   "the servers' routing tables to hold the laptops")
        circuits0 = set(status("laptop0")["nat"]["circuit_addrs"])

        found = in_host(d, "laptop1", "peers", "find", ids["laptop0"], "--fresh", "--json")
        assert found.returncode == 0, found.stdout + found.stderr
        res = json.loads(found.stdout)
        assert res["found"] and res["source"] == "dht" and res["connected"], res
        # only relayed addresses, each through a server, at least one of those laptop0 holds now
        assert res["addrs"] and all(nat.addr_scope(a) == "circuit" for a in res["addrs"]), res
        assert {nat.split_circuit(a)[1] for a in res["addrs"]} <= {ids[s] for s in SERVERS}, res
        assert circuits0 & set(res["addrs"]), (circuits0, res)
        assert res["path"] == "relayed" and res["relays"] and set(res["relays"]) <= {ids[s] for s in SERVERS}, res
        assert status("laptop1")["dht"]["lookups"] >= 1

        # a peer ID nobody knows: one line, non-zero exit
        stranger = "12D3KooWKyZasvfEbxHh658vStvP5ouhz7afBsLsWbukbm7z4QT3"
        miss = in_host(d, "laptop1", "peers", "find", stranger)
        assert miss.returncode != 0 and "not found in the DHT" in miss.stderr, miss.stdout + miss.stderr
        assert len(miss.stderr.strip().splitlines()) == 1, miss.stderr
    finally:
        if (d / netns.STATE_FILE).exists():
            netns.down(d)
    assert netns.our_namespaces(prefix) == []  # nothing left behind
