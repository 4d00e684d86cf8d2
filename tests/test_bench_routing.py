"""The per-seed bar of bench/routing.py (issue 23: every committed scenario in
every seed): which seeds meet their scenario's target, from run summaries."""

import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench" / "routing.py"


@pytest.fixture(scope="module")
def routing():
    spec = importlib.util.spec_from_file_location("bench_routing", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def run(acc=1.0, cost=1.0, shares=(0.0,), warmup=500, window=100):
    series = [{"end": window * (i + 1), "adversary_share": s} for i, s in enumerate(shares)]
    return {"after_warmup": {"accuracy_vs_oracle": acc, "cost_vs_best": cost, "from_query": warmup},
            "series": series}


def test_accuracy_scenarios_need_095_of_the_oracle(routing):
    assert routing.meets_bar("mixed-threats", run(acc=0.95)) == (True, "0.9500")
    # shown to four places: a miss by a hair does not read as the bar itself
    assert routing.meets_bar("mixed-threats", run(acc=0.9499)) == (False, "0.9499")
    assert routing.meets_bar("lossy", run(acc=0.94))[0] is False


def test_cost_scenarios_need_half_the_cost_at_095_of_the_accuracy(routing):
    assert routing.meets_bar("metallm-cost", run(acc=0.99, cost=0.5))[0] is True
    assert routing.meets_bar("metallm-cost", run(acc=0.99, cost=0.501)) == (False, "cost 0.5010 at 0.9900")
    # cheap but wrong does not count
    assert routing.meets_bar("price-ladder", run(acc=0.94, cost=0.2))[0] is False


def test_sybil_drift_must_stay_below_five_percent_once_below(routing):
    ok, why = routing.meets_bar("sybil-drift", run(shares=(0.4, 0.04, 0.03, 0.0)))
    assert ok and why == "0.030 after the first window below 5%"
    ok, why = routing.meets_bar("sybil-drift", run(shares=(0.4, 0.04, 0.06, 0.0)))
    assert not ok and why.startswith("0.060")
    assert routing.meets_bar("sybil-drift", run(shares=(0.4, 0.3))) == (False, "never below 5%")


def test_the_table_counts_seeds_and_names_the_misses(routing, capsys):
    results = [
        (("mixed-threats", 1, None, {}), run(acc=0.97)),
        (("mixed-threats", 2, None, {}), run(acc=0.93)),
        (("mixed-threats", 3, "copies", {}), run(acc=0.5)),  # not the policy as committed: left out
        (("sybil-drift", 1, None, {}), run(shares=(0.3, 0.0, 0.07, 0.0, 0.0, 0.0, 0.0), warmup=500)),
        (("sybil-drift", 2, None, {}), run(shares=(0.3, 0.0, 0.0, 0.0, 0.0, 0.0, 0.06), warmup=500)),
    ]
    routing.print_bar(results)
    rows = {line.split(" | ")[0].strip("| "): line for line in capsys.readouterr().out.splitlines()
            if line.startswith("| ") and not line.startswith("| scenario")}
    assert " | 1 of 2 | 2: 0.9300 | - |" in rows["mixed-threats"]
    # seed 1 fails in the warmup (window ending at 300), seed 2 after it (ending at 700)
    assert " | 0 of 2 | 1: 0.070 after the first window below 5%; 2: 0.060 after" in rows["sybil-drift"]
    assert rows["sybil-drift"].endswith(" | 1 of 2 |")
