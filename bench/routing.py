"""Routing results for docs/results.md: runs the committed scenarios over
several seeds (two processes), prints Markdown tables, writes the plots.

    python bench/routing.py [--seeds 1 2 3] [--img docs/img] [--only tuned|untuned] [--scenario NAME]
    python bench/routing.py --bar --seeds 1 2 ... 20

``--only untuned`` runs only the scenarios the policy was not tuned on
(UNTUNED below: each with the metric its target is about). Every run ends
with the bar per seed (BAR): how many seeds of each committed scenario meet
its target, and the values of those that do not. ``--bar`` runs only what
that table needs: each committed scenario once per seed, policy as committed.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

SCENARIOS = Path(__file__).resolve().parent.parent / "testnet" / "scenarios"

UNTUNED = {
    # scenario: its target (docs/results.md, "Scenarios the policy was not tuned on")
    "sybil-drift": "adversary share < 5% and staying there",
    "price-ladder": "cost <= 0.5 of best at >= 0.95 of its accuracy",
    "price-cascade": "cost <= 0.5 of best at >= 0.95 of its accuracy",
    "lossy": ">= 0.95 of the oracle",
    "knowledge-swarm": ">= 0.95 of the per-domain oracle (real accuracies)",
}

BAR = {
    # scenario: what each seed must give (issue 23: every committed scenario in every seed)
    "llmnet-adversarial": ">= 0.95 of the oracle",
    "mixed-threats": ">= 0.95 of the oracle",
    "metallm-cost": "cost <= 0.5 of best at >= 0.95 of its accuracy",
    **UNTUNED,
}


def _run(job):
    name, seed, policy, params = job
    from p2pnet.sim import load_scenario, run_scenario
    from p2pnet.sim.scenario import HONEST

    sc = load_scenario(SCENARIOS / f"{name}.toml")
    if policy == "random":
        sc = sc.with_policy("random")
    elif policy == "truth":  # the policy as committed, routing by the experts' true accuracies
        sc = dataclasses.replace(sc, ledger=dataclasses.replace(sc.ledger, standings="truth"))
    elif policy == "copies":  # the policy as committed; each honest group's hosts run one model
        sc = dataclasses.replace(sc, experts=tuple(
            dataclasses.replace(g, copies=True) if g.behaviour == HONEST else g for g in sc.experts))
    elif params:
        sc = sc.with_policy(sc.policy.name, **{**dict(sc.policy.params), **params})
    return job, run_scenario(sc, seed=seed)


def _mean(rows, path):
    vals = []
    for r in rows:
        v = r
        for key in path:
            v = v[key]
        if v is not None:
            vals.append(v)
    if not vals:
        return "n/a"
    m = statistics.mean(vals)
    return f"{m:.3f}" + (f" ± {statistics.stdev(vals):.3f}" if len(vals) > 1 else "")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--img", type=Path, default=None)
    ap.add_argument("--only", choices=("tuned", "untuned"), default=None,
                    help="only the committed scenarios the policy was tuned on, or only the others")
    ap.add_argument("--scenario", action="append", default=None, metavar="NAME",
                    help="only these of the untuned scenarios (repeatable; implies --only untuned)")
    ap.add_argument("--bar", action="store_true",
                    help="only each committed scenario as committed, and the bar per seed")
    args = ap.parse_args()
    if args.bar and (args.only or args.scenario or args.img):
        ap.error("--bar runs every committed scenario and draws nothing: leave out --only, --scenario and --img")
    if args.scenario:
        unknown = sorted(set(args.scenario) - set(UNTUNED))
        if unknown:
            ap.error(f"not an untuned scenario: {', '.join(unknown)} (one of {', '.join(UNTUNED)})")
        args.only = "untuned"
    jobs = []
    if args.bar:
        jobs = [(name, seed, None, {}) for seed in args.seeds for name in BAR]
        with ProcessPoolExecutor(2) as ex:
            print_bar(list(ex.map(_run, jobs)))
        return
    for seed in args.seeds if args.only != "untuned" else ():
        jobs.append(("llmnet-adversarial", seed, None, {}))
        jobs.append(("llmnet-adversarial", seed, "random", {}))
        jobs.append(("mixed-threats", seed, None, {}))
        jobs.append(("metallm-cost", seed, None, {}))  # as committed (a budget of 4 per query)
        jobs.append(("metallm-cost", seed, "truth", {}))
        for name in ("llmnet-adversarial", "mixed-threats", "metallm-cost"):
            jobs.append((name, seed, "copies", {}))
        for cw in (0.0, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03):  # a fixed λ, no budget to move it
            jobs.append(("metallm-cost", seed, "reputation", {"cost_weight": cw, "budget": 0.0}))
    for seed in args.seeds if args.only != "tuned" else ():
        for name in args.scenario or UNTUNED:
            jobs.append((name, seed, None, {}))
    with ProcessPoolExecutor(2) as ex:
        results = list(ex.map(_run, jobs))
    tuned = [job_r for job_r in results if job_r[0][0] not in UNTUNED]
    if tuned:
        _print_tuned(tuned)
    _print_untuned([job_r for job_r in results if job_r[0][0] in UNTUNED])
    print_bar(results)
    if args.img is not None:
        from p2pnet.sim.plot import plot_summary

        args.img.mkdir(parents=True, exist_ok=True)
        first = args.seeds[0]
        for (name, seed, policy, params), r in results:
            if seed != first:
                continue
            if policy is None:
                plot_summary(r, args.img / f"sim-{name}.png")
            elif policy == "random":
                plot_summary(r, args.img / f"sim-{name}-random.png")


def _print_tuned(results) -> None:
    groups: dict = {}
    for (name, seed, policy, params), r in results:
        policy_name = r["policy"] + {"truth": ", true standings", "copies": ", honest hosts of a model are copies"
                                     }.get(policy, "")
        key = (name, policy_name, tuple(sorted(params.items())))
        groups.setdefault(key, []).append(r)
    print("| scenario | policy | params | seeds | accuracy after warmup / oracle | last 20% / oracle "
          "| random / oracle | cost vs best (after warmup) | adversary share of user slots (after warmup) "
          "| probe slots to adversaries | queries until adversaries < 5% | respondents / query |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for (name, policy, params), rows in groups.items():
        rnd = [{"v": r["tail"]["accuracy_random"] / r["tail"]["accuracy_oracle"]} for r in rows]
        print(f"| {name} | {policy} | {', '.join(f'{k}={v}' for k, v in params) or '-'} | {len(rows)} "
              f"| {_mean(rows, ('after_warmup', 'accuracy_vs_oracle'))} | {_mean(rows, ('accuracy_vs_oracle',))} "
              f"| {_mean(rnd, ('v',))} | {_mean(rows, ('after_warmup', 'cost_vs_best'))} "
              f"| {_mean(rows, ('after_warmup', 'adversary_share'))} "
              f"| {_mean(rows, ('after_warmup', 'probe_adversary_share'))} "
              f"| {_mean(rows, ('queries_until_adversary_below_5pct',))} "
              f"| {_mean(rows, ('after_warmup', 'mean_respondents'))} |")
    _print_moving_groups(results)


def max_share_after_below(series, level: float = 0.05):
    """The highest adversary share of the windows after the first window below
    ``level``: below ``level`` means the share fell under it and stayed there.
    None if no window is below ``level``; 0.0 if only the last one is."""
    first = next((i for i, w in enumerate(series) if w["adversary_share"] < level), None)
    if first is None:
        return None
    return max((w["adversary_share"] for w in series[first + 1:]), default=0.0)


def _worst(values, worst=min) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    m = statistics.mean(values)
    sd = f" ± {statistics.stdev(values):.3f}" if len(values) > 1 else ""
    return f"{m:.3f}{sd} (worst {worst(values):.3f})"


def _print_untuned(results) -> None:
    """The scenarios the policy was not tuned on, with the metric each target
    is about: accuracy / oracle, cost vs best, and the adversary share, with
    whether it stays below 5% once it first falls below (the highest share of
    the windows after the first one below 5%)."""
    by: dict = {}
    for (name, seed, policy, params), r in results:
        by.setdefault(name, []).append(r)
    if not by:
        return
    print()
    print("Scenarios the policy was not tuned on (after warmup; mean ± sd over the seeds, worst seed)")
    print("| scenario | target | seeds | accuracy / oracle | cost vs best | adversary share "
          "| highest window share after the first below 5% (seeds that get below) | seeds staying below 5% | respondents / query "
          "| failed queries |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, rows in by.items():
        aw = [r["after_warmup"] for r in rows]
        adversaries = any(w["adversary_share"] for r in rows for w in r["series"])
        after = [max_share_after_below(r["series"]) for r in rows]
        stay = sum(1 for a in after if a is not None and a < 0.05)
        never = sum(1 for a in after if a is None)
        print(f"| {name} | {UNTUNED[name]} | {len(rows)} "
              f"| {_worst([a['accuracy_vs_oracle'] for a in aw])} "
              f"| {_worst([a['cost_vs_best'] for a in aw], max)} "
              + (f"| {_worst([a['adversary_share'] for a in aw], max)} "
                 f"| {_worst(after, max)} | {stay} of {len(rows)}"
                 + (f" ({never} never below)" if never else "") + " "
                 if adversaries else "| - | - | - ")
              + f"| {statistics.mean(a['mean_respondents'] for a in aw):.2f} "
              f"| {statistics.mean(r['whole_run']['failed'] for r in rows):.1f} |")


def meets_bar(name: str, r: dict) -> tuple[bool, str]:
    """Whether one seed's run of ``name`` meets its target (BAR), and the value
    that decides it."""
    aw = r["after_warmup"]
    acc, cost = aw["accuracy_vs_oracle"] or 0.0, aw["cost_vs_best"]
    if name == "sybil-drift":
        after = max_share_after_below(r["series"])
        return after is not None and after < 0.05, ("never below 5%" if after is None
                                                     else f"{after:.3f} after the first window below 5%")
    if BAR[name].startswith("cost"):
        return cost is not None and cost <= 0.5 and acc >= 0.95, f"cost {cost:.4f} at {acc:.4f}"
    return acc >= 0.95, f"{acc:.4f}"


def print_bar(results) -> None:
    """Issue 23's bar, seed by seed: each committed scenario, run as committed
    (chain standings), meets its target in how many seeds; the others with the
    value that failed. With adversaries, also how many seeds keep every window
    after the warmup below 5% (the target counts from the first window below
    5%, warmup included)."""
    by: dict = {}
    for (name, seed, policy, params), r in results:
        if name in BAR and policy is None and not params:
            by.setdefault(name, []).append((seed, r))
    if not by:
        return
    print()
    print("The bar per seed (issue 23: every committed scenario in every seed; the policy as committed)")
    print("| scenario | each seed must give | seeds meeting it | the others (seed: value) "
          "| seeds with every window after warmup below 5% adversaries |")
    print("|---|---|---|---|---|")
    for name in BAR:
        runs = sorted(by.get(name, ()), key=lambda sr: sr[0])
        if not runs:
            continue
        checked = [(seed, *meets_bar(name, r)) for seed, r in runs]
        misses = "; ".join(f"{seed}: {why}" for seed, ok, why in checked if not ok) or "-"
        adversaries = any(w["adversary_share"] for _, r in runs for w in r["series"])
        if adversaries:
            after_warmup = sum(1 for _, r in runs if all(
                w["adversary_share"] < 0.05 for w in r["series"] if w["end"] > r["after_warmup"]["from_query"]))
            clean = f"{after_warmup} of {len(runs)}"
        else:
            clean = "-"
        print(f"| {name} | {BAR[name]} | {sum(ok for _, ok, _ in checked)} of {len(runs)} | {misses} | {clean} |")


def _print_moving_groups(results) -> None:
    """How traffic follows an expert whose quality changes mid-run (mixed-threats:
    one that degrades, one that joins late): each group's share of the user
    slots per window, mean over the seeds."""
    from p2pnet.sim import load_scenario
    from p2pnet.sim.scenario import DEGRADES_AT, JOINS_LATE

    sc = load_scenario(SCENARIOS / "mixed-threats.toml")
    moving = {g.name: (g.degrades_at if g.behaviour == DEGRADES_AT else g.joins_at)
              for g in sc.experts if g.behaviour in (DEGRADES_AT, JOINS_LATE)}
    runs = [r for (name, _, policy, _), r in results if name == "mixed-threats" and policy is None]
    if not moving or not runs:
        return
    ends = [w["end"] for w in runs[0]["series"]]
    print()
    print("mixed-threats, share of user slots per window (mean over seeds): "
          + ", ".join(f"{g} changes at query {at}" for g, at in moving.items()))
    print("| window ending at query | " + " | ".join(moving) + " |")
    print("|---|" + "---|" * len(moving))
    for i, end in enumerate(ends):
        cells = [statistics.mean(r["series"][i]["group_share"].get(g, 0.0) for r in runs) for g in moving]
        print(f"| {end} | " + " | ".join(f"{c:.3f}" for c in cells) + " |")


if __name__ == "__main__":
    main()
