"""A budget (p2pnet.experts.budget): the Pacer moves the price of accuracy
so that queries spend the budget on average, probes included; the
reputation policy and the query round feed it; the node's config checks it.
Pure code with seeded RNGs and no clock, but for the last test: a real node
process shows its budget in `p2pnet status`."""

import math
import random

import pytest

from p2pnet import config
from p2pnet.config import ConfigError
from p2pnet.experts.budget import Pacer
from p2pnet.experts.query_round import Done, QueryRound
from p2pnet.experts.selection import ReputationPolicy
from p2pnet.experts.signals import Probe

from .test_query_round import Fixed, ok, ref, setup


# ------------------------------------------------------------ the pacer alone

def test_overspending_raises_the_price_of_accuracy_up_to_its_span():
    pacer = Pacer(4.0, 0.02, span=4.0)
    weights = [pacer.paid(10.0) for _ in range(200)]  # always the dear expert: 2.5 x the budget
    assert all(b >= a for a, b in zip(weights, weights[1:])) and weights[0] > 0.02
    assert weights[-1] == pytest.approx(0.08)  # 4 x the operator's weight, no further
    assert pacer.state() == {"budget": 4.0, "cost_weight": weights[-1], "queries": 200, "probes": 0,
                             "spent_per_query": 10.0}


def test_underspending_lowers_it_down_to_its_span():
    pacer = Pacer(4.0, 0.02, span=4.0)
    weights = [pacer.paid(1.0) for _ in range(200)]
    assert all(b <= a for a, b in zip(weights, weights[1:])) and weights[0] < 0.02
    assert weights[-1] == pytest.approx(0.005)


def test_a_probe_is_paid_for_though_it_brings_no_budget():
    pacer = Pacer(4.0, 0.02)
    assert pacer.paid(4.0) == pytest.approx(0.02)  # exactly the budget: no move
    assert pacer.paid(3.0, probe=True) > 0.02  # a probe spends and brings nothing: over budget
    assert pacer.state()["spent_per_query"] == pytest.approx(7.0) and pacer.state()["probes"] == 1


def test_one_absurd_price_moves_the_weight_a_bounded_step():
    pacer = Pacer(4.0, 0.02, step=0.03)
    assert pacer.paid(1e9) == pytest.approx(0.02 * math.exp(8 * 0.03))
    assert pacer.spent == 1e9  # counted all the same


@pytest.mark.parametrize("spent", [math.nan, math.inf, -1.0])
def test_a_nonsense_price_changes_nothing(spent):
    pacer = Pacer(4.0, 0.02)
    pacer.paid(3.0)
    before = (pacer.weight, pacer.queries, pacer.probes, pacer.spent)
    assert pacer.paid(spent) == before[0] and pacer.paid(spent, probe=True) == before[0]
    assert (pacer.weight, pacer.queries, pacer.probes, pacer.spent) == before


@pytest.mark.parametrize("kw, error", [
    (dict(budget=0.0, weight=0.02), "budget"), (dict(budget=math.inf, weight=0.02), "budget"),
    (dict(budget=4.0, weight=0.0), "cost_weight"), (dict(budget=4.0, weight=0.02, step=0.0), "step"),
    (dict(budget=4.0, weight=0.02, span=0.5), "span"),
])
def test_a_budget_that_cannot_be_kept_is_refused(kw, error):
    with pytest.raises(ValueError, match=error):
        Pacer(**kw)


