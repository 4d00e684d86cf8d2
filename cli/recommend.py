"""`p2pnet models recommend`: which model to host here and which network tier
to ask, for this machine's resources and the user's needs."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import click

from p2pnet_cli.models import models


@models.command("recommend")
@click.option("--domain", default="general", show_default=True, help="What you will ask about (math, code, ...).")
@click.option("--max-latency-ms", type=click.IntRange(1), default=None,
              help="Longest acceptable time for a 128-token answer (default 15000).")
@click.option("--min-quality", type=click.FloatRange(0.0, 1.0), default=0.0, show_default=True,
              help="Least acceptable quality on the catalogue's rough 0-1 scale.")
@click.option("--max-price", type=click.FloatRange(0.0), default=None, help="Most you pay per 1k tokens.")
@click.option("--measure", is_flag=True, help="Calibrate speeds by running the stored default model here.")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Data dir whose models/ holds the default model (for --measure).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def recommend_cmd(domain: str, max_latency_ms: Optional[int], min_quality: float, max_price: Optional[float],
                  measure: bool, data_dir: Optional[Path], as_json: bool) -> None:
    """Recommend a model + quantization to host, and a network tier to ask."""
    import json

    from p2pnet.config import default_data_dir
    from p2pnet.experts import recommend as rec

    res = rec.detect_resources()
    cal = rec.measured_calibration(data_dir or default_data_dir(), res.cpu_cores) if measure else None
    out = rec.recommend(res, rec.Needs(domain, max_latency_ms, min_quality, max_price), cal=cal)
    for warning in out.warnings:  # on stderr: --json stays clean (the JSON has them too)
        click.echo(f"p2pnet: warning: {warning}", err=True)
    if as_json:
        click.echo(json.dumps(out.to_json(), indent=2))
        return
    r = out.resources
    gpus = ", ".join(f"{g.name} {g.memory_bytes / rec.GB:.0f} GB" for g in r.gpus) or "none"
    click.echo(f"this machine: {r.ram_bytes / rec.GB:.1f} GB RAM, {r.cpu_cores} CPU cores, GPU: {gpus}")
    click.echo(f"speeds calibrated on: {out.calibration.source}")
    for label, e, unmet in (("host", out.host, out.host_unmet),
                            ("host (pullable now)", out.host_pullable, out.host_pullable_unmet)):
        if e is None:
            click.echo(f"{label}: nothing in the catalogue fits these needs on this machine")
            continue
        click.echo(f"{label}: {e.model.name} {e.model.quantization} ({e.model.size_bytes / rec.GB:.2f} GB, "
                   f"size {e.model.size_source}) on {e.device}: ~{e.gen_tps:.0f} tok/s, ~{e.latency_ms} ms "
                   f"per 128 tokens, quality ~{e.quality:.2f} (estimates)")
        _echo_unmet(unmet)
        click.echo(f"{'':4}get it: {e.to_json()['get']}")
    click.echo(f"ask: {out.tier} ({out.tier_reason})")
    _echo_unmet(out.tier_unmet)
    if not out.needs_met:
        click.echo("no option here or on the network meets every need you gave (estimates); "
                   "the closest are above")


def _echo_unmet(unmet) -> None:
    if unmet:
        click.echo(f"{'':4}does not meet your needs: {'; '.join(str(u) for u in unmet)} (estimates)")
