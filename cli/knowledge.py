"""`p2pnet knowledge build` and `p2pnet knowledge check PATH`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import click

from p2pnet_cli.main import cli
from p2pnet_cli.util import emit


def default_knowledge_dir() -> Path:
    """The knowledge bases shipped with the testnet package (testnet/knowledge)."""
    from p2pnet.experts.knowledge_build import shipped_dir

    root = shipped_dir()
    if root is None:
        raise click.ClickException("the p2pnet_testnet package is not installed: give --out FOLDER")
    return root


@cli.group()
def knowledge() -> None:
    """Build and check knowledge bases for knowledge experts."""


@knowledge.command("build")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for the domains' folders (default: the testnet package's knowledge/).")
@click.option("--domain", "domains", multiple=True,
              help="Build only this domain (repeatable; default: all).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def build_cmd(out: Optional[Path], domains: tuple, as_json: bool) -> None:
    """Rebuild the knowledge bases and question banks from their data packages
    (install them with: pip install 'p2pnet[knowledge]')."""
    from p2pnet.experts import knowledge_build

    try:
        metas = knowledge_build.build(out or default_knowledge_dir(), list(domains) or None)
    except ModuleNotFoundError as exc:
        raise click.ClickException(f"{exc.name} is missing: pip install 'p2pnet[knowledge]'") from None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--domain") from None
    if as_json:
        emit(metas)
        return
    for m in metas:
        sources = ", ".join(f"{p} {v}" for p, v in m["packages"].items())
        click.echo(f"{m['domain']}: {m['passages']} passages, {m['questions']} questions "
                   f"({m['probe']} probe, {m['heldout']} held out) from {sources}")


@knowledge.command("check")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def check_cmd(path: Path, as_json: bool) -> None:
    """Read and validate a knowledge base (a .jsonl file or a folder of .md/.txt
    files) as an expert would: its name, passage count and content hash."""
    from p2pnet.experts.knowledge import KnowledgeBase

    kb = KnowledgeBase.load(path)
    out = {"name": kb.name, "passages": len(kb), "sha256": kb.sha256, "warnings": list(kb.warnings)}
    if as_json:
        emit(out)
        return
    click.echo(f"{kb.name}: {len(kb)} passages, sha256 {kb.sha256}")
    for warning in kb.warnings:
        click.echo(f"warning: {warning}", err=True)
