"""`p2pnet dashboard`: open a running node's web dashboard (or print its URL)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from p2pnet_cli.main import cli
from p2pnet_cli.util import api_base, get_json


def _has_display() -> bool:
    """Whether a graphical browser can open here. On Linux without a display
    Python's webbrowser would fall back to a text browser in this terminal."""
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


@cli.command()
@click.option("--api", "api", default=None, metavar="URL",
              help="HTTP API of the node (default: the node of --data-dir, else the local swarm's first node).")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Node data directory (default: $P2PNET_HOME or ~/.p2pnet).")
@click.option("--no-open", is_flag=True, help="Only print the URL.")
def dashboard(api, data_dir, no_open) -> None:
    """Open the node's dashboard in a browser; print its URL.

    A node whose API needs a key: set P2PNET_API_KEY, and the URL carries a
    dashboard token (it opens the dashboard only, never the rest of the API)."""
    from p2pnet.api.dashboard import STATE_PATH, dashboard_url

    base = api_base(api, data_dir)
    get_json(base + STATE_PATH)  # the node answers (and the key, if any, is right): else one clear error
    url = dashboard_url(base, os.environ.get("P2PNET_API_KEY") or None)
    click.echo(url)
    if no_open:
        return
    if not _has_display():
        click.echo("no graphical browser here: open the URL in a browser on this machine", err=True)
        return
    import webbrowser

    try:
        opened = webbrowser.open(url)
    except webbrowser.Error:
        opened = False
    click.echo("opened in your browser" if opened else "no browser found: open the URL yourself", err=True)
