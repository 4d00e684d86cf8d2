"""Helpers shared by the CLI commands: finding the node's API, HTTP calls
that fail with one clear line, JSON output."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional
from urllib.parse import urlsplit

import click

from p2pnet.config import default_data_dir


def default_swarm_dir() -> Path:
    """Where `p2pnet swarm` keeps its nodes unless told: $P2PNET_HOME/swarm."""
    return default_data_dir() / "swarm"


def swarm_first_node() -> Path:
    """The data dir of the local swarm's first node, which commands fall back to."""
    return default_swarm_dir() / "node0"


def api_base(api: Optional[str], data_dir: Optional[Path]) -> str:
    """The API URL to talk to: --api, else the running node of the data dir."""
    if api:
        return api_url(api)
    from p2pnet.node import read_runtime

    d = Path(data_dir) if data_dir else default_data_dir()
    info = read_runtime(d)
    if (not info or not info.get("api")) and data_dir is None:
        # no node of its own: use the local swarm's first node, if one runs
        info = read_runtime(swarm_first_node())
    if not info or not info.get("api"):
        raise click.ClickException(
            f"no running node found for data dir {d} (start one with `p2pnet node start` or a local swarm "
            f"with `p2pnet swarm up`, or pass --api URL)"
        )
    return info["api"].rstrip("/")


def api_url(api: str) -> str:
    """--api checked as an http(s) URL with a host; the base URL without a
    trailing slash or /v1 (an OpenAI-style base URL names the same node)."""
    try:
        parts = urlsplit(api)
        parts.port  # a port that is not a number raises here
    except ValueError as exc:
        raise click.BadParameter(f"{api!r} is not a URL ({exc})", param_hint="--api") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise click.BadParameter(f"{api!r} is not an http:// or https:// URL with a host, e.g. "
                                 "http://127.0.0.1:8700", param_hint="--api")
    base = api.rstrip("/")
    return base[:-len("/v1")].rstrip("/") if base.endswith("/v1") else base


def local_model_store(model_store: Optional[Path], data_dir: Optional[Path]) -> Path:
    """Where the cascade's local model is stored: --model-store, else the data
    dir; with neither given, the default data dir, or the local swarm's
    directory when only the swarm has pulled the default model."""
    if model_store or data_dir:
        return Path(model_store or data_dir)
    from p2pnet.experts import modelstore

    home, swarm = default_data_dir(), default_swarm_dir()
    if modelstore.stored(modelstore.DEFAULT_MODEL, home) is None and \
            modelstore.stored(modelstore.DEFAULT_MODEL, swarm) is not None:
        return swarm
    return home


def get_json(url: str, timeout: float = 10.0) -> dict:
    import os

    from p2pnet.api import client

    return client.get_json(url, timeout=timeout, api_key=os.environ.get("P2PNET_API_KEY"))


def post_json(url: str, obj: dict, timeout: float = 30.0) -> dict:
    import os

    from p2pnet.api import client

    return client.post_json(url, obj, timeout=timeout, api_key=os.environ.get("P2PNET_API_KEY"))


def emit(obj) -> None:
    click.echo(json.dumps(obj, indent=2, sort_keys=False))
