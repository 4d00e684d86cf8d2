"""`p2pnet network init|show|list`: network specs (p2pnet.netspec)."""

from __future__ import annotations

from pathlib import Path

import click

from p2pnet_cli.main import cli
from p2pnet_cli.util import emit

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")


@cli.group()
def network() -> None:
    """Network specs: a network's name, genesis and bootstrap peers, in one file."""


@network.command("init")
@click.option("--name", required=True, help="The network's name (a-z 0-9 . _ -), e.g. acme-net.")
@click.option("--validator", "validators", multiple=True, required=True, metavar="PEERID|DIR|KEYFILE",
              help="A validator: its peer ID (`p2pnet node id` on its machine), or a node data dir or key "
                   "file on this one (only the public key is used); repeatable.")
@click.option("--power", "powers", multiple=True, type=click.IntRange(1, 100_000), metavar="N",
              help="Voting power of each --validator in order (default 10 each).")
@click.option("--bootstrap", "bootstrap", multiple=True, required=True, metavar="MADDR",
              help="A bootstrap peer, /ip4|dns4/HOST/tcp/PORT/p2p/PEERID; repeatable.")
@click.option("--chain-id", default=None, help="The ledger's chain id (default: the name).")
@click.option("--param", "params", multiple=True, metavar="KEY=INT",
              help="A genesis chain parameter, e.g. create_empty_blocks_interval_ms=5000; repeatable.")
@click.option("--comment", default="", help="Free text stored in the spec.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where to write it (default: NAME.json in the user's networks dir, so --network NAME finds it).")
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
@json_option
def network_init(name, validators, powers, bootstrap, chain_id, params, comment, out, force, as_json) -> None:
    """Write the spec of a new network from its validators and bootstrap addresses."""
    import dataclasses

    from p2pnet import netspec
    from p2pnet.consensus.genesis import GenesisError, Params, generate_genesis
    from p2pnet.files import write_json_atomic

    try:
        netspec.check_name(name)
    except ValueError as exc:
        raise click.BadParameter(str(exc).split(": ", 1)[1], param_hint="--name") from None
    if powers and len(powers) != len(validators):
        raise click.BadParameter(f"give one --power per --validator ({len(validators)}), or none",
                                 param_hint="--power")
    keys = [netspec.validator_public_key(v) for v in validators]
    if len(set(keys)) != len(keys):
        raise click.BadParameter("a validator is named twice", param_hint="--validator")
    values = {}
    names = {f.name for f in dataclasses.fields(Params)}
    for item in params:
        key, sep, value = item.partition("=")
        if not sep or key not in names or not value.strip().isdigit():
            raise click.BadParameter(f"{item!r} is not KEY=INT with KEY a genesis parameter", param_hint="--param")
        values[key] = int(value)
    try:
        genesis = generate_genesis(keys, powers or None, chain_id=chain_id or name, params=Params(**values))
    except GenesisError as exc:
        raise click.ClickException(f"genesis: {exc}") from None
    spec = netspec.make_spec(name, genesis, bootstrap, comment)
    out = out or netspec.user_networks_dir() / f"{name}.json"
    if out.exists() and not force:
        raise click.ClickException(f"{out} exists (pass --force to overwrite it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out, spec.to_json_obj())
    netspec.load_spec(out)  # what was written reads back
    if as_json:
        emit({**spec.summary(), "file": str(out)})
        return
    click.echo(f"wrote {out}: network {name}, genesis {spec.genesis_hash[:16]}..., "
               f"{len(keys)} validator(s), {len(bootstrap)} bootstrap peer(s)")
    click.echo(f"join it: p2pnet node start --network {out}")


@network.command("show")
@click.argument("ref", metavar="FILE|NAME")
@json_option
def network_show(ref, as_json) -> None:
    """Check a spec and show its network: genesis hash, validators, bootstrap peers."""
    from p2pnet import netspec

    spec = netspec.resolve(ref)
    info = spec.summary()
    if as_json:
        emit(info)
        return
    click.echo(f"network      {info['name']}")
    click.echo(f"file         {info['file']}")
    click.echo(f"genesis      {info['genesis_hash']}  (chain {info['chain_id']}; verified)")
    for v in info["validators"]:
        click.echo(f"validator    {v['peer_id']}  power {v['power']}")
    for addr in info["bootstrap"]:
        click.echo(f"bootstrap    {addr}")
    if info["comment"]:
        click.echo(f"comment      {info['comment']}")


@network.command("list")
@json_option
def network_list(as_json) -> None:
    """The networks --network NAME can name: the user's, then the shipped ones."""
    from p2pnet import netspec

    found = netspec.known_networks()
    if as_json:
        emit({"dirs": [str(d) for d in netspec.search_dirs()],
              "networks": [{"name": n, "file": str(f)} for n, f in found.items()]})
        return
    if not found:
        click.echo(f"no network specs in {', '.join(str(d) for d in netspec.search_dirs())}")
    for n, f in found.items():
        click.echo(f"{n:24} {f}")