def market(pacer, weight: float, queries: int, seed: int) -> float:
    """A cheap expert (0.86, price 1) and a dear one (0.95, price 10), chosen
    by sampled quality minus weight x price, as the reputation policy does;
    the weight is the pacer's when there is one. Returns the mean spend per
    query over the second half."""
    rng = random.Random(seed)
    spent = []
    for _ in range(queries):
        w = pacer.weight if pacer is not None else weight
        dear = rng.gauss(0.95, 0.03) - 10 * w > rng.gauss(0.86, 0.03) - w
        spent.append(10.0 if dear else 1.0)
        if pacer is not None:
            pacer.paid(spent[-1])
    late = spent[queries // 2:]
    return sum(late) / len(late)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_weight_settles_where_spending_meets_the_budget(seed):
    assert market(None, 0.02, 4000, seed) < 2.0  # the operator's weight alone: nearly always the cheap one
    pacer = Pacer(4.0, 0.02)
    assert abs(market(pacer, 0.02, 4000, seed) - 4.0) < 0.3
    assert 0.005 < pacer.weight < 0.02  # below the operator's: accuracy is worth more on this network


# ------------------------------------------------------------ the policy

def test_the_policy_prices_accuracy_by_its_pacer():
    policy = ReputationPolicy(cost_weight=0.02, budget=4.0)
    policy.paid(12.0)
    assert policy.cost_weight == policy.pacer.weight > 0.02
    policy.paid(12.0, probe=True)
    assert policy.pacer.queries == 1 and policy.pacer.probes == 1 and policy.pacer.spent == 24.0


def test_without_a_budget_the_price_of_accuracy_stays_the_operators():
    policy = ReputationPolicy(cost_weight=0.02)
    policy.paid(100.0)
    assert policy.pacer is None and policy.cost_weight == 0.02
    with pytest.raises(ValueError, match="budget"):
        ReputationPolicy(budget=-2.0)
    with pytest.raises(ValueError, match="cost_weight"):
        ReputationPolicy(cost_weight=0.0, budget=4.0)


class Recording(Fixed):
    """Asks the candidates in order (e1, e2, ...) and records what it is told was paid."""

    def __init__(self) -> None:
        super().__init__()
        self.bills = []

    def paid(self, spent, probe=False) -> None:
        self.bills.append((spent, probe))


@pytest.mark.parametrize("probe", [None, Probe("What is the capital of France?", "Paris", "general")])
def test_a_round_tells_its_policy_what_it_spent_once(probe):
    a, b, c = ref(1, price=1.0), ref(2, price=3.0), ref(3, price=10.0)
    policy = Recording()
    rnd = QueryRound(setup([a, b, c], policy=policy, respondents=2, probe=probe), 0.0)
    (ask,) = rnd.start(0.0)
    assert ask.refs == (a, b)
    rnd.step(ok(ask.batch_id, a, "Paris"), 1.0)
    acts = rnd.step(ok(ask.batch_id, b, "Paris"), 2.0)
    assert isinstance(acts[-1], Done)
    rnd.step(ok(ask.batch_id, c, "Paris"), 3.0)  # late: no second bill
    assert policy.bills == [(4.0, probe is not None)]


def test_a_judge_is_paid_for_too():
    a, b, j = ref(1, price=1.0), ref(2, price=3.0), ref(9, price=5.0)
    policy = Recording()
    rnd = QueryRound(setup([a, b], policy=policy, respondents=2, judges=1, judge_pool=[a, b, j]), 0.0)
    (ask,) = rnd.start(0.0)
    rnd.step(ok(ask.batch_id, a, "Paris"), 1.0)
    (_, judge) = rnd.step(ok(ask.batch_id, b, "Lyon"), 2.0)
    assert judge.refs == (j,) and policy.bills == []
    acts = rnd.step(ok(judge.batch_id, j, "A"), 3.0)
    assert isinstance(acts[-1], Done) and policy.bills == [(9.0, False)]


# ------------------------------------------------------------ the node's setting

def test_budget_is_a_node_setting_checked_for_range():
    assert config.build(None).budget == 0.0
    assert config.build(None, budget=4.5).budget == 4.5
    for bad in (-1.0, math.inf, math.nan):
        with pytest.raises(ConfigError, match="budget"):
            config.build(None, budget=bad)
    with pytest.raises(ConfigError, match="cost_weight"):
        config.build(None, budget=4.5, cost_weight=0.0)


def test_a_node_started_with_a_budget_shows_it_in_its_status(tmp_path):
    """A real node process: `--budget` reaches its policy, and `p2pnet status`
    (JSON and text) shows the budget and the price of accuracy now."""
    import json
    import subprocess
    import sys

    from p2pnet.api import client

    from .conftest_net import NODE_CLI, start_node_process, stop_process

    data = tmp_path / "n"
    data.mkdir()
    proc = start_node_process(["node", "start", "--data-dir", data, "--listen", "/ip4/127.0.0.1/tcp/0",
                               "--api-port", "0", "--no-experts", "--budget", "4", "--cost-weight", "0.03"],
                              data / "out.log", tmp_path)
    try:
        info = client.get_json(json.loads((data / "node.json").read_text())["api"] + "/status", timeout=10)
        assert info["budget"] == {"budget": 4.0, "cost_weight": 0.03, "queries": 0, "probes": 0,
                                  "spent_per_query": None}
        out = subprocess.run([sys.executable, "-c", NODE_CLI, "status", "--data-dir", str(data)],
                             capture_output=True, text=True, timeout=60)
        assert "budget    4 per query   cost weight now 0.0300   nothing spent yet" in out.stdout, out.stdout + out.stderr
    finally:
        stop_process(proc)
