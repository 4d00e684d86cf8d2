"""WAN benchmark on the namespace testnet (needs root). Run:
``python bench/wan.py [--queries 20] [--dir /tmp/wanbench]``.

Brings up 3 servers and 3 laptops (laptop0 behind a symmetric NAT, laptop1
and laptop2 behind endpoint-independent ones) with scripted experts, one
domain each: ``wan-server`` on server0, ``wan-l1`` on laptop1. Then:

(a) query latency through a node's HTTP API (called inside its namespace),
    by the path to the answering expert: direct (laptop1 -> server0),
    hole-punched (laptop2 -> laptop1, after DCUtR), relayed (laptop0, behind
    the symmetric NAT -> laptop1); each answer's provenance ``paths`` is
    checked and the matches counted;
(b) the relay's cost per relayed query: CPU seconds of the relay's node
    process and bytes on its interface during the relayed queries, minus the
    same measures over an idle stretch as long;
(c) time from starting a node (kill -9, then the same command line, data
    dir kept) to its first answer, for a public server and for a NATed laptop,
    and for the laptop until it holds a relay reservation (reachable);
(d) the share of queries answered, direct and relayed, at 0, 2, 5 and 10%
    packet loss on every link, with the asker's direct-stream counters.

The machine has no netem: every link has veth latency, so (a) measures
p2pnet's own overhead per path, not wide-area round trips. Prints a table
headed by the core count and the load average.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from p2pnet_testnet import netns, nsexec
from p2pnet_testnet.nsexec import wait_until

EXPERTS = {"server0": ["model=scripted:wrong,id=server-expert,domains=wan-server"],
           "laptop1": ["model=scripted:wrong,id=laptop1-expert,domains=wan-l1"]}


def status(ns):
    try:
        return netns.api_get(ns, "/status", timeout=5)
    except Exception:
        return None


def ask(ns, domain, question="What is the capital of France?"):
    body = {"model": "p2pnet", "domain": domain, "deadline_s": 30,
            "messages": [{"role": "user", "content": question}]}
    return nsexec.api_post(ns, "/v1/chat/completions", body, timeout=60)


def peer_path(ns, peer_id):
    st = netns.api_get(ns, "/peers", timeout=5)
    for p in st.get("peers", []):
        if p["peer_id"] == peer_id:
            return p.get("path"), p.get("relay")
    return None, None


def cpu_s(pid):
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def if_bytes(ns, dev="eth0"):
    """rx + tx bytes of ``dev`` in namespace ``ns`` (sysfs would show the caller's namespace)."""
    import json

    stats = json.loads(netns._run("ip", "-n", ns, "-j", "-s", "link", "show", dev).stdout)[0]["stats64"]
    return stats["rx"]["bytes"] + stats["tx"]["bytes"]


def latency_rows(net, n):
    ids, ns = net["ids"], net["ns"]
    rows = []
    for label, asker, domain, target in (("direct", "laptop1", "wan-server", "server0"),
                                         ("hole-punched", "laptop2", "wan-l1", "laptop1"),
                                         ("relayed", "laptop0", "wan-l1", "laptop1")):
        ask(ns[asker], domain)  # warm-up: the asker learns the expert
        times, match = [], 0
        for i in range(n):
            t = time.perf_counter()
            out = ask(ns[asker], domain, f"What is the capital of country number {i}?")
            times.append((time.perf_counter() - t) * 1000)
            paths = out.get("p2pnet", {}).get("paths", {})
            match += paths.get(ids[target]) == label
        times.sort()
        rows.append((f"query latency, {label} ({asker} -> {target}'s expert)",
                     f"p50 {statistics.median(times):.0f} ms, p95 {times[int(0.95 * (n - 1))]:.0f} ms",
                     f"{n} queries; provenance said {label}: {match}/{n}"))
    return rows


def loss_rows(net, n, levels=(0, 2, 5, 10)):
    """(d) Share of queries answered, direct and relayed, with ``pct`` % of the
    packets of every link dropped (nftables), and how the queries travelled:
    the asker's direct-stream sends and gossip fallbacks over the run."""
    from p2pnet.errors import P2PNetError

    ns = net["ns"]
    rows = []
    try:
        for pct in levels:
            netns.set_loss(net["dir"], pct)
            for label, asker, domain in (("direct", "laptop1", "wan-server"), ("relayed", "laptop0", "wan-l1")):
                before = (status(ns[asker]) or {}).get("counters", {}).get("direct", {})
                ok, times = 0, []
                for i in range(n):
                    t = time.perf_counter()
                    try:
                        ask(ns[asker], domain, f"What is the capital of country number {100 * pct + i}?")
                    except (P2PNetError, OSError):
                        continue
                    ok += 1
                    times.append((time.perf_counter() - t) * 1000)
                after = (status(ns[asker]) or {}).get("counters", {}).get("direct", {})
                moved = {k: after.get(k, 0) - before.get(k, 0) for k in after
                         if isinstance(after.get(k), int) and after.get(k, 0) != before.get(k, 0)}
                p50 = f", p50 {statistics.median(times):.0f} ms" if times else ""
                rows.append((f"answered at {pct}% loss on every link, {label} ({asker})", f"{ok}/{n}",
                             f"deadline 30 s{p50}; asker's direct-stream counters: "
                             + (", ".join(f"{k} +{v}" for k, v in sorted(moved.items())) or "unchanged")))
    finally:
        netns.set_loss(net["dir"], 0)
    return rows


def relay_rows(net, n):
    ids, ns = net["ids"], net["ns"]
    _, relay_id = peer_path(ns["laptop0"], ids["laptop1"])
    relay = {v: k for k, v in ids.items()}.get(relay_id)
    if relay is None:
        return [("relay cost", "n/a", "laptop0 -> laptop1 is not relayed")]
    pid = net["pid"][relay]
    c0, b0, t0 = cpu_s(pid), if_bytes(ns[relay]), time.monotonic()
    for i in range(n):
        ask(ns["laptop0"], "wan-l1", f"Where is city number {i}?")
    c1, b1, t1 = cpu_s(pid), if_bytes(ns[relay]), time.monotonic()
    time.sleep(t1 - t0)  # an idle stretch as long, for the baseline
    c2, b2 = cpu_s(pid), if_bytes(ns[relay])
    cpu = ((c1 - c0) - (c2 - c1)) / n
    nbytes = ((b1 - b0) - (b2 - b1)) / n
    return [(f"relay ({relay}) CPU per relayed query", f"{cpu * 1000:.1f} ms",
             f"busy {c1 - c0:.2f}s over {n} queries, idle baseline {c2 - c1:.2f}s"),
            (f"relay ({relay}) bytes per relayed query", f"{nbytes / 1024:.1f} KiB",
             f"interface rx+tx {(b1 - b0) / 1024:.0f} KiB busy, {(b2 - b1) / 1024:.0f} KiB idle baseline")]


def restart_rows(net):
    rows = []
    for name, domain in (("server2", "wan-l1"), ("laptop2", "wan-server")):
        netns.kill(net["dir"], name)
        wait_until(lambda: status(net["ns"][name]) is None, 30, f"{name} to die")
        state = netns.load_state(net["dir"])
        h = netns._host(state, name)
        t0 = time.monotonic()
        netns._launch_node(state, h)
        net["pid"][name] = h["pid"]

        def answered():
            try:
                return ask(net["ns"][name], domain)
            except Exception:
                return None
        wait_until(answered, 120, f"{name}'s first answer")
        rows.append((f"start to first answer, {name} ({'NATed laptop' if name.startswith('laptop') else 'public'})",
                     f"{time.monotonic() - t0:.1f} s", "kill -9 then the same command line, data dir kept"))
        if name.startswith("laptop"):
            wait_until(lambda: (status(net["ns"][name]) or {}).get("nat", {}).get("circuit_addrs"), 120,
                       f"{name}'s first reservation")
            rows.append((f"start to first relay reservation, {name}", f"{time.monotonic() - t0:.1f} s",
                         "from then on it can be dialled"))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--queries", type=int, default=20)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/p2pnet-wanbench"))
    ap.add_argument("--loss-queries", type=int, default=10, help="queries per path and loss level in (d)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/wan.py needs root (it builds network namespaces)")
    if args.dir.exists():
        shutil.rmtree(args.dir)
    t = time.monotonic()
    out = netns.up(6, args.dir, nat=3, symmetric=1, validators=0, experts=[], host_experts=EXPERTS, timeout_s=180)
    rows = [("testnet up (6 hosts, 3 NATed, scripted experts)", f"{time.monotonic() - t:.1f} s", "")]
    net = {"dir": args.dir, "ns": {h["name"]: h["netns"] for h in out["hosts"]},
           "ids": {h["name"]: h["peer_id"] for h in out["hosts"]}, "pid": {h["name"]: h["pid"] for h in out["hosts"]}}
    try:
        for laptop in ("laptop0", "laptop1", "laptop2"):
            wait_until(lambda: len((status(net["ns"][laptop]) or {}).get("nat", {}).get("circuit_addrs", [])) >= 2,
                       90, f"{laptop}'s reservations")
        wait_until(lambda: peer_path(net["ns"]["laptop2"], net["ids"]["laptop1"])[0] == "hole-punched", 90,
                   "laptop2 -> laptop1 hole-punched")
        wait_until(lambda: peer_path(net["ns"]["laptop0"], net["ids"]["laptop1"])[0] == "relayed", 90,
                   "laptop0 -> laptop1 relayed")
        rows.append(("ready (reservations held, hole punched)", f"{time.monotonic() - t:.1f} s", "since up started"))
        rows += latency_rows(net, args.queries)
        rows += relay_rows(net, args.queries)
        rows += loss_rows(net, args.loss_queries)
        rows += restart_rows(net)
    finally:
        netns.down(args.dir)
    load = os.getloadavg()
    print(f"# bench/wan.py on {os.cpu_count()} cores, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} "
          f"(at the end), {subprocess.run(['date', '-u'], capture_output=True, text=True).stdout.strip()}")
    print("| metric | value | note |\n|---|---|---|")
    for metric, value, note in rows:
        print(f"| {metric} | {value} | {note} |")


if __name__ == "__main__":
    try:
        main()
    except TimeoutError as exc:
        sys.exit(f"bench/wan.py: {exc}")
