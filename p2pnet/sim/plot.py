"""The PNG of a simulation summary (matplotlib, imported only here)."""

from __future__ import annotations

from pathlib import Path

from p2pnet.sim.scenario import ScenarioError


def require_matplotlib():
    """matplotlib.pyplot on the Agg backend; a one-line error if it is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ScenarioError("--plot needs matplotlib: from the p2pnet checkout, run "
                            "`.venv/bin/python -m pip install -e '.[sim]'`") from None
    return plt


def plot_summary(summary: dict, path: str | Path) -> None:
    """Accuracy over time against the oracle and random, cost per window, and
    the adversary traffic share with a marker where it stays below 5%."""
    plt = require_matplotlib()
    series = summary["series"]
    x = [w["end"] for w in series]
    fig, (ax1, ax2, ax3) = plt.subplots(3, 1, figsize=(7, 7.5), sharex=True)
    ax1.plot(x, [w["accuracy"] for w in series], "o-", label=f"{summary['policy']} policy")
    ax1.plot(x, [w["accuracy_oracle"] for w in series], "--", label="oracle (best expert)")
    ax1.plot(x, [w["accuracy_random"] for w in series], ":", label="random expert")
    ax1.set_ylabel("accuracy")
    ax1.set_ylim(0, 1.02)
    ax1.legend(loc="lower right", fontsize=8)
    ax1.set_title(f"{summary['scenario']} (seed {summary['seed']}, {summary['peers']} peers)", fontsize=10)
    ax2.plot(x, _cumsum([w["cost"] for w in series]), "o-", label="policy (probes included)")
    ax2.plot(x, _cumsum([w["cost_best"] for w in series]), "--", label="always the best expert")
    ax2.set_ylabel("total cost")
    ax2.legend(loc="upper left", fontsize=8)
    ax3.plot(x, [w["adversary_share"] for w in series], "o-", color="tab:red")
    ax3.axhline(0.05, color="grey", lw=0.8, ls=":")
    below = summary.get("queries_until_adversary_below_5pct")
    if below is not None:
        ax3.axvline(below, color="tab:green", lw=1, ls="--", label=f"below 5% from query {below}")
        ax3.legend(loc="upper right", fontsize=8)
    ax3.set_ylabel("adversary share")
    ax3.set_xlabel("queries")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _cumsum(values):
    out, total = [], 0.0
    for v in values:
        total += v
        out.append(total)
    return out
