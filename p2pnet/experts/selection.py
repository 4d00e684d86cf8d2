"""Choosing respondents for a query. Pure functions of the candidates, their
standing, and an injected RNG; a policy explains its choice."""

from __future__ import annotations

import math
import random
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

from p2pnet.experts.budget import Pacer
from p2pnet.experts.directory import ExpertRef

UNSURE_ODDS = 2.3
"""How much likelier a wrong answer of the default model is than a right one
to have a confidence below 0.6: 0.377 against 0.162 (bench/cascade.py,
docs/benchmarks.md)."""

# (respondent peer, domain) -> (posterior mean quality in [0,1], evidence, probe evidence):
# ``reputation.standing_view``. A standing without the third item (a test's, say)
# does not tell probe grades apart: evidence alone establishes an expert.
Standing = Callable[[bytes, str], tuple]


def no_standing(peer: bytes, domain: str) -> tuple[float, float, float]:
    return (0.5, 0.0, 0.0)


def take(rows: Sequence[tuple], n: int, have: Sequence[tuple] = (), distinct: bool = False) -> list:
    """Up to ``n`` of ``rows`` (tuples whose second item is an ExpertRef), in
    order, leaving out those in ``have``. With ``distinct``, at most one per
    voice (``ModelCard.voice``: the model file's sha256, and the knowledge
    base if any) among ``have`` and the result: at temperature 0 a copy
    repeats its model's answer. Experts that announce no sha256 are never
    taken for copies."""
    out: list = []
    models = {row[1].card.voice for row in have if row[1].card.voice}
    for row in rows:
        if len(out) >= n:
            break
        if row in have or row in out:
            continue
        model = row[1].card.voice
        if distinct and model:
            if model in models:
                continue
            models.add(model)
        out.append(row)
    return out


def copies_note(chosen: Sequence[tuple], rows: Sequence[tuple], k: int) -> list[str]:
    """The reason's note when ``take(..., distinct=True)`` asked fewer than
    ``k`` because the rest of ``rows`` hold copies of a chosen model."""
    if len(chosen) >= k:
        return []
    models = {row[1].card.voice for row in chosen if row[1].card.voice}
    left = sum(1 for row in rows if row not in chosen and row[1].card.voice in models)
    if not left:
        return []
    return [f"{len(chosen)} not {k}: {left} more {'is a copy' if left == 1 else 'are copies'} of a chosen model"]


@dataclass(frozen=True)
class Selection:
    chosen: tuple[ExpertRef, ...]
    reason: str
    scores: tuple[tuple[str, str, float], ...] = ()  # (peer, expert_id, score) for provenance
    unsure: bool = False  # one expert, not reliable yet: check its answer unless that says it is sure


