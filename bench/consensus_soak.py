"""Consensus soak: many seeded simulator scenarios (``p2pnet.consensus.sim.run_scenario``),
spread over worker processes, checked for safety and liveness. Run::

    python bench/consensus_soak.py [--runs 20000] [--base 1000000] [--validators 4,7] [--workers 2]

Seeds are laid out like ``tests/test_consensus_sim.py``'s: each validator count gets
``runs / len(validators)`` consecutive seeds from ``--base``. Every run is deterministic, so a
failure listed here reproduces alone with ``run_scenario(SEED, N)``. Exit status 1 if any run
failed. Recovery is virtual ms from the heal to two more blocks (the bound is
``LIVENESS_BOUND_MS``).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time
from typing import List, Tuple

from p2pnet.consensus.sim import LIVENESS_BOUND_MS, run_scenario

Job = Tuple[int, int]  # (seed, validators)


def run_chunk(jobs: List[Job]) -> List[tuple]:
    out = []
    for seed, n in jobs:
        r = run_scenario(seed, n)
        out.append((seed, n, r.safety, r.live, r.recovered_ms if r.live else None, r.description))
    return out


def pct(values: List[int], p: float) -> int:
    if not values:
        return 0
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=20_000, help="scenarios in all")
    ap.add_argument("--base", type=int, default=1_000_000, help="first seed")
    ap.add_argument("--validators", default="4,7", help="validator counts, comma-separated")
    ap.add_argument("--workers", type=int, default=2, help="worker processes")
    ap.add_argument("--chunk", type=int, default=50, help="scenarios per task")
    args = ap.parse_args(argv)
    counts = [int(x) for x in args.validators.split(",")]
    per = args.runs // len(counts)
    jobs = [(seed, n) for n in counts for seed in range(args.base, args.base + per)]
    chunks = [jobs[i:i + args.chunk] for i in range(0, len(jobs), args.chunk)]
    print(f"{len(jobs)} runs, seeds {args.base}..{args.base + per - 1} for each of {counts} validators, "
          f"{args.workers} workers on {os.cpu_count()} cores", flush=True)
    t0 = time.perf_counter()
    results = []
    with multiprocessing.Pool(args.workers) as pool:
        for k, part in enumerate(pool.imap_unordered(run_chunk, chunks), 1):
            results.extend(part)
            if k % max(1, len(chunks) // 20) == 0:
                print(f"  {len(results)}/{len(jobs)} done, {time.perf_counter() - t0:.0f} s", flush=True)
    wall = time.perf_counter() - t0

    print()
    print(f"| validators | runs | safety failures | liveness failures | recovery p50 ms | p99 ms | max ms "
          f"(bound {LIVENESS_BOUND_MS}) |")
    print("|---|---|---|---|---|---|---|")
    rows = [(str(n), [r for r in results if r[1] == n]) for n in counts] + [("all", results)]
    for name, rs in rows:
        rec = [r[4] for r in rs if r[4] is not None]
        print(f"| {name} | {len(rs)} | {sum(r[2] is not None for r in rs)} | {sum(not r[3] for r in rs)} | "
              f"{pct(rec, 50)} | {pct(rec, 99)} | {max(rec, default=0)} |")
    print(f"\nwall time {wall:.0f} s, {args.workers} workers, {os.cpu_count()} cores")
    for name, rs in rows[:-1]:
        slow = max((r for r in rs if r[4] is not None), key=lambda r: r[4], default=None)
        if slow is not None:
            print(f"slowest recovery, {name} validators: seed {slow[0]}, {slow[4]} ms ({slow[5]})")
    failed = sorted((r for r in results if r[2] is not None or not r[3]), key=lambda r: (r[1], r[0]))
    for seed, n, safety, live, _rec, desc in failed:
        print(f"FAIL seed {seed} n={n}: {safety or 'no progress after the heal'} ({desc})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
