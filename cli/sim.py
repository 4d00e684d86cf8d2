"""``p2pnet sim``: run a routing simulation scenario in virtual time."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import click

from p2pnet_cli.main import cli


@cli.command("sim")
@click.argument("scenario", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--seed", type=int, default=None, help="Override the scenario's seed.")
@click.option("--policy", "policy_name", default=None,
              help="Run with this selection policy instead (its default parameters).")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the full summary (with per-window series) here; '-' for stdout.")
@click.option("--plot", "plot_out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write a PNG plot here (needs matplotlib).")
def sim_command(scenario: Path, seed, policy_name, json_out, plot_out) -> None:
    """Simulate SCENARIO.toml: many peers in one process with a virtual clock,
    the real coordinator, selection, evaluation and reputation code."""
    from p2pnet.experts.selection import POLICIES
    from p2pnet.sim import load_scenario, run_scenario
    from p2pnet.sim.scenario import MAX_SEED

    if seed is not None and not 0 <= seed <= MAX_SEED:
        raise click.BadParameter(f"{seed} is not in [0, {MAX_SEED}] (as a scenario's seed)", param_hint="--seed")
    # before the run, not after it: a path that cannot be written would lose the results
    if json_out is not None and str(json_out) != "-":
        _check_writable(json_out, "--json")
    if plot_out is not None:
        _check_writable(plot_out, "--plot")
    sc = load_scenario(scenario)
    if policy_name is not None:
        if policy_name not in POLICIES:
            raise click.BadParameter(f"must be one of {', '.join(sorted(POLICIES))}", param_hint="--policy")
        sc = sc.with_policy(policy_name)
    if plot_out is not None:
        from p2pnet.sim.plot import plot_summary, require_matplotlib

        require_matplotlib()  # before the run, not after it
    started = time.monotonic()
    # a bar on a terminal only (click hides it otherwise), on stderr so --json - stays clean
    with click.progressbar(length=sc.workload.queries, label=f"simulating {sc.name}",
                           file=sys.stderr) as bar:
        done = [0]

        def progress(n: int) -> None:
            bar.update(n - done[0])
            done[0] = n

        summary = run_scenario(sc, seed=seed, progress=progress)
    wall = time.monotonic() - started
    if json_out is not None:
        text = json.dumps(summary, indent=1, sort_keys=True) + "\n"
        if str(json_out) == "-":
            click.echo(text, nl=False)
        else:
            json_out.write_text(text)
    if plot_out is not None:
        plot_summary(summary, plot_out)
    t = summary["tail"]
    below = summary["queries_until_adversary_below_5pct"]
    lines = [
        f"{summary['scenario']}: {summary['queries']} queries, {summary['peers']} peers, "
        f"policy {summary['policy']}"
        + (" routing by true accuracies (standings = truth)" if summary["standings"] == "truth" else "")
        + f", seed {summary['seed']} ({wall:.1f} s wall)",
        f"  last 20%: accuracy {t['accuracy']} vs oracle {t['accuracy_oracle']} "
        f"(ratio {summary['accuracy_vs_oracle']}), random {summary['accuracy_random']}",
        f"  cost vs always-best {summary['cost_vs_best']}, respondents/query {t['mean_respondents']}, "
        f"adversary share of user slots {summary['adversary_share']} "
        f"(of probe slots {t['probe_adversary_share']})"
        + ("" if below is None else f", below 5% after {below} queries"),
    ]
    w = summary["after_warmup"]
    if w["from_query"]:
        lines.append(f"  from query {w['from_query']} (the scenario's warmup) on: accuracy ratio "
                     f"{w['accuracy_vs_oracle']}, cost vs always-best {w['cost_vs_best']}")
    click.echo("\n".join(lines), err=str(json_out) == "-")


def _check_writable(path: Path, flag: str) -> None:
    """BadParameter naming ``flag`` unless a file can be written at ``path``."""
    parent = path.parent
    if path.is_dir():
        raise click.BadParameter(f"{path} is a directory, not a file", param_hint=flag)
    if not parent.exists():
        raise click.BadParameter(f"the directory {parent} does not exist", param_hint=flag)
    if not parent.is_dir():
        raise click.BadParameter(f"{parent} is not a directory", param_hint=flag)
    if not os.access(path if path.exists() else parent, os.W_OK):
        raise click.BadParameter(f"{path if path.exists() else parent} is not writable", param_hint=flag)
