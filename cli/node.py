"""`p2pnet node start|id`, `p2pnet status`, `p2pnet peers`, `p2pnet broadcast`, `p2pnet messages`."""

from __future__ import annotations

from pathlib import Path

import click

from p2pnet.config import MAX_JUDGES, default_data_dir
from p2pnet_cli.main import cli
from p2pnet_cli.util import api_base, emit, get_json, post_json

data_dir_option = click.option(
    "--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
    help="Node data directory (default: $P2PNET_HOME or ~/.p2pnet).",
)
api_option = click.option("--api", "api", default=None, metavar="URL",
                          help="HTTP API of the node to ask (default: the node of --data-dir).")
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")


@cli.group()
def node() -> None:
    """Run this machine's node."""


@node.command("start")
@data_dir_option
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="TOML config file; flags override it.")
@click.option("--listen", multiple=True, metavar="MADDR", help="Listen multiaddr (default /ip4/127.0.0.1/tcp/4001).")
@click.option("--bootstrap", multiple=True, metavar="MADDR", help="Bootstrap peer multiaddr with /p2p/ID; repeatable.")
@click.option("--announce", "announce_addrs", multiple=True, metavar="MADDR", help="Address to advertise to peers.")
@click.option("--api-host", default=None, help="API bind address (default 127.0.0.1; others need --api-key).")
@click.option("--api-port", type=int, default=None, help="API port (default 8700; 0 picks a free one).")
@click.option("--api-key", default=None, help="Bearer key required by the API (or $P2PNET_API_KEY).")
@click.option("--api-allow-host", "api_allowed_hosts", multiple=True, metavar="NAME",
              help="A Host name the API answers besides loopback names and its own address; repeatable.")
@click.option("--api-allow-origin", "api_allowed_origins", multiple=True, metavar="ORIGIN",
              help="A web origin (e.g. https://ui.example:8443) allowed to call the API; repeatable. Default: none.")
@click.option("--expert", "experts", multiple=True, metavar="SPEC",
              help="Host an expert, e.g. model=smollm2-135m,domains=general+geography,price=0.1")
