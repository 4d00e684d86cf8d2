"""Message deliveries per node per query and per announcement period, in the
simulator, at 100, 1,000 and 10,000 peers (issue 21, item 8c).

Runs testnet/scenarios/scale-1000.toml's expert mix, scaled to each peer
count (9% of the peers host experts, as there), for a short workload, and
counts what the simulated network delivered, by message kind
(``SimNetwork.stats``). The simulator routes as the node does now: a query
and its cancels only to the respondents its prompts are sealed to (the direct
query stream), an answer to its coordinator over a direct request. The
ledger runs among the validators only (none of it reaches other peers). An
answer whose direct request failed (the scenario loses 1% of deliveries) is
sent again to its coordinator over a direct stream in the node (direct.py
``send_answer_nowait``), never on the answers topic, and the simulator
delivers it to the coordinator alone: one delivery, not N - 1.

Announcements are counted in the node's topic layout (sim/net.py
``AnnounceLayout``, the rules of p2pnet/gossip/shards.py), not the
simulator's routing (which hands them to one shared directory). Only a peer
with something to offer gossips its announcement, every 30 s: a validator's
on the global announce topic (a delivery at every other peer), an expert's
as one message on the shards of its domains (a delivery at each other
expert of those domains and at each coordinator that asked in one of them
in the last --shard-idle-s of the run, 0 by default as in the node). A peer
offering only its addresses gossips nothing. Every peer also exchanges
directories with one random peer every 60 s (announcer.exchange_s: a
request carrying its own announcement, a reply with the entries the peer
holds): about one exchange per 30 s (half of one it starts, half of one it
serves), whatever N. Columns: the mean announcements gossiped to a node per
30 s, the most at one node, those at a node on no shard (validators' only);
"before shards": every node took every expert's and validator's (E + V);
"before that": every peer gossiped, the quiet ones every 120 s: E + (N - E) / 4.

    .venv/bin/python bench/deliveries.py [--peers 100,1000,10000] [--queries 300]
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

import trio
import trio.testing

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from p2pnet import wire  # noqa: E402
from p2pnet.gossip.announcer import EXCHANGE_FACTOR, QUIET_FACTOR  # noqa: E402
from p2pnet.sim.run import Driver  # noqa: E402
from p2pnet.sim.scenario import parse_scenario  # noqa: E402

QUERY_KINDS = ("query", "cancel")


def scenario_text(peers: int, queries: int) -> str:
    """scale-1000.toml with ``peers`` peers, its expert groups scaled alike, ``queries`` queries."""
    text = (ROOT / "testnet/scenarios/scale-1000.toml").read_text()
    scale = peers / 1000
    text = re.sub(r"(?m)^peers = \d+", f"peers = {peers}", text)
    text = re.sub(r"(?m)^count = (\d+)", lambda m: f"count = {max(1, round(int(m.group(1)) * scale))}", text)
    text = re.sub(r"(?m)^queries = \d+", f"queries = {queries}", text)
    text = re.sub(r"(?m)^warmup = \d+", f"warmup = {queries // 5}", text)
    return text


def run(peers: int, queries: int, shard_idle_s: float = 0.0) -> dict:
    sc = parse_scenario(scenario_text(peers, queries), f"deliveries-{peers}")
    driver = Driver(sc)
    started = time.monotonic()
    trio.run(driver.run, clock=trio.testing.MockClock(autojump_threshold=0))
    world = driver.world
    st = world.net.stats
    n = len(world.peers)
    experts = sum(1 for p in world.peers if p.experts)
    kinds = {**{f"gossip:{k}": v for k, v in st.delivered_by_kind.items()},
             **{f"request:{k}": v for k, v in st.requests_by_kind.items()}}
    per_query = sum(v for k, v in kinds.items() if not k.endswith(":announce")) / queries
    validators = sum(1 for p in world.peers if p.validator and not p.experts)
    layout = world.net.layout
    layout.idle_s = shard_idle_s  # the asks were recorded whatever it is
    for p in world.peers:
        if p.experts:
            layout.expert(p.peer_id, {d for e in p.experts for d in e.expert.card().domains})
    end = max((at for asks in layout.asks.values() for at in asks.values()), default=0.0)  # the last ask
    received = {p.peer_id: 0 for p in world.peers}
    for p in world.peers:
        message = wire.Announce(addrs=(), cards=tuple(e.expert.card() for e in p.experts), validator=p.validator)
        for peer in layout.receivers(p.peer_id, message, end, received):
            received[peer] += 1
    askers = {peer for asks in layout.asks.values() for peer in asks}
    on_no_shard = [received[p.peer_id] for p in world.peers if not p.experts and p.peer_id not in askers]
    exchanges_per_period = 30.0 / (30.0 * QUIET_FACTOR / EXCHANGE_FACTOR)  # one started per exchange_s
    return {"peers": n, "experts": experts, "validators": validators, "queries": queries, "kinds": kinds,
            "per_query_total": per_query, "per_query_per_node": per_query / n,
            "gossiped_answers": kinds.get("gossip:answer", 0),
            "announce_per_period_per_node": sum(received.values()) / n,
            "announce_per_period_max": max(received.values()),
            "announce_per_period_no_shard": max(on_no_shard, default=0),
            "coordinators_asking": len(askers),
            "announce_per_period_per_node_global": experts + validators,
            "exchanges_per_period_per_node": 2 * exchanges_per_period,  # the one it starts and the one it serves
            "announce_per_period_per_node_before": experts + (n - experts) / QUIET_FACTOR,
            "announce_layout_total": st.announce_layout, "wall_s": time.monotonic() - started}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--peers", default="100,1000,10000")
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--shard-idle-s", type=float, default=0.0,
                    help="coordinators join the shards they ask in for this long (the node's shard_idle_s; 0: off)")
    args = ap.parse_args(argv)
    rows = []
    for peers in (int(p) for p in args.peers.split(",")):
        print(f"{peers} peers ...", file=sys.stderr, flush=True)
        row = run(peers, args.queries, args.shard_idle_s)
        print(row, file=sys.stderr, flush=True)
        rows.append(row)
    print(f"\nsimulator, {args.queries} queries per run, {os.cpu_count()} cores, coordinators' shard_idle_s "
          f"{args.shard_idle_s:g}; deliveries by kind in docs/benchmarks.md\n")
    print("| peers | with experts | validators | coordinators that asked | deliveries per query, all nodes | "
          "per node per query | answers sent again (direct, 1 delivery each) | announcements gossiped per node "
          "per 30 s: mean | most at one node | at a node on no shard | directory exchanges per node per 30 s | "
          "before shards (E + V) | before that |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['peers']} | {r['experts']} | {r['validators']} | {r['coordinators_asking']} | "
              f"{r['per_query_total']:.2f} | {r['per_query_per_node']:.5f} | {r['gossiped_answers']} | "
              f"{r['announce_per_period_per_node']:.1f} | {r['announce_per_period_max']} | "
              f"{r['announce_per_period_no_shard']} | {r['exchanges_per_period_per_node']:.0f} | "
              f"{r['announce_per_period_per_node_global']} | {r['announce_per_period_per_node_before']:.0f} |")
    print()
    for r in rows:
        print(f"{r['peers']} peers: " + ", ".join(f"{k} {v}" for k, v in sorted(r["kinds"].items()))
              + f" (run {r['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
