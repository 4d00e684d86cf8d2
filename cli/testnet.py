"""`p2pnet testnet up|status|down|exec|partition|heal|loss|bandwidth|kill|restart`:
a multi-host testnet on Linux network namespaces (needs root)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import click

from p2pnet_cli.main import cli
from p2pnet_cli.util import emit

dir_option = click.option("--dir", "tdir", type=click.Path(file_okay=False, path_type=Path), default=None,
                          help="Testnet directory (default: $P2PNET_HOME/testnet).")
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")


def _dir(tdir):
    from p2pnet.config import default_data_dir

    return (tdir or default_data_dir() / "testnet").resolve()


@cli.group()
def testnet() -> None:
    """A testnet of servers and NATed laptops in network namespaces (root only)."""


@testnet.command("up")
@click.option("--hosts", "n", type=click.IntRange(1, 200), default=4, show_default=True, help="Hosts in all.")
@click.option("--nat", type=click.IntRange(0, 199), default=0, show_default=True,
              help="How many of the hosts are laptops behind home NATs (the rest are public servers).")
@click.option("--symmetric-nat", "symmetric", type=click.IntRange(0, 199), default=0, show_default=True,
              help="How many of the NATed laptops sit behind a symmetric (port-randomising) NAT.")
@click.option("--loss", type=click.FloatRange(0, 100), default=0.0, show_default=True,
              help="Percent of packets lost on every link.")
@click.option("--bandwidth", default=None, metavar="RATE", help="Cap every host's uplink, e.g. 10mbit, each way.")
@click.option("--validators", type=click.IntRange(0, 200), default=None,
              help="The first V servers keep the ledger (default: up to 4; 0: no ledger).")
@click.option("--expert", "experts", multiple=True, metavar="SPEC",
              help="Expert every node hosts (default: the default model).")
@click.option("--expert-on", "expert_on", multiple=True, metavar="HOST=SPEC",
              help="An expert one host hosts instead (e.g. laptop1=model=scripted:wrong); HOST= hosts none.")
@click.option("--no-experts", is_flag=True, help="Host no models.")
@click.option("--threads", type=int, default=None, help="CPU threads per model in each node.")
@click.option("--dht", is_flag=True,
              help="Run every node with the Kademlia DHT (`p2pnet peers find ID` then works; off by default, "
                   "as in `node start`).")
@click.option("--timeout", "timeout_s", type=float, default=180.0, show_default=True,
              help="Seconds to wait for the nodes to start and join.")
@dir_option
@json_option
def testnet_up(n, nat, symmetric, loss, bandwidth, validators, experts, expert_on, no_experts, threads, dht,
               timeout_s, tdir, as_json) -> None:
    """Build the network and start a node on every host."""
    from p2pnet_cli.swarm import _ensure_models
    from p2pnet_testnet import faults, netns

    netns.require_root()
    tdir = _dir(tdir)
    netns.plan(n, nat, symmetric, netns.prefix_for(tdir), tdir)  # bad counts fail before any model is pulled
    if bandwidth:
        faults.parse_rate(bandwidth)
    if validators is not None and validators > n - nat:
        raise click.BadParameter(f"at most the {n - nat} servers can be validators", param_hint="--validators")
    host_experts: dict[str, list[str]] = {}
    for item in expert_on:
        host, sep, spec = item.partition("=")
        if not sep or not host:
            raise click.BadParameter(f"{item!r} is not HOST=SPEC", param_hint="--expert-on")
        host_experts.setdefault(host, [])
        if spec:
            host_experts[host].append(spec)
    specs = [] if no_experts else (list(experts) or None)
    node_args = (["--threads", str(threads)] if threads else []) + (["--dht"] if dht else [])
    model_store = None
    every = [s for ss in host_experts.values() for s in ss] + list(specs or [])
    if specs is None or any(not s.startswith("model=scripted:") for s in every):
        model_store = tdir
        tdir.mkdir(parents=True, exist_ok=True)
        _ensure_models(model_store, [s for s in every if not s.startswith("model=scripted:")])
    old = signal.signal(signal.SIGTERM, _interrupt)  # a kill of `up` still removes what it made
    try:
        out = netns.up(n, tdir, nat=nat, symmetric=symmetric, loss=loss, bandwidth=bandwidth,
                       validators=validators, experts=specs, host_experts=host_experts, node_args=node_args,
                       model_store=model_store, timeout_s=timeout_s, progress=lambda m: click.echo(m, err=True))
    finally:
        signal.signal(signal.SIGTERM, old)
    if as_json:
        emit(out)
        return
    _print_status(out)
    laptop = next((h for h in out["hosts"] if h["behind_nat"]), out["hosts"][0])
    click.echo(f"ask it: p2pnet testnet exec --dir {tdir} {laptop['name']} -- p2pnet ask \"What is the capital "
               "of France?\"")


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _print_status(out: dict) -> None:
    for h in out["hosts"]:
        nat = f"behind {h['nat']} NAT at {h['public_addr']}" if h["behind_nat"] else "public"
        state = "up" if h["alive"] else "DOWN"
        reach = f"  reach {h['reachability']}, {h['relays']} relays" if h.get("reachability") else ""
        click.echo(f"{h['name']:10} {state:4} {h['addr']:15} {nat:45} pid {h['pid']}  "
                   f"peers {', '.join(h['peer_names']) or '-'}{reach}")
    f = out["faults"]
    active = [f"loss {f['loss']}%"] if f["loss"] else []
    active += [f"loss {pct}% on {host}" for host, pct in f["host_loss"].items()]
    active += [f"loss {pct}% on {a}<->{b}" for a, b, pct in f["link_loss"]]
    active += [f"partition {','.join(p['a'])} | {','.join(p['b'])}{' (reject)' if p['reject'] else ''}"
               for p in f["partitions"]]
    active += [f"bandwidth {rate} on {host}" for host, rate in f["bandwidth"].items()]
    click.echo(f"faults: {'; '.join(active) if active else 'none'}")
    if out.get("network"):
        click.echo(f"network spec: {out['network']} (every node joined with --network)")


@testnet.command("status")
@dir_option
@json_option
def testnet_status(tdir, as_json) -> None:
    """Show every host: role, addresses, node, peers; and the faults in force."""
    from p2pnet_testnet import netns

    out = netns.status(_dir(tdir))
    if as_json:
        emit(out)
    else:
        _print_status(out)


@testnet.command("down")
@dir_option
@json_option
def testnet_down(tdir, as_json) -> None:
    """Stop the nodes and remove every namespace, veth, bridge and table the testnet made."""
    from p2pnet_testnet import netns

    out = netns.down(_dir(tdir))
    if as_json:
        emit(out)
    else:
        click.echo(f"stopped {len(out['stopped'])} node(s), removed {len(out['namespaces'])} namespace(s)")


@testnet.command("exec", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@dir_option
@click.argument("host")
@click.argument("cmd", nargs=-1, type=click.UNPROCESSED, required=True)
def testnet_exec(tdir, host, cmd) -> None:
    """Run CMD inside HOST's namespace, e.g. `testnet exec laptop0 -- p2pnet ask "..."`."""
    from p2pnet_testnet import netns

    cmd = list(cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    argv, env = netns.exec_command(_dir(tdir), host, cmd)
    os.execvpe(argv[0], argv, env)


@testnet.command("partition")
@click.argument("groups", nargs=-1, required=True)
@click.option("--reject", is_flag=True,
              help="Answer with TCP resets / ICMP unreachable, so open connections break at once "
                   "(default: drop silently, like a cut cable).")
@dir_option
def testnet_partition(groups, reject, tdir) -> None:
    """Cut hosts off from each other: `partition server0,laptop0 server1` (or one group: from all the others)."""
    from p2pnet_testnet import netns

    if len(groups) > 2:
        raise click.BadParameter("give one or two comma-separated groups of hosts", param_hint="GROUPS")
    sets = [[h for h in g.split(",") if h] for g in groups]
    part = netns.partition(_dir(tdir), sets[0], sets[1] if len(sets) > 1 else None, reject=reject)
    click.echo(f"partitioned {','.join(part['a'])} | {','.join(part['b'])}")


@testnet.command("heal")
@dir_option
def testnet_heal(tdir) -> None:
    """Remove every partition."""
    from p2pnet_testnet import netns

    click.echo(f"healed {netns.heal(_dir(tdir))} partition(s)")


@testnet.command("loss")
@click.argument("pct", type=click.FloatRange(0, 100))
@click.option("--host", default=None, help="Only packets to or from this host.")
@click.option("--link", nargs=2, default=None, metavar="A B", help="Only packets between these two hosts.")
@dir_option
def testnet_loss(pct, host, link, tdir) -> None:
    """Drop PCT % of packets on every link (or of one host, or one link); 0 removes it."""
    from p2pnet_testnet import netns

    netns.set_loss(_dir(tdir), pct, host=host, link=link)
    where = f"host {host}" if host else f"link {link[0]}<->{link[1]}" if link else "every link"
    click.echo(f"loss {pct:g}% on {where}")


@testnet.command("bandwidth")
@click.argument("rate")
@click.option("--host", default=None, help="Only this host (default: every host).")
@dir_option
def testnet_bandwidth(rate, host, tdir) -> None:
    """Cap uplinks at RATE each way (e.g. 1mbit); `off` removes the cap."""
    from p2pnet_testnet import netns

    netns.set_bandwidth(_dir(tdir), None if rate == "off" else rate, host=host)
    click.echo(f"bandwidth {rate} on {host or 'every host'}")


@testnet.command("kill")
@click.argument("host")
@click.option("--signal", "sig", type=click.Choice(["KILL", "TERM"]), default="KILL", show_default=True)
@dir_option
def testnet_kill(host, sig, tdir) -> None:
    """Kill a host's node (kill -9 by default)."""
    from p2pnet_testnet import netns

    pid = netns.kill(_dir(tdir), host, getattr(signal, f"SIG{sig}"))
    click.echo(f"sent SIG{sig} to {host} (pid {pid})")


@testnet.command("restart")
@click.argument("host")
@click.option("--timeout", "timeout_s", type=float, default=120.0, show_default=True)
@dir_option
def testnet_restart(host, timeout_s, tdir) -> None:
    """Start a killed host's node again and wait until it rejoins."""
    from p2pnet_testnet import netns

    pid = netns.restart(_dir(tdir), host, timeout_s)
    click.echo(f"{host} restarted (pid {pid}) and rejoined")