@click.option("--no-experts", is_flag=True, default=None, help="Host no model (a relay/coordinator only node).")
@click.option("--model-store", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Directory whose models/ folder holds the models (default: the data dir).")
@click.option("--threads", type=int, default=None, help="CPU threads per model (default: all cores).")
@click.option("--gpu-layers", type=int, default=None, help="Layers to offload to a GPU (falls back to CPU).")
@click.option("--network", default=None, metavar="FILE|NAME",
              help="Join the network of this spec (a file, or a NAME from `p2pnet network list`): its "
                   "genesis and its bootstrap peers.")
@click.option("--dht", is_flag=True, default=None,
              help="Also find peers by ID through a Kademlia DHT (/ipfs/kad/1.0.0), beyond peer exchange.")
@click.option("--validator", is_flag=True, default=None,
              help="Take part in consensus (needs --network or --genesis).")
@click.option("--genesis", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Genesis file.")
@click.option("--probe-interval", "probe_interval_s", type=float, default=None,
              help="Seconds between probe queries with known answers (default: 300 on validators, else off).")
@click.option("--judges", type=click.IntRange(0, MAX_JUDGES), default=None,
              help="Experts asked to rank each query's answers (default 0).")
@click.option("--escalate-below", "escalate_below", type=click.FloatRange(0.0, 1.0), default=None,
              help="Ask a second expert when a single answer's own confidence is below this "
                   "(default 0.6, set for the default model; 0: never).")
@click.option("--cost-weight", "cost_weight", type=click.FloatRange(0.0, 1.0), default=None,
              help="How much an expert's price counts against its quality when choosing respondents "
                   "(default 0.01; 0: price-blind).")
@click.option("--budget", type=click.FloatRange(0.0), default=None,
              help="Spend this much per query on average (the prices of the experts it asks, summed; "
                   "probes included); the node moves --cost-weight to keep it (default 0: off).")
@click.option("--relay", type=click.Choice(["auto", "on", "off"]), default=None,
              help="Serve as a circuit relay: auto (default: while publicly reachable), on, off. Limits: "
                   "relay_max_* in the config file.")
@click.option("--want-relays", type=click.IntRange(0, 8), default=None,
              help="Relay reservations a node behind NAT holds (default 2).")
@click.option("--announce-private", is_flag=True, default=None,
              help="Also announce private (RFC 1918/CGNAT) addresses: for a network inside one LAN.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default=None)
def node_start(data_dir, config_file, **flags) -> None:
    """Start a node in the foreground (Ctrl-C stops it cleanly)."""
    import trio

    from p2pnet import config as config_mod
    from p2pnet.node import Node, read_runtime

    cfg = config_mod.with_network(config_mod.build(config_file, data_dir=data_dir, **flags))
    _setup_logging(cfg.log_level)
    running = read_runtime(cfg.data_dir)
    if running and _pid_alive(running.get("pid")):
        raise click.ClickException(
            f"a node (pid {running['pid']}) is already running with data dir {cfg.data_dir}"
        )
    _check_before_start(cfg)
    node_obj = Node(cfg, handle_signals=True)
    click.echo(f"p2pnet node {node_obj.peer_id} starting (data dir {cfg.data_dir})"
               + (f", joining network {cfg.network} ({len(cfg.bootstrap)} bootstrap peers)" if cfg.network else ""),
               err=True)
    trio.run(_run_node, node_obj)
    click.echo("p2pnet node stopped", err=True)


async def _run_node(node_obj) -> None:
    """Run the node; once it is ready, print where its dashboard is."""
    import trio

    from p2pnet.api.dashboard import dashboard_url

    async with trio.open_nursery() as nursery:
        await nursery.start(node_obj.run)
        click.echo(f"dashboard: {dashboard_url(node_obj.api_url, node_obj.config.api_key)}", err=True)


@node.command("id")
@data_dir_option
def node_id(data_dir) -> None:
    """Print this node's peer ID (creating the key on first use)."""
    from p2pnet.identity import load_or_create

    click.echo(load_or_create(data_dir or default_data_dir()).peer_id_str)


@cli.command()
@data_dir_option
@api_option
@json_option
def status(data_dir, api, as_json) -> None:
    """Show a running node's status: peers, topics, message counters."""
    info = get_json(api_base(api, data_dir) + "/status")
    if as_json:
        emit(info)
        return
    c = info.get("counters", {})
    boot = info.get("bootstrap") or []
    if info.get("state") == "no peers":
        click.secho("NO PEERS: this node is cut off from the network (it keeps dialling its bootstrap "
                    "and remembered peers)" if boot else
                    f"NO PEERS: this node is the only bootstrap peer of network {info['network']} it knows; it "
                    "waits for others to dial it" if info.get("network") else
                    "NO PEERS: this node has no bootstrap peers and nobody has dialled it "
                    "(start it with --network NAME|FILE or --bootstrap MADDR)", fg="red", bold=True, err=True)
    click.echo(f"state     {info.get('state', 'ready')}")
    if info.get("network"):
        click.echo(f"network   {info['network']}")
    click.echo(f"peer id   {info['peer_id']}")
    click.echo(f"api       {info.get('api')}")
    click.echo(f"listen    {', '.join(info.get('listen', []))}")
    click.echo(f"uptime    {info.get('uptime_s')} s")
    conns = info.get("connections") or {}
    click.echo(f"peers     {info.get('peer_count')}"
               + (f"   (keeps {conns['low']}-{conns['high']}; trimmed {conns.get('trimmed', 0)})" if conns else "")
               + (f"   banned {len(info['banned'])}" if info.get("banned") else ""))
    click.echo(f"received  {sum(c.get('received', {}).values())}   sent {sum(c.get('sent', {}).values())}"
               f"   dropped {sum(c.get('dropped', {}).values())} {c.get('dropped') or ''}")
    for b in boot:
        if b.get("connected"):
            how = "connected"
        elif b.get("tries"):
            how = f"FAILED {b['tries']}x, last: {b.get('last_error') or '?'}"
        else:
            how = "not dialled yet"
        click.echo(f"bootstrap {b['addr']}  {how}")
    dht = info.get("dht")
    if isinstance(dht, dict):
        click.echo(f"dht       routing table {dht.get('routing_table')} peers; lookups {dht.get('lookups')}, "
                   f"found {dht.get('found')}")
    for topic, n in sorted(info.get("topics", {}).items()):
        click.echo(f"topic     {topic}  mesh={n}")
    for card in info.get("experts", []):
        click.echo(f"expert    {card.get('expert_id')}  {card.get('model')}  domains={','.join(card.get('domains', []))}"
                   f"  gen={card.get('gen_tps', 0):.0f} tok/s  load={card.get('load')}/{card.get('max_concurrency')}")
    if "height" in info:
        click.echo(f"ledger    height {info['height']}{'  (validator)' if info.get('validator') else ''}")
    budget = info.get("budget")
    if isinstance(budget, dict):  # --budget: the price of accuracy the node has moved to
        spent = budget.get("spent_per_query")
        click.echo(f"budget    {budget.get('budget'):g} per query   cost weight now {budget.get('cost_weight'):.4f}   "
                   + (f"spent {spent:.2f} per query over {budget.get('queries')} queries and "
                      f"{budget.get('probes')} probes" if spent is not None else "nothing spent yet"))
    nat = info.get("nat")
    if isinstance(nat, dict):
        reach = nat.get("reachability") or {}
        paths = ", ".join(f"{k} {v}" for k, v in sorted((nat.get("paths") or {}).items())) or "none"
        click.echo(f"reach     {reach.get('state', 'unknown')}   relay service {'on' if nat.get('relay_service') else 'off'}"
                   f"   paths: {paths}")
        for r in nat.get("relays") or []:
            click.echo(f"relay     {r.get('addr')}/p2p/{r.get('relay')}  (reservation {r.get('expires_in_s')} s)")


@cli.group(invoke_without_command=True)
@data_dir_option
@api_option
@json_option
@click.pass_context
def peers(ctx, data_dir, api, as_json) -> None:
    """List the peers a running node is connected to (`peers find ID`: find one by its ID)."""
    if ctx.invoked_subcommand is not None:
        return
    info = get_json(api_base(api, data_dir) + "/peers")
    if as_json:
        emit(info)
        return
    if not info["peers"]:
        click.echo("no peers connected")
    for p in info["peers"]:
        click.echo(f"{p['peer_id']}  {' '.join(p.get('addrs', []))}")


@peers.command("find")
@click.argument("peer_id")
@click.option("--fresh", is_flag=True,
              help="Drop the connection to the peer and what the node knew of its addresses first, "
                   "so both come from the DHT lookup.")
@data_dir_option
@api_option
@json_option
def peers_find(peer_id, fresh, data_dir, api, as_json) -> None:
    """Find a peer by its ID through the DHT (a node started with --dht) and dial it."""
    out = post_json(api_base(api, data_dir) + "/peers/find", {"peer_id": peer_id, "fresh": fresh}, timeout=90)
    if as_json:
        emit(out)
    elif out.get("connected"):
        click.echo(f"{out['peer_id']}  connected ({out.get('path', 'direct')}); found ({out.get('source')}) at "
                   f"{' '.join(out.get('addrs', []))}")
    if not out.get("connected"):
        raise click.ClickException(f"{peer_id}: " + (f"found at {' '.join(out['addrs'])} but not reachable"
                                                     if out.get("found") else "not found in the DHT"))


@cli.command()
@click.argument("text")
@data_dir_option
@api_option
@json_option
def broadcast(text, data_dir, api, as_json) -> None:
    """Publish a text message to every node (signed, over GossipSub)."""
    out = post_json(api_base(api, data_dir) + "/broadcast", {"text": text})
    if as_json:
        emit(out)
    else:
        click.echo("sent" if out.get("ok") else f"not sent: {out.get('error')}")


@cli.command()
@data_dir_option
@api_option
@json_option
@click.option("--since", type=int, default=0, help="Only messages numbered above this.")
def messages(data_dir, api, as_json, since) -> None:
    """Show the broadcast messages a running node received."""
    out = get_json(api_base(api, data_dir) + f"/messages?since={since}")
    if as_json:
        emit(out)
        return
    for m in out["messages"]:
        click.echo(f"#{m['n']} {m['from'][:16]}…: {m['text']}")


def _check_before_start(cfg) -> None:
    """Fail before any startup work on what the node would fail on later:
    each --expert spec, its model and knowledge base, the --genesis file, a damaged ledger
    (its head and sign record), and listen addresses that cannot be bound
    (py-libp2p would run on without a listener, or share a busy port)."""
    from p2pnet.consensus import load_genesis
    from p2pnet.consensus.store import check_ledger_at
    from p2pnet.experts import modelstore
    from p2pnet.experts.spec import SCRIPTED_PREFIX, parse_expert_spec
    from p2pnet.gossip.listen import check_listen_addrs

    store = cfg.model_store or cfg.data_dir
    for text in () if cfg.no_experts else cfg.experts:
        spec = parse_expert_spec(text)
        if not spec.model.startswith(SCRIPTED_PREFIX) and spec.model not in modelstore.default_registry():
            modelstore.resolve(spec.model, store)  # a known name is pulled at start; others must exist
        if spec.knowledge:
            from p2pnet.experts.knowledge import load_passages

            load_passages(spec.knowledge)  # KnowledgeError names a missing or malformed file
    if cfg.genesis is not None:
        check_ledger_at(Path(cfg.data_dir) / "ledger", load_genesis(cfg.genesis))
    check_listen_addrs(cfg.listen)


def _pid_alive(pid) -> bool:
    import os

    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _setup_logging(level: str) -> None:
    from p2pnet import logs

    logs.setup(level)
