"""Spending held to a budget by moving the price put on accuracy.

An operator who says "spend at most 4 per query on average" states a
budget, not a price. MetaLLM's reward, ``quality - cost_weight * price``,
needs the price: ``cost_weight``, how much accuracy one unit of price is
worth. The right value depends on the network (its price scale, how good
the cheap experts are, how often their answers are unsure), so a fixed one
overspends on one network and underspends on another. :class:`Pacer` treats
``cost_weight`` as the multiplier of the budget constraint (MetaLLM's
budgeted form) and moves it after every query: up (accuracy costs more,
cheaper experts win) while queries spend above the budget, down while they
spend below it. The step is multiplicative and small, so the weight settles
where the mean spend meets the budget.

The budget is in the experts' prices (``price_per_1k``) summed over the
experts one query asks. The node's probes are paid from it too: a probe
spends without a budget of its own.

Pure state, no clock and no I/O: the query round reports what each query
spent, and the simulator and the node run the same code.
"""

from __future__ import annotations

import math


class Pacer:
    """Moves ``weight`` (the policy's ``cost_weight``) so that the queries
    spend ``budget`` each on average, probes included.

    ``step``: how far one query's error moves the weight (on a log scale);
    ``span``: the weight stays within ``span`` times the operator's value
    either way, so a run of odd queries cannot make price all or nothing.
    """

    def __init__(self, budget: float, weight: float, step: float = 0.03, span: float = 3.0) -> None:
        if not (math.isfinite(budget) and budget > 0.0):
            raise ValueError(f"budget must be a price above 0, got {budget}")
        if not weight > 0.0:
            raise ValueError("a budget needs a cost_weight above 0 to move")
        if not step > 0.0 or not span >= 1.0:
            raise ValueError("the budget's step must be above 0 and its span at least 1")
        self.budget, self.weight, self.step = budget, weight, step
        self.lo, self.hi = weight / span, weight * span
        self.queries = 0  # user queries: each brings ``budget`` to spend
        self.probes = 0  # probes: they spend, they bring nothing
        self.spent = 0.0

    def paid(self, spent: float, probe: bool = False) -> float:
        """A query (``probe``: a validator's probe) spent ``spent``. Returns
        the new weight."""
        if not math.isfinite(spent) or spent < 0:
            return self.weight
        if probe:
            self.probes += 1
        else:
            self.queries += 1
        self.spent += spent
        # no more than 8 budgets' worth at once: an absurd price moves the weight by e^(8 step), not beyond
        error = min(8.0, (spent - (0.0 if probe else self.budget)) / self.budget)
        self.weight = min(self.hi, max(self.lo, self.weight * math.exp(self.step * error)))
        return self.weight

    def state(self) -> dict:
        """For the node's status: the weight now and the mean spend so far."""
        return {"budget": self.budget, "cost_weight": self.weight, "queries": self.queries,
                "probes": self.probes, "spent_per_query": self.spent / self.queries if self.queries else None}
