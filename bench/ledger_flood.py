"""Does a flood of user broadcasts through one validator's API stall the ledger?

Starts a real 3-validator swarm (no experts) on 127.0.0.1 whose chain commits
an empty block every 300 ms, measures commits per second idle, then while
``--clients`` threads post broadcasts to validator 0's API as fast as it
answers, and prints a table: commits/s, the flooded node's outbox, broadcasts
accepted and refused ("busy") per second, broadcasts received by another node.

    .venv/bin/python bench/ledger_flood.py [--clients 1,4] [--seconds 20]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from p2pnet.api import client  # noqa: E402
from p2pnet.api.errors import ApiError  # noqa: E402
from p2pnet_testnet import swarm  # noqa: E402


def status(node):
    return client.get_json(node["api"] + "/status")


def fast_chain(sw: Path, n: int) -> None:
    from p2pnet.consensus.genesis import Params, generate_genesis
    from p2pnet.identity import load_or_create

    sw.mkdir(parents=True, exist_ok=True)
    keys = [load_or_create(sw / f"node{i}").public_key for i in range(n)]
    g = generate_genesis(keys, chain_id=f"bench-{time.time_ns()}", params=Params(create_empty_blocks_interval_ms=300))
    (sw / "genesis.json").write_text(g.to_json())


def measure(flooded, watcher, seconds: float, clients: int) -> dict:
    stop = threading.Event()
    counts = {"ok": 0, "busy": 0}
    lock = threading.Lock()

    def flood():
        while not stop.is_set():
            try:
                client.post_json(flooded["api"] + "/broadcast", {"text": "x" * 200}, timeout=30)
                key = "ok"
            except ApiError:
                key = "busy"
            with lock:
                counts[key] += 1

    threads = [threading.Thread(target=flood, daemon=True) for _ in range(clients)]
    h0, t0 = status(watcher)["height"], time.monotonic()
    rx0 = status(watcher)["counters"]["received"].get("p2pnet/broadcast/1", 0)
    for t in threads:
        t.start()
    outbox = []
    while time.monotonic() - t0 < seconds:
        outbox.append(status(flooded)["outbox"])
        time.sleep(0.5)
    stop.set()
    for t in threads:
        t.join(30)
    dt = time.monotonic() - t0
    st = status(watcher)
    return {
        "commits_per_s": (st["height"] - h0) / dt,
        "outbox_median": sorted(outbox)[len(outbox) // 2] if outbox else 0,
        "accepted_per_s": counts["ok"] / dt,
        "busy_per_s": counts["busy"] / dt,
        "received_per_s": (st["counters"]["received"].get("p2pnet/broadcast/1", 0) - rx0) / dt,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", default="1,4", help="comma-separated numbers of flooding clients")
    ap.add_argument("--seconds", type=float, default=20.0)
    args = ap.parse_args()
    sw = Path(tempfile.mkdtemp(prefix="ledger-flood-")) / "sw"
    fast_chain(sw, 3)
    nodes = swarm.up(3, sw, validators=3, node_args=["--no-experts"], timeout_s=180)
    try:
        flooded, watcher = nodes[0], nodes[1]
        swarm._wait(lambda: status(watcher).get("height", 0) >= 3, 60, "the chain to commit")
        rows = [("idle", measure(flooded, watcher, args.seconds, 0))]
        for n in (int(x) for x in args.clients.split(",")):
            swarm._wait(lambda: status(flooded)["outbox"] == 0, 120, "the outbox to drain")
            rows.append((f"flood, {n} client{'s' if n > 1 else ''}", measure(flooded, watcher, args.seconds, n)))
        print(f"3 validators, empty block every 300 ms, {os.cpu_count()} cores, {args.seconds:.0f} s each")
        print(f"{'phase':<24} {'commits/s':>9} {'outbox':>7} {'accepted/s':>10} {'busy/s':>8} {'received/s':>10}")
        for name, r in rows:
            print(f"{name:<24} {r['commits_per_s']:>9.2f} {r['outbox_median']:>7} {r['accepted_per_s']:>10.1f} "
                  f"{r['busy_per_s']:>8.1f} {r['received_per_s']:>10.1f}")
    finally:
        swarm.down(sw)
        shutil.rmtree(sw.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
