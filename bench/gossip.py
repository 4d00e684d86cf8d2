"""Gossip propagation on a local multi-process swarm (127.0.0.1 only).

Starts N real node processes (no models), publishes signed Broadcast messages
from node 0 at each rate for a fixed time, and reads back from every other
node what arrived and when. Prints a table: propagation latency p50/p95 (ms,
publish call to delivery to the node's handler, one machine clock), loss and
duplicates, and the CPU the swarm spent per delivered message.

    .venv/bin/python bench/gossip.py [--nodes 10] [--rates 10,50] [--seconds 10]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from p2pnet.api import client
from p2pnet_testnet import swarm


def cpu_seconds(pids) -> float:
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime + stime
        except OSError:
            pass
    return total / tick


def pct(values, q):
    values = sorted(values)
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def run_rate(nodes, rate: float, seconds: float, tag: str) -> dict:
    sender, receivers = nodes[0], nodes[1:]
    since = {n["api"]: client.get_json(n["api"] + "/messages?since=0")["count"] for n in receivers}
    pids = [n["pid"] for n in nodes]
    cpu0 = cpu_seconds(pids)
    count = int(rate * seconds)
    start = time.monotonic()
    for i in range(count):
        target = start + i / rate
        delay = target - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        client.post_json(sender["api"] + "/broadcast", {"text": f"{tag}-{i}"})
    # wait (bounded) for stragglers
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        got = [client.get_json(n["api"] + f"/messages?since={since[n['api']]}")["messages"] for n in receivers]
        if all(len([m for m in g if m["text"].startswith(tag)]) >= count for g in got):
            break
        time.sleep(0.2)
    cpu = cpu_seconds(pids) - cpu0
    latencies, lost, dups, lost_by_node = [], 0, 0, {}
    for n, g in zip(receivers, got):
        mine = [m for m in g if m["text"].startswith(tag + "-")]
        texts = [m["text"] for m in mine]
        missing = count - len(set(texts))
        dups += len(texts) - len(set(texts))
        lost += missing
        if missing:
            lost_by_node[n["index"]] = missing
        latencies += [(m["received_ns"] - m["sent_ns"]) / 1e6 for m in mine]
    deliveries = count * len(receivers)
    return {
        "rate": rate, "messages": count, "deliveries": deliveries,
        "p50_ms": pct(latencies, 0.5), "p95_ms": pct(latencies, 0.95),
        "lost": lost, "dup": dups, "lost_by_node": lost_by_node,
        "cpu_ms_per_delivery": 1000 * cpu / max(1, deliveries - lost),
        "cpu_ms_per_message": 1000 * cpu / max(1, count),
    }


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=10)
    ap.add_argument("--rates", default="10,50")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--keep", type=Path, default=None, help="swarm dir to use and keep (node logs)")
    args = ap.parse_args(argv)
    rates = [float(r) for r in args.rates.split(",")]
    with tempfile.TemporaryDirectory(prefix="p2pnet-bench-") as tmp:
        sw = args.keep or Path(tmp) / "sw"
        print(f"starting {args.nodes} nodes ...", file=sys.stderr)
        nodes = swarm.up(args.nodes, sw, node_args=["--no-experts", "--log-level", "warning"], timeout_s=180)
        try:
            rows = [run_rate(nodes, r, args.seconds, f"r{int(r)}") for r in rates]
        finally:
            swarm.down(sw)
    print(f"\ngossip propagation: {args.nodes} node processes on 127.0.0.1, {os.cpu_count()} cores, "
          f"{args.seconds:.0f} s per rate, 1 publisher")
    print(f"{'msg/s':>6} {'msgs':>6} {'deliveries':>10} {'p50 ms':>8} {'p95 ms':>8} {'lost':>5} {'dup':>4} "
          f"{'CPU ms/delivery':>16} {'CPU ms/msg (swarm)':>19}")
    for r in rows:
        print(f"{r['rate']:>6.0f} {r['messages']:>6} {r['deliveries']:>10} {r['p50_ms']:>8.1f} {r['p95_ms']:>8.1f} "
              f"{r['lost']:>5} {r['dup']:>4} {r['cpu_ms_per_delivery']:>16.2f} {r['cpu_ms_per_message']:>19.1f}")
    for r in rows:
        if r["lost_by_node"]:
            print(f"lost at {r['rate']:.0f} msg/s, by receiving node: {r['lost_by_node']}")


if __name__ == "__main__":
    main()