class SelectionPolicy(ABC):
    name = "policy"
    escalate_below = 0.0
    """A single answer whose own confidence is below this gets a second expert
    (the coordinator asks one more once it has the answer); 0: never."""

    @abstractmethod
    def score(self, ref: ExpertRef, domain: str, standing: Standing, total_evidence: float,
              rng: random.Random) -> float:
        """Higher is better."""

    def respondents(self, candidates: Sequence[ExpertRef], domain: str, standing: Standing = no_standing,
                    requested_k: Optional[int] = None) -> Optional[int]:
        """How many experts to ask; ``requested_k`` (the request's own choice)
        wins. None leaves it to the caller's default."""
        return requested_k

    def eligible(self, candidates: Sequence[ExpertRef], domain: str,
                 standing: Standing = no_standing) -> list[ExpertRef]:
        """The candidates this policy would ever send traffic to while others
        exist (all of them, unless a policy excludes some)."""
        return list(candidates)

    def second_opinion(self, first: ExpertRef, confidence: Optional[float], rest: Sequence[ExpertRef],
                       domain: str, standing: Standing = no_standing,
                       rng: Optional[random.Random] = None) -> tuple[Optional[ExpertRef], str]:
        """Whom to ask after ``first``'s single answer looked unsure: its
        ``confidence`` was below :attr:`escalate_below`, or (None) it reported
        none while its expert is not reliable yet. ``rest``: the experts that
        may be asked. Returns the expert, or None and why nobody is worth
        asking. This default asks whom :meth:`select` would pick."""
        chosen = self.select(rest, 1, domain, standing, rng).chosen
        return (chosen[0], "") if chosen else (None, "no other expert")

    def paid(self, spent: float, probe: bool = False) -> None:
        """A query (``probe``: a validator's probe) ended having asked experts
        whose prices add up to ``spent``. A policy that keeps a budget learns
        from it; this default keeps none."""

    def select(self, candidates: Sequence[ExpertRef], k: int, domain: str,
               standing: Standing = no_standing, rng: Optional[random.Random] = None,
               adapt: bool = False, probe: bool = False, distinct_models: bool = False) -> Selection:
        """The ``k`` experts to ask. ``adapt``: k came from :meth:`respondents`,
        and a policy may ask one more when its choice turns out uncertain.
        ``probe``: the query is a validator's probe (graded exactly), so a
        policy may aim it where evidence is missing. ``distinct_models``: the
        query runs at temperature 0, so at most one expert per announced model
        file is asked (a copy would repeat its answer); fewer than ``k`` when
        the candidates hold fewer models."""
        rng = rng or random.Random(0)
        if not candidates or k <= 0:
            return Selection((), "no candidates")
        free = [r for r in candidates if r.card.load < r.card.max_concurrency]
        pool = free or list(candidates)
        total = sum(standing(r.peer, domain)[1] for r in pool)
        scored = sorted(((self.score(r, domain, standing, total, rng), r) for r in pool),
                        key=lambda sr: (-sr[0], sr[1].peer, sr[1].card.expert_id))
        top = take(scored, k, distinct=distinct_models)
        chosen = tuple(r for _, r in top)
        reason = (f"{self.name}: top {len(chosen)} of {len(pool)} "
                  f"{'free ' if free else 'busy '}experts for {domain!r}"
                  + "".join(f" ({note})" for note in copies_note(top, scored, k)))
        return Selection(chosen, reason, tuple((r.peer_str, r.card.expert_id, round(s, 4)) for s, r in scored))


class UcbCostPolicy(SelectionPolicy):
    """quality - lambda * price, with a UCB exploration bonus and a load penalty.

    quality is the ledger's posterior mean for (peer, domain); the bonus
    ``c * sqrt(ln(1 + N) / (1 + n))`` gives newcomers a bounded share; a
    small random tie-break spreads load between equals."""

    name = "ucb-cost"

    def __init__(self, cost_weight: float = 0.1, exploration: float = 0.3, load_weight: float = 0.2) -> None:
        self.cost_weight = cost_weight
        self.exploration = exploration
        self.load_weight = load_weight

    def score(self, ref, domain, standing, total_evidence, rng) -> float:
        mean, n = standing(ref.peer, domain)[:2]
        bonus = self.exploration * math.sqrt(math.log1p(total_evidence) / (1.0 + n))
        load = ref.card.load / max(1, ref.card.max_concurrency)
        return mean + bonus - self.cost_weight * ref.card.price_per_1k - self.load_weight * load + rng.random() * 1e-3


class RandomPolicy(SelectionPolicy):
    """Uniformly random (the baseline the simulator compares against)."""

    name = "random"

    def score(self, ref, domain, standing, total_evidence, rng) -> float:
        return rng.random()


