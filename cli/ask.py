"""`p2pnet ask "question"`: ask the network through a node's OpenAI-compatible API."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from p2pnet_cli.main import cli
from p2pnet_cli.util import api_base, emit


@cli.command()
@click.argument("question")
@click.option("--api", default=None, metavar="URL", help="Node API to ask (default: the node of --data-dir).")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None)
@click.option("--domain", default=None, help="Query domain, e.g. geography (default: general).")
@click.option("--respondents", "-k", type=click.IntRange(1, 16), default=None,
              help="How many experts answer (default: the node's setting).")
@click.option("--model", default="p2pnet", show_default=True, help="Model id, or p2pnet for any expert.")
@click.option("--max-tokens", type=click.IntRange(1, 4096), default=None)
@click.option("--deadline", "deadline_s", type=click.FloatRange(0.1, 600), default=None, help="Seconds.")
@click.option("--system", default=None, help="A system prompt.")
@click.option("--stream/--no-stream", default=None, help="Print the answer as it arrives (default: on a terminal).")
@click.option("--json", "as_json", is_flag=True, help="Print the whole response as JSON.")
def ask(question, api, data_dir, domain, respondents, model, max_tokens, deadline_s, system, stream, as_json) -> None:
    """Ask QUESTION; prints the answer and where it came from."""
    import os

    from p2pnet.api import client

    base = api_base(api, data_dir)
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": question}]
    body = {"model": model, "messages": messages}
    for key, value in (("domain", domain), ("respondents", respondents), ("max_tokens", max_tokens),
                       ("deadline_s", deadline_s)):
        if value is not None:
            body[key] = value
    key = os.environ.get("P2PNET_API_KEY")
    timeout = (deadline_s or 120) + 30
    if stream is None:
        stream = sys.stdout.isatty() and not as_json
    if stream and not as_json:
        provenance = {}
        usage_tokens = 0
        for chunk in client.stream_json(base + "/v1/chat/completions", {**body, "stream": True},
                                        timeout=timeout, api_key=key):
            for choice in chunk.get("choices", []):
                piece = (choice.get("delta") or {}).get("content")
                if piece:
                    click.echo(piece, nl=False)
                    usage_tokens += 1
            provenance = chunk.get("p2pnet") or provenance
        click.echo()
        _print_provenance(provenance)
        return
    out = client.post_json(base + "/v1/chat/completions", body, timeout=timeout, api_key=key)
    if as_json:
        emit(out)
        return
    click.echo(out["choices"][0]["message"]["content"])
    _print_provenance(out.get("p2pnet") or {})


def _print_provenance(prov: dict) -> None:
    if not prov:
        return
    chosen = prov.get("chosen") or {}
    click.echo("", err=True)
    click.echo(f"{'':2}{'peer':18} {'expert':16} {'status':9} {'ms':>7} {'tokens':>6} {'score':>6}", err=True)
    for r in prov.get("respondents", []):
        mark = "*" if (r.get("peer_id"), r.get("expert_id")) == (chosen.get("peer_id"), chosen.get("expert_id")) else " "
        score = "" if r.get("score") is None else f"{r['score']:.2f}"
        click.echo(f"{mark:2}{r['peer_id'][:16] + '…':18} {r['expert_id'][:16]:16} {r['status']:9} "
                   f"{r.get('latency_ms', 0):>7} {r.get('completion_tokens', 0):>6} {score:>6}", err=True)
    click.echo(f"  chosen: {prov.get('reason', '')}; selection: {prov.get('selection', {}).get('reason', '')}", err=True)
