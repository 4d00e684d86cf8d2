"""`p2pnet swarm up|status|down`: a local multi-process swarm on 127.0.0.1."""

from __future__ import annotations

from pathlib import Path

import click

from p2pnet_cli.main import cli
from p2pnet_cli.util import default_swarm_dir, emit

dir_option = click.option("--dir", "swarm_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
                          help="Swarm directory (default: $P2PNET_HOME/swarm).")


DEFAULT_VALIDATORS = 4
"""Validators of a swarm started without --validators: BFT with 4 tolerates one that fails."""

SWARM_PROBE_INTERVAL_S = 30.0
"""The validators' probe interval in a local swarm: the node's default (300 s) is meant for a
network of many validators; with 3 or 4, specialists would take an hour to rank first."""


def _dir(swarm_dir):
    return swarm_dir or default_swarm_dir()


@cli.group()
def swarm() -> None:
    """Run a local multi-process swarm for trying things out and testing."""


@swarm.command("up")
@click.option("--nodes", "n", type=click.IntRange(1, 64), default=3, show_default=True)
@click.option("--validators", type=click.IntRange(0, 64), default=None,
              help=f"The first V nodes become validators of a fresh genesis and keep the reputation "
                   f"ledger (default: every node, at most {DEFAULT_VALIDATORS}; 0: no ledger).")
@click.option("--expert", "experts", multiple=True, metavar="SPEC",
              help="Expert every node hosts (repeatable), instead of the default: node 0 a chemistry "
                   "knowledge expert, node 1 a geography one, node 2 a bare generalist, then units, in turn.")
@click.option("--no-experts", is_flag=True, help="Host no models (a messaging-only swarm).")
@click.option("--threads", type=int, default=None, help="CPU threads per model in each node.")
@click.option("--timeout", "timeout_s", type=float, default=180.0, show_default=True,
              help="Seconds to wait for the nodes and the mesh.")
@click.option("--probe-interval", "probe_interval_s", type=click.FloatRange(min=1.0), default=SWARM_PROBE_INTERVAL_S,
              show_default=True, help="Seconds between each validator's probes (graded known-answer queries).")
@dir_option
@click.option("--json", "as_json", is_flag=True)
def swarm_up(n, validators, experts, no_experts, threads, timeout_s, probe_interval_s, swarm_dir, as_json) -> None:
    """Start N nodes on 127.0.0.1 and wait until they form a mesh."""
    from p2pnet_testnet import swarm as swarm_mod

    swarm_dir = _dir(swarm_dir)
    if validators is None:
        validators = min(n, DEFAULT_VALIDATORS)
    node_args: list[str] = []
    model_store = None
    layout: list[str] = []
    per_node: dict = {}
    if no_experts:
        node_args.append("--no-experts")
    else:
        for spec in experts:
            node_args += ["--expert", spec]
        if not experts:  # a different expert on each node, so routing has experts to tell apart
            layout = swarm_mod.expert_layout(n)
            per_node = swarm_mod.default_expert_args(n)
        model_store = swarm_dir
        _ensure_models(model_store, experts)
    if threads:
        node_args += ["--threads", str(threads)]
    nodes = swarm_mod.up(n, swarm_dir, validators=validators, node_args=node_args, extra_args=per_node,
                         model_store=model_store, probe_interval_s=None if no_experts else probe_interval_s,
                         timeout_s=timeout_s, progress=lambda m: click.echo(m, err=True))
    for node in nodes:
        node["expert"] = layout[node["index"]] if layout else ("none" if no_experts else "--expert")
    if as_json:
        emit({"dir": str(swarm_dir), "validators": validators, "nodes": nodes})
        return
    ledger = (f"{validators} validator{'s keep' if validators > 1 else ' keeps'} the ledger (p2pnet reputation)"
              if validators else "no ledger (--validators 0)")
    click.echo(f"swarm of {len(nodes)} nodes is up in {swarm_dir}; {ledger}")
    for node in nodes:
        expert = f"  {_EXPERT_NAMES.get(node['expert'], node['expert'] + ' knowledge expert')}" if layout else ""
        click.echo(f"  node{node['index']}  {node['peer_id']}  api {node['api']}  peers {len(node['peers'])}{expert}")
    click.echo(f"dashboard: {nodes[0]['api']}/   (or: p2pnet dashboard)")
    click.echo(f"ask it: p2pnet ask --api {nodes[0]['api']} \"What is the capital of France?\"")
    if "chemistry" in layout:
        click.echo("        p2pnet ask \"What is the atomic number of tungsten?\"   (routed to the chemistry expert)")


_EXPERT_NAMES = {"general": "bare generalist"}


def _ensure_models(store: Path, experts) -> None:
    """Pull the models the experts name once, before the nodes start."""
    from p2pnet.experts import modelstore
    from p2pnet.experts.spec import parse_expert_spec
    from p2pnet_cli.models import _Bars

    names = {parse_expert_spec(s).model for s in experts} or {modelstore.DEFAULT_MODEL}
    for name in sorted(n for n in names if n in modelstore.default_registry()):
        if modelstore.stored(name, store) is None:
            click.echo(f"pulling model {name} into {modelstore.models_dir(store)} (one time)", err=True)
            bars = _Bars(True)
            try:
                modelstore.pull(name, store, progress=bars)
            finally:
                bars.close()


@swarm.command("status")
@dir_option
@click.option("--json", "as_json", is_flag=True)
def swarm_status(swarm_dir, as_json) -> None:
    """Show the swarm's nodes and their peers."""
    from p2pnet_testnet import swarm as swarm_mod

    swarm_dir = _dir(swarm_dir)
    try:
        nodes = swarm_mod.status(swarm_dir)
    except swarm_mod.SwarmError as exc:
        if not as_json:
            raise
        emit({"dir": str(swarm_dir), "nodes": [], "error": str(exc)})  # a script still gets JSON
        raise click.exceptions.Exit(1) from None
    if as_json:
        emit({"dir": str(swarm_dir), "nodes": nodes})
        return
    for node in nodes:
        state = "up" if node["alive"] else "DOWN"
        click.echo(f"node{node['index']}  {state:4}  pid {node['pid']}  {node['peer_id']}  "
                   f"api {node['api']}  peers {len(node['peers'])}")


@swarm.command("down")
@dir_option
def swarm_down(swarm_dir) -> None:
    """Stop exactly the processes `swarm up` started."""
    from p2pnet_testnet import swarm as swarm_mod

    pids = swarm_mod.down(_dir(swarm_dir))
    click.echo(f"stopped {len(pids)} node(s)")