class Posterior:
    """What the ledger says of one (expert, domain): a Beta posterior
    approximated from its mean and evidence (in rating-weight units).
    ``probed``: how much of the evidence is validators' probe grades (None:
    the standing does not say)."""

    __slots__ = ("mean", "evidence", "probed", "alpha", "beta", "sd")

    def __init__(self, mean: float, evidence: float, prior_weight: float = 2.0,
                 probed: Optional[float] = None) -> None:
        self.mean, self.evidence = mean, evidence
        self.probed = probed
        total = evidence + prior_weight
        self.alpha = max(1e-6, mean * total)
        self.beta = max(1e-6, (1.0 - mean) * total)
        a, b = self.alpha, self.beta
        self.sd = math.sqrt(a * b / ((a + b) ** 2 * (a + b + 1.0)))

    def lower(self, z: float) -> float:
        return self.mean - z * self.sd

    def upper(self, z: float) -> float:
        return self.mean + z * self.sd

    def __repr__(self) -> str:
        return (f"Posterior(mean={self.mean:.3f}, evidence={self.evidence:.2f}, probed={self.probed}, "
                f"sd={self.sd:.3f})")


def wrong_when_unsure(quality: float, odds: float) -> float:
    """The chance that an unsure answer is wrong: its expert is right with
    probability ``quality``, and ``odds`` is how much likelier a wrong answer
    is than a right one to be unsure (1: being unsure says nothing)."""
    w = (1.0 - quality) * odds
    return w / (w + quality) if w + quality > 0 else 0.0


def check_gain(p_wrong: float, quality: float) -> tuple[float, float]:
    """What a second expert, right with probability ``quality``, adds to an
    answer wrong with probability ``p_wrong``, settled as the coordinator
    settles it: two answers that agree stand; two that differ get one more
    expert like the second (the tie-break), and its majority stands, or, with
    three different answers, any one of them. Wrong answers never agree.
    Returns (the gain in the chance that the delivered answer is right, the
    chance that the tie-break is needed)."""
    agree = (1.0 - p_wrong) * quality
    one_right = (1.0 - p_wrong) * (1.0 - quality) + p_wrong * quality
    none_right = p_wrong * (1.0 - quality)
    right = agree + one_right * (quality + (1.0 - quality) / 3) + none_right * quality / 3
    return right - (1.0 - p_wrong), 1.0 - agree


PROBE_ORDERS = ("random", "least")  # how probes pick the expert whose verdict is open


