"""ledger and reputation commands: read the ledger of a node's data dir
(read-only, beside a running node) or ask a node's HTTP API."""

from __future__ import annotations

import json
import sys
import urllib.parse
from pathlib import Path
from typing import Optional

import click

from p2pnet_cli.main import cli

DATA_DIR_HELP = ("Node data dir (default: $P2PNET_HOME or ~/.p2pnet; if that keeps no ledger, "
                 "the local swarm's first node).")


def _ledger_dir(data_dir: Optional[str]) -> Path:
    """--data-dir's ledger; without one, the default data dir's, else the
    local swarm's first node's (as `ask` falls back to that node)."""
    from p2pnet.config import default_data_dir
    from p2pnet_cli.util import swarm_first_node

    if data_dir:
        return Path(data_dir).expanduser() / "ledger"
    own = default_data_dir() / "ledger"
    swarm = swarm_first_node() / "ledger"
    if not (own / "data.mdb").exists() and (swarm / "data.mdb").exists():
        return swarm
    return own


def _open(data_dir: Optional[str]):
    from p2pnet.consensus.errors import LedgerError
    from p2pnet.consensus.store import Ledger

    path = _ledger_dir(data_dir)
    if not (path / "data.mdb").exists():
        where = "" if data_dir else " and the local swarm's nodes keep none"
        raise LedgerError(
            f"no ledger at {path}{where}; pass --data-dir DIR of a node that keeps one, or --api URL to ask "
            f"a running node (a local swarm keeps one unless started with --validators 0)")
    return Ledger.open(path, readonly=True)


def _get(api: str, path: str, params: dict) -> dict:
    """GET a ledger route of the node at --api (with $P2PNET_API_KEY, no proxy)."""
    from p2pnet.api.errors import HttpError
    from p2pnet_cli.util import api_url, get_json

    base = api_url(api)
    query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
    try:
        return get_json(base + path + (f"?{query}" if query else ""))
    except HttpError as exc:
        if exc.status == 404 and exc.message.startswith("no such path"):  # the route, not a block, is missing
            message = f"the node at {base} keeps no ledger (it was started without --genesis; a swarm started with --validators 0 keeps none)"
        else:
            message = f"the node at {base} answered {exc.status}: {exc.message}"
        raise click.ClickException(message) from None


def _echo_json(obj: dict) -> None:
    click.echo(json.dumps(obj, indent=2))


@cli.group()
def ledger() -> None:
    """Inspect the reputation ledger."""


@ledger.command("show")
@click.argument("height", type=int, required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--data-dir", type=click.Path(file_okay=False), help=DATA_DIR_HELP)
@click.option("--api", help="Ask a node's HTTP API instead, e.g. http://127.0.0.1:8700.")
def show(height: Optional[int], as_json: bool, data_dir: Optional[str], api: Optional[str]) -> None:
    """Show block HEIGHT (the latest without one)."""
    if api:
        obj = _get(api, "/ledger/block", {"height": height})
    else:
        from p2pnet.consensus.views import block_json

        with _open(data_dir) as led:
            obj = block_json(led, height)
    if as_json:
        _echo_json(obj)
        return
    click.echo(f"height {obj['height']}  hash {obj['hash']}")
    click.echo(f"time_ms {obj['time_ms']}  proposer {obj['proposer']}")
    click.echo(f"txs {obj['tx_count']}  state_hash {obj['state_hash'][:16]}  tx_root {obj['tx_root'][:16]}")
    for tx in obj["txs"]:
        if "respondent" in tx:
            click.echo(f"  {tx['hash'][:12]} {tx['rater'][:16]} -> {tx['respondent'][:16]} "
                       f"{tx['domain']} score={tx['score']:.3f}")
        else:
            click.echo(f"  {tx['hash'][:12]} {tx.get('kind', '?')} {tx.get('error', '')}")


@ledger.command("verify")
@click.option("--data-dir", type=click.Path(file_okay=False), help=DATA_DIR_HELP)
@click.option("--api", help="Ask a node's HTTP API instead.")
def verify(data_dir: Optional[str], api: Optional[str]) -> None:
    """Replay the chain from genesis; print OK or the first inconsistency (exit 1)."""
    if api:
        obj = _get(api, "/ledger/verify", {})
    else:
        from p2pnet.consensus.views import verify_json

        with _open(data_dir) as led:
            obj = verify_json(led)
    if obj["ok"]:
        click.echo(f"OK ({obj['height']} blocks)")
    else:
        click.echo(f"INCONSISTENT: {obj['error']}")
        sys.exit(1)  # not ctx.exit: main() runs click with standalone_mode=False, which drops its code


@cli.command("reputation")
@click.option("--domain", help="Only this domain.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--data-dir", type=click.Path(file_okay=False), help=DATA_DIR_HELP)
@click.option("--api", help="Ask a node's HTTP API instead.")
def reputation(domain: Optional[str], as_json: bool, data_dir: Optional[str], api: Optional[str]) -> None:
    """Experts' reputation standings, best first."""
    if api:
        obj = _get(api, "/reputation", {"domain": domain})
    else:
        from p2pnet.consensus.views import ledger_state, reputation_json

        with _open(data_dir) as led:
            obj = reputation_json(ledger_state(led), domain)
    if as_json:
        _echo_json(obj)
        return
    click.echo(f"height {obj['height']}  state {obj['state_hash'][:16]}")
    if not obj["standings"]:
        click.echo("no ratings yet")
    traffic = obj.get("traffic") or {}
    for s in obj["standings"]:
        share = traffic.get("share", {}).get(s["peer_id"])
        click.echo(f"{s['peer_id']}  {s['domain']:<16} score {s['score']:.3f}  "
                   f"confidence {s['confidence']:.2f}  ratings {s['count']}"
                   + ("" if share is None else f"  traffic {share:.0%}"))
    if traffic.get("share"):
        click.echo(f"traffic: share of respondent slots in this node's last {traffic['queries']} queries")