class ReputationPolicy(SelectionPolicy):
    """Thompson sampling on the ledger's posterior, minus the price:
    ``value = theta - cost_weight * price - load_weight * load`` with
    ``theta ~ Beta(posterior)`` (MetaLLM's reward, quality - lambda * cost,
    explored by sampling rather than by a bonus).

    - Banned: evidence >= ``min_evidence`` and the posterior mean below
      ``floor``. They get no traffic unless nothing else is left.
    - Newcomers: evidence < ``newcomer_evidence``. Once established experts
      exist, at most ``explore_share`` of queries include a *vetted* newcomer:
      one with at least ``vet_evidence`` and a mean not below ``floor`` (as an
      extra respondent when k is 1, so its answer is compared with another);
      others only fill in when needed. An unvetted newcomer (no evidence yet:
      a new identity, a sybil's included) is left to probes first.
      Newcomers are ranked by sampled quality without the price, so an
      expensive expert is tried before its price is weighed against it.
    - Proven by probes: while some candidate holds ``proven_evidence`` units
      of validators' probe grades (the third item of the standing), an expert
      with fewer is a newcomer whatever its other evidence: praise from a
      ring and the votes it wins buy evidence, graded probes cannot be
      bought. Its verdict is open, so probes measure it. And while probes
      measure quality, a user query explores a newcomer only for what it may
      save: ``cost_weight`` times its price below the pick's must reach
      ``explore_saving``. A network whose validators do not probe (or a
      standing without probe evidence) keeps the rules above.
    - Dominated: an established expert whose optimistic value (``mean + z *
      sd``) is below the best established expert's expected value comes last
      in user queries: asked only when k needs more experts than the others
      and the vetted newcomers (unknown, but nothing bad seen).
      Sampling alone would still pick it for second opinions and tie-breaks.
    - Adaptive second opinion (``select(..., adapt=True)``, when the request
      left k open). Without ``escalate_below`` (the answer's own confidence
      is not used) the first pick is the most proven established expert (the
      best pessimistic value ``mean - z * sd``, price and load taken off; not
      a sampled one: user queries do not explore there, probes do; when k is
      more than 1 the others stay sampled). A single pick is
      checked by the most proven other one whenever the check is worth its
      price before any answer is seen (:meth:`check_worth`: MetaLLM's reward,
      quality gained minus ``cost_weight`` times the price of the check and a
      likely tie-break). Otherwise, a single pick whose own pessimistic quality
      ``mean - z * sd`` is below ``confident`` is checked by the most proven
      other established expert (the best pessimistic value).
      With ``escalate_below`` > 0 the check waits for the answer instead
      (``Selection.unsure``): the coordinator asks one more expert when the
      answer's own confidence is below ``escalate_below``, or when it reports
      none. Any other single answer below ``escalate_below`` gets one too,
      if one is worth its price (:meth:`second_opinion`).
    - Probes (``select(..., probe=True)``) measure where the verdict is open:
      in ``probe_open_share`` of them (all while no expert is established)
      the first slot goes to an unsettled, unvetted or unproven expert: an
      unvetted newcomer, a vetted one not yet proven by probes, a newcomer
      whose first ratings were poor (mean below the floor) or a banned one
      with less than ``recheck_evidence``. With
      ``probe_order`` "random" (the default) it is drawn uniformly from the
      seeded rng: a wave of new identities (a sybil wave) then cannot push a
      newcomer with a sliver of evidence to the back of the line. "least"
      takes the one with the least evidence first. The probe's other slots go
      to more open verdicts (in the same order), then to the experts that carry
      traffic. User queries never go to them, so without probes
      a newcomer unlucky once would stay neither banned nor trusted, and an
      early ban would be final. Probes are graded exactly: a bad expert sinks
      further, an unlucky good one recovers. The other probes re-measure the
      experts that carry traffic, so that one that degrades is seen; without
      ``escalate_below``, those with the least probe evidence first (one
      proven by two lucky probes is graded again before it carries much).
      Every probe asks at least ``probe_k`` experts (3; more when k is larger):
      each gets a grade against the known answer, which a colluding ring cannot
      outvote, so an expert whose standing grew from praise and won votes is
      graded before it carries much user traffic, and a sybil wave is vetted
      ``probe_k`` identities at a time.
    - Second opinions: a query that would ask one expert asks the two best
      sampled ones in ``audit_share`` of cases, since one answer alone earns
      no agreement rating and beliefs would otherwise only move with probes.
    - :meth:`respondents` (when the request leaves k open): 1 when the expert
      with the best pessimistic value is reliable (``mean - z * sd >=
      confident``) or clearly better than every other (its pessimistic value
      above their optimistic ones); ``uncertain_k`` otherwise; ``max_k`` while
      no expert is established.
    """

    name = "reputation"

    def __init__(self, cost_weight: float = 0.01, explore_share: float = 0.1, floor: float = 0.5,
                 min_evidence: float = 2.0, newcomer_evidence: float = 2.0, confident: float = 0.7,
                 z: float = 1.0, max_k: int = 3, uncertain_k: int = 3, load_weight: float = 0.2,
                 prior_weight: float = 2.0, audit_share: float = 0.0, recheck_evidence: float = 4.0,
                 escalate_below: float = 0.0, unsure_odds: float = UNSURE_ODDS,
                 vet_evidence: float = 0.5, probe_open_share: float = 0.5, probe_order: str = "random",
                 probe_k: int = 3, proven_evidence: float = 2.0, explore_saving: float = 0.05,
                 budget: float = 0.0) -> None:
        if probe_order not in PROBE_ORDERS:
            raise ValueError(f"probe_order must be one of {', '.join(PROBE_ORDERS)}")
        if not 0.0 <= explore_share <= 1.0 or not 0.0 <= audit_share <= 1.0 or not 0.0 <= probe_open_share <= 1.0:
            raise ValueError("explore_share, audit_share and probe_open_share must lie in [0, 1]")
        if not 1 <= max_k <= 16 or not 1 <= uncertain_k <= 16 or not 1 <= probe_k <= 16:
            raise ValueError("max_k, uncertain_k and probe_k must be between 1 and 16")
        for name, v in (("cost_weight", cost_weight), ("min_evidence", min_evidence), ("z", z),
                        ("newcomer_evidence", newcomer_evidence), ("load_weight", load_weight),
                        ("prior_weight", prior_weight), ("recheck_evidence", recheck_evidence),
                        ("unsure_odds", unsure_odds), ("vet_evidence", vet_evidence),
                        ("proven_evidence", proven_evidence), ("explore_saving", explore_saving)):
            if not v >= 0:
                raise ValueError(f"{name} must not be negative")
        if not 0.0 <= floor <= 1.0 or not 0.0 <= confident <= 1.0 or not 0.0 <= escalate_below <= 1.0:
            raise ValueError("floor, confident and escalate_below must lie in [0, 1]")
        self.cost_weight, self.explore_share, self.floor = cost_weight, explore_share, floor
        self.min_evidence, self.newcomer_evidence, self.confident = min_evidence, newcomer_evidence, confident
        self.z, self.max_k, self.uncertain_k = z, int(max_k), int(uncertain_k)
        self.load_weight, self.prior_weight, self.audit_share = load_weight, prior_weight, audit_share
        self.recheck_evidence, self.escalate_below = recheck_evidence, escalate_below
        self.unsure_odds = unsure_odds
        self.vet_evidence, self.probe_open_share = vet_evidence, probe_open_share
        self.probe_order = probe_order
        self.probe_k = int(probe_k)
        self.proven_evidence, self.explore_saving = proven_evidence, explore_saving
        self.pacer = Pacer(budget, cost_weight) if budget else None

    # ------------------------------------------------------------ pure parts

    def posterior(self, ref: ExpertRef, domain: str, standing: Standing) -> Posterior:
        found = standing(ref.peer, domain)
        mean, evidence = found[0], max(0.0, float(found[1]))
        probed = min(evidence, max(0.0, float(found[2]))) if len(found) > 2 else None
        return Posterior(min(1.0, max(0.0, float(mean))), evidence, self.prior_weight, probed)

    def banned(self, post: Posterior) -> bool:
        return post.evidence >= self.min_evidence and post.mean < self.floor

    def eligible(self, candidates, domain, standing=no_standing) -> list:
        return [r for r in candidates if not self.banned(self.posterior(r, domain, standing))]

    def proven_bar(self, posts) -> float:
        """The probe evidence an expert needs to count as established among
        these posteriors: ``proven_evidence`` once one of them has that much,
        else 0: a network whose validators do not probe (or a standing that
        does not tell probe grades apart) is not held back."""
        bar = self.proven_evidence
        return bar if bar and any(p.probed is not None and p.probed >= bar for p in posts) else 0.0

    def newcomer(self, post: Posterior, bar: float = 0.0) -> bool:
        """Too little evidence, or (``bar``) too little of it graded by probes."""
        return post.evidence < self.newcomer_evidence or (post.probed or 0.0) < bar

    def check_worth(self, ref: ExpertRef, p_wrong: float, quality: float) -> tuple[float, float]:
        """MetaLLM's reward for asking ``ref`` (right with probability
        ``quality``) to check an answer wrong with probability ``p_wrong``:
        the gain in the chance of a right answer (:func:`check_gain`) minus
        ``cost_weight`` times what the check and a likely tie-break cost.
        Returns (that worth, the gain)."""
        gain, tie = check_gain(p_wrong, quality)
        return self.value(ref, gain) - self.cost_weight * ref.card.price_per_1k * tie, gain

    def value(self, ref: ExpertRef, quality: float) -> float:
        """quality - cost_weight * price - load_weight * load share."""
        load = ref.card.load / max(1, ref.card.max_concurrency)
        return quality - self.cost_weight * ref.card.price_per_1k - self.load_weight * load

    def score(self, ref, domain, standing, total_evidence, rng) -> float:
        post = self.posterior(ref, domain, standing)
        return self.value(ref, rng.betavariate(post.alpha, post.beta))

    def second_opinion(self, first, confidence, rest, domain, standing=no_standing, rng=None):
        """MetaLLM's reward applied to the check itself: ask the expert whose
        gain in the chance of a right answer (:func:`check_gain`, its quality
        sampled from its posterior) minus ``cost_weight`` times what it and a
        likely tie-break cost is highest, if that is above 0. The first
        answer is wrong with the chance :func:`wrong_when_unsure` gives from
        its expert's posterior mean and ``unsure_odds`` (1 when it reported
        no confidence: then only its standing speaks)."""
        rng = rng or random.Random(0)
        quality = self.posterior(first, domain, standing).mean
        p_wrong = wrong_when_unsure(quality, self.unsure_odds if confidence is not None else 1.0)
        pool = [r for r in rest if r.card.load < r.card.max_concurrency] or list(rest)
        best = None
        for ref in pool:
            post = self.posterior(ref, domain, standing)
            worth, gain = self.check_worth(ref, p_wrong, rng.betavariate(post.alpha, post.beta))
            if best is None or (worth, gain) > best[:2]:
                best = (worth, gain, ref)
        if best is None:
            return None, "no other expert"
        worth, gain, ref = best
        why = (f"the first answer is wrong with p={p_wrong:.2f}; the best check adds {gain:+.3f} "
               f"to the chance of a right answer, {worth:+.3f} after {self.cost_weight:g} x its price")
        return (ref, why) if worth > 0 else (None, f"not worth its price: {why}")

    def paid(self, spent, probe=False) -> None:
        """With a ``budget``: the :class:`Pacer` moves ``cost_weight`` so that
        queries spend ``budget`` each on average, probes included."""
        if self.pacer is not None:
            self.cost_weight = self.pacer.paid(spent, probe)

    def respondents(self, candidates, domain, standing=no_standing, requested_k=None) -> Optional[int]:
        if requested_k:
            return requested_k
        if not candidates:
            return 1
        posts = [(self.posterior(r, domain, standing), r) for r in candidates]
        usable = [(p, r) for p, r in posts if not self.banned(p)] or posts
        bar = self.proven_bar([p for p, _ in usable])
        established = [(p, r) for p, r in usable if not self.newcomer(p, bar)]
        if not established:
            k = self.max_k
        else:
            ranked = sorted(established, key=lambda pr: -self.value(pr[1], pr[0].lower(self.z)))
            best, ref = ranked[0]
            rest = max((self.value(r, p.upper(self.z)) for p, r in ranked[1:]), default=-math.inf)
            if best.lower(self.z) >= self.confident or self.value(ref, best.lower(self.z)) >= rest:
                k = 1
            else:
                k = self.uncertain_k
        return max(1, min(k, self.max_k, len(usable)))

    def select(self, candidates, k, domain, standing=no_standing, rng=None, adapt=False,
               probe=False, distinct_models=False) -> Selection:
        rng = rng or random.Random(0)
        if not candidates or k <= 0:
            return Selection((), "no candidates")
        if probe:  # a probe is graded exactly: each expert it asks gets a grade no ring can outvote
            k = max(k, self.probe_k)
        # experts below the floor stay out even when they are the only free ones
        eligible = self.eligible(candidates, domain, standing)
        shut_out = len(candidates) - len(eligible) if eligible and not probe else 0
        # a probe may go to a banned expert: it measures, and is graded exactly
        usable = list(candidates) if probe else (eligible or list(candidates))
        free = [r for r in usable if r.card.load < r.card.max_concurrency]
        pool = free or usable
        rows = []
        for ref in pool:
            post = self.posterior(ref, domain, standing)
            theta = rng.betavariate(post.alpha, post.beta)
            rows.append((self.value(ref, theta), ref, post, theta))
        rows.sort(key=lambda row: (-row[0], row[1].peer, row[1].card.expert_id))
        banned = [row for row in rows if self.banned(row[2])]
        ok = [row for row in rows if not self.banned(row[2])]
        bar = self.proven_bar([row[2] for row in ok])
        est = [row for row in ok if not self.newcomer(row[2], bar)]
        dominated: list = []
        if est and not probe:
            # dominated: even its optimistic value is below the best one's expected value.
            # Sampling would still pick it now and then (a second opinion, a tie-break),
            # and a ring that praises itself stays just above the floor that way. It comes
            # after the others and after vetted newcomers: asked only when k needs more experts
            best = max(self.value(row[1], row[2].mean) for row in est)
            dominated = [row for row in est if self.value(row[1], row[2].upper(self.z)) < best]
            est = [row for row in est if row not in dominated]
        # newcomers are explored for what they may be worth, price aside: an
        # expensive expert must be tried before the price can be weighed against it
        new = sorted((row for row in ok if self.newcomer(row[2], bar)), key=lambda row: -row[3])
        fresh = [row for row in new if row[2].mean >= self.floor]  # no bad evidence yet
        poor = [row for row in new if row[2].mean < self.floor]
        # vetted: some evidence, none of it bad. Unvetted newcomers (a new identity,
        # a sybil's included) are measured by probes before user queries explore them
        vetted = [row for row in fresh if row[2].evidence >= self.vet_evidence]
        unvetted = [row for row in fresh if row[2].evidence < self.vet_evidence]
        unsettled = poor + [row for row in banned if row[2].evidence < self.recheck_evidence]
        # vetted, but not yet proven by probes (bar > 0): their verdict is open too
        unproven = [row for row in vetted if (row[2].probed or 0.0) < bar]
        notes = []
        unsure = False
        one = distinct_models
        if probe and (unsettled or unvetted or unproven) and (not est or rng.random() < self.probe_open_share):
            # the first slot measures where the verdict is open (drawn at random, or least
            # known first); the rest (and the other probes) re-measure the experts that
            # carry traffic, so that one that degrades is seen
            open_rows = unsettled + unvetted + unproven
            if self.probe_order == "least":
                target = min(open_rows, key=lambda row: (row[2].evidence, -row[3]))
                notes.append("probing the least-known unsettled, unvetted or unproven expert")
            else:
                target = open_rows[rng.randrange(len(open_rows))]
                notes.append("probing an unsettled, unvetted or unproven expert drawn at random")
            # the probe's other slots vet more open verdicts (in the same order), then
            # re-measure the experts that carry traffic
            rest = [row for row in open_rows if row is not target]
            if self.probe_order == "least":
                rest.sort(key=lambda row: (row[2].evidence, -row[3]))
            else:
                rng.shuffle(rest)
            chosen = [target] + take(rest + est + vetted, k - 1, [target], one)
        elif est:
            def pessimistic(row) -> float:  # most proven first: the best value at mean - z * sd
                return -self.value(row[1], row[2].lower(self.z))

            if probe and self.escalate_below == 0:
                # a probe that re-measures the experts that carry traffic goes to those whose
                # verdict rests on the fewest probe grades first (then by sampled quality: a probe
                # measures, its price does not matter): an expert proven by two lucky probes (a
                # ring member right half the time) takes sampled slots of user queries until it is
                # graded again, while the most proven one needs grading least. With escalate_below
                # the order stays sampled by value, as user queries pick: least probed first
                # would send probes to the dear experts they seldom ask, spending the budget
                est = sorted(est, key=lambda row: (row[2].probed or 0.0, -row[3]))
            elif adapt and self.escalate_below == 0:
                # the first pick, which no answer's confidence will judge, goes to the most
                # proven expert, not to a sampled one: sampling spends user queries on
                # exploring, and an expert that passed its first few probes by luck
                # (a ring member right half the time) samples above a proven one
                # most of the time. Probes measure the uncertain ones. Alone (k 1) the
                # pick is the most proven; of several, the others stay sampled, so the
                # votes of an uncertain query still spread over the established experts
                if k == 1:
                    est = sorted(est, key=pessimistic)
                else:
                    top = min(est, key=pessimistic)
                    est = [top] + [row for row in est if row is not top]
            chosen = take(est, k, distinct=one)
            # a check of the pick goes to the most proven other expert (the best
            # pessimistic value), not to a sampled one: a check that may itself be wrong
            # settles little, and a self-praising ring member is rarely the most proven
            proven = sorted(est[1:] + dominated, key=pessimistic)
            pair = take(est[:1] + proven, 2, distinct=one)
            explorable = vetted
            if bar:  # validators probe: they measure quality, a user query explores only to save
                price = chosen[0][1].card.price_per_1k
                explorable = [row for row in vetted
                              if self.cost_weight * (price - row[1].card.price_per_1k) >= self.explore_saving]
            if len(chosen) < k and (fresh or poor or dominated):
                # not enough established experts: vetted newcomers fill in before the
                # dominated ones, unvetted and poor ones last
                filled = take(vetted + dominated + unvetted + poor, k - len(chosen), chosen, one)
                if filled:
                    chosen += filled
                    notes.append("newcomers fill in" if any(row not in dominated for row in filled)
                                 else "dominated experts fill in")
            elif explorable and rng.random() < self.explore_share:
                base = chosen[:k - 1] if k > 1 else chosen
                newcomer = take(explorable, 1, base, one)
                if newcomer:
                    chosen = base + newcomer
                    notes.append("exploring a newcomer")
            elif (adapt and k == 1 and len(pair) > 1 and self.escalate_below == 0
                  and self.check_worth(pair[1][1], 1.0 - pair[0][2].mean, pair[1][2].mean)[0] > 0):
                # without the answer's confidence, the standings decide, both at their posterior means
                chosen = pair
                notes.append("second opinion: worth its price")
            elif adapt and k == 1 and len(pair) > 1 and chosen[0][2].lower(self.z) < self.confident:
                if self.escalate_below > 0:  # its answer's own confidence decides
                    unsure = True
                    notes.append("the first choice is not reliable yet: its answer decides on a second opinion")
                else:
                    chosen = pair  # the pick is not reliable yet: a second opinion checks it
                    notes.append("second opinion: the first choice is not reliable yet")
            elif self.audit_share and k == 1 and len(pair) > 1 and rng.random() < self.audit_share:
                chosen = pair  # a second opinion: one answer alone earns no rating
                notes.append("second opinion")
        elif new:
            chosen = take(vetted + unvetted + poor, k, distinct=one)
            notes.append("no established expert yet")
        else:
            chosen = take(banned, k, distinct=one)
            notes.append("every candidate is below the floor")
        if one:
            notes += copies_note(chosen, rows, k)
        if banned or shut_out:
            notes.append(f"{len(banned) + shut_out} below the floor")
        reason = (f"{self.name}: {len(chosen)} of {len(pool)} {'free ' if free else 'busy '}experts for "
                  f"{domain!r} by sampled quality - {self.cost_weight:g} x price"
                  + (f" ({'; '.join(notes)})" if notes else ""))
        shown = chosen + [row for row in rows[:8] if row not in chosen]
        return Selection(tuple(row[1] for row in chosen), reason,
                         tuple((row[1].peer_str, row[1].card.expert_id, round(row[0], 4)) for row in shown),
                         unsure=unsure)


POLICIES = {"ucb-cost": UcbCostPolicy, "random": RandomPolicy, "reputation": ReputationPolicy}
