"""The selection policies alone: pure functions of candidates, standing and RNG."""

import random

import pytest
from hypothesis import given, settings, strategies as st

from p2pnet import wire
from p2pnet.experts.directory import ExpertRef
from p2pnet.experts.selection import (Posterior, RandomPolicy, ReputationPolicy, UcbCostPolicy, check_gain,
                                      no_standing, wrong_when_unsure)


def ref(i: int, price: float = 1.0, load: int = 0, model: str = "0" * 64) -> ExpertRef:
    peer = wire.peer_id_from_public_key(bytes([i]) * 32)
    card = wire.ModelCard(expert_id=f"e{i}", model="m", sha256=model, quantization="q", n_ctx=512,
                          domains=("math",), prompt_tps=1.0, gen_tps=1.0, price_per_1k=price, load=load,
                          max_concurrency=4)
    return ExpertRef(peer, card, 0.0)


def table(refs, values):
    by_peer = {r.peer: v for r, v in zip(refs, values)}
    return lambda peer, domain: by_peer.get(peer, (0.5, 0.0))


def share(policy, refs, standing, who, k=1, n=400, seed=1):
    rng = random.Random(seed)
    hits = 0
    for _ in range(n):
        chosen = policy.select(refs, k, "math", standing, rng).chosen
        hits += any(r in who for r in chosen)
    return hits / n


def test_banned_experts_get_no_traffic():
    refs = [ref(i) for i in range(4)]
    standing = table(refs, [(0.9, 20), (0.85, 20), (0.2, 10), (0.1, 5)])
    policy = ReputationPolicy()
    assert share(policy, refs, standing, set(refs[2:]), k=2) == 0.0
    sel = policy.select(refs, 2, "math", standing, random.Random(0))
    assert "2 below the floor" in sel.reason


def test_all_banned_still_answers_with_the_least_bad():
    refs = [ref(i) for i in range(2)]
    sel = ReputationPolicy().select(refs, 1, "math", table(refs, [(0.1, 10), (0.2, 10)]), random.Random(0))
    assert len(sel.chosen) == 1 and "below the floor" in sel.reason


def test_newcomers_get_a_bounded_share():
    refs = [ref(i) for i in range(6)]
    standing = table(refs, [(0.9, 30), (0.9, 30), (0.6, 1), (0.6, 1), (0.6, 1), (0.6, 1)])
    policy = ReputationPolicy(explore_share=0.1)
    got = share(policy, refs, standing, set(refs[2:]), n=1000)
    assert 0.05 < got < 0.15
    # an exploring pick is never alone: k=1 becomes 2
    rng = random.Random(3)
    sizes = {len(policy.select(refs, 1, "math", standing, rng).chosen) for _ in range(200)}
    assert sizes == {1, 2}


def test_newcomer_with_bad_evidence_is_not_explored():
    refs = [ref(i) for i in range(3)]
    standing = table(refs, [(0.9, 30), (0.9, 30), (0.3, 1.0)])
    assert share(ReputationPolicy(explore_share=1.0), refs, standing, {refs[2]}) == 0.0


def test_price_trades_against_quality():
    cheap, dear = ref(1, price=1.0), ref(2, price=10.0)
    standing = table([cheap, dear], [(0.9, 50), (0.92, 50)])
    assert share(ReputationPolicy(cost_weight=0.02), [cheap, dear], standing, {cheap}) > 0.8
    assert share(ReputationPolicy(cost_weight=0.0), [cheap, dear], standing, {dear}) > 0.5


def test_respondents_adapt_to_certainty():
    refs = [ref(i) for i in range(4)]
    policy = ReputationPolicy(confident=0.7, max_k=3, uncertain_k=3)
    unknown = table(refs, [(0.5, 0)] * 4)
    assert policy.respondents(refs, "math", unknown) == 3
    reliable = table(refs, [(0.95, 40), (0.6, 5), (0.6, 5), (0.6, 5)])
    assert policy.respondents(refs, "math", reliable) == 1
    unsure = table(refs, [(0.7, 3), (0.68, 3), (0.66, 3), (0.6, 3)])
    assert policy.respondents(refs, "math", unsure) == 3
    assert policy.respondents(refs, "math", unsure, requested_k=2) == 2
    assert policy.respondents(refs[:2], "math", unknown) == 2  # never more than the candidates


def test_base_policies_leave_k_to_the_caller():
    refs = [ref(0)]
    assert UcbCostPolicy().respondents(refs, "math", table(refs, [(0.9, 9)])) is None
    assert RandomPolicy().respondents(refs, "math", table(refs, [(0.9, 9)]), 3) == 3


def test_bad_parameters_are_refused():
    with pytest.raises(ValueError, match="explore_share"):
        ReputationPolicy(explore_share=2.0)
    with pytest.raises(ValueError, match="cost_weight"):
        ReputationPolicy(cost_weight=-1.0)


def test_posterior_tightens_with_evidence():
    few, many = Posterior(0.8, 2.0), Posterior(0.8, 200.0)
    assert many.sd < few.sd
    assert few.lower(1.0) < many.lower(1.0) <= 0.8 <= many.upper(1.0) < few.upper(1.0)


means = st.floats(0.0, 1.0)
evidence = st.floats(0.0, 1000.0)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(means, evidence, st.floats(0.0, 20.0)), min_size=1, max_size=8),
       st.integers(1, 5), st.integers(0, 2**32))
def test_select_is_deterministic_and_well_formed(rows, k, seed):
    refs = [ref(i, price=p) for i, (_, _, p) in enumerate(rows)]
    standing = table(refs, [(m, e) for m, e, _ in rows])
    policy = ReputationPolicy()
    a = policy.select(refs, k, "math", standing, random.Random(seed))
    b = policy.select(refs, k, "math", standing, random.Random(seed))
    assert a == b
    assert 1 <= len(a.chosen) <= min(len(refs), k + 1)
    assert len(set(a.chosen)) == len(a.chosen) and set(a.chosen) <= set(refs)
    n = policy.respondents(refs, "math", standing)
    assert 1 <= n <= min(len(refs), policy.max_k)
    for r in a.chosen:
        m, e = standing(r.peer, "math")
        if policy.banned(Posterior(m, e)):  # a banned expert only when all are banned
            assert all(policy.banned(Posterior(*standing(x.peer, "math"))) for x in refs)


def test_second_opinions_ask_the_runner_up():
    refs = [ref(i) for i in range(3)]
    standing = table(refs, [(0.9, 30), (0.85, 30), (0.8, 30)])
    rng = random.Random(2)
    policy = ReputationPolicy(audit_share=0.25)
    sels = [policy.select(refs, 1, "math", standing, rng) for _ in range(400)]
    audits = [s for s in sels if len(s.chosen) == 2]
    assert 0.15 < len(audits) / len(sels) < 0.35
    assert all("second opinion" in s.reason for s in audits)
    assert all(len(s.chosen) == 1 for s in (ReputationPolicy().select(refs, 1, "math", standing, rng)
                                           for _ in range(50)))


def test_adaptive_k_adds_a_second_opinion_when_it_is_worth_its_price():
    """Without ``escalate_below`` (the answer's confidence unused), a single
    pick is checked by the most proven other expert when the check is worth
    its price before any answer is seen (MetaLLM's reward: the gain in the
    chance of a right answer, ``check_gain`` at the posterior means, minus
    ``cost_weight`` times the price of the check and a likely tie-break)."""
    cheap = [ref(i, price=1.0) for i in range(3)]
    dear = [ref(i, price=10.0) for i in range(3)]
    sure = [(0.95, 60), (0.94, 60), (0.93, 60)]  # lower bounds far above `confident`
    policy = ReputationPolicy()  # cost_weight 0.01
    rng = random.Random(4)
    # a check of a 0.95 expert adds about 0.04 to the chance of a right answer:
    # worth 1.0 at 0.01 per unit of price, not 10.0
    sels = [policy.select(cheap, 1, "math", table(cheap, sure), rng, adapt=True) for _ in range(100)]
    assert all(len(s.chosen) == 2 and "worth its price" in s.reason for s in sels)
    assert {len(policy.select(dear, 1, "math", table(dear, sure), rng, adapt=True).chosen) for _ in range(100)} == {1}
    # the same from check_worth itself
    gain, tie = check_gain(0.05, 0.94)
    worth = policy.check_worth(dear[1], 0.05, 0.94)
    assert worth == pytest.approx((gain - 0.01 * 10.0 * (1 + tie), gain))
    assert worth[0] < 0 < ReputationPolicy(cost_weight=0.0).check_worth(dear[1], 0.05, 0.94)[0]
    # a k the request chose itself is kept as it is
    assert {len(policy.select(cheap, 1, "math", table(cheap, sure), rng).chosen) for _ in range(100)} == {1}


def test_adaptive_k_checks_a_pick_that_is_not_reliable_even_when_not_worth_its_price():
    refs = [ref(i, price=20.0) for i in range(3)]  # a check adds about 0.16: not worth 0.01 x 20
    policy = ReputationPolicy()
    rng = random.Random(4)
    sure = table(refs, [(0.95, 60), (0.94, 60), (0.93, 60)])  # lower bounds far above `confident`
    assert {len(policy.select(refs, 1, "math", sure, rng, adapt=True).chosen) for _ in range(100)} == {1}
    unsure = table(refs, [(0.72, 4), (0.7, 4), (0.7, 4)])  # established, but mean - sd < 0.7
    sels = [policy.select(refs, 1, "math", unsure, rng, adapt=True) for _ in range(100)]
    assert all(len(s.chosen) == 2 and "not reliable yet" in s.reason for s in sels)
    # a k the request chose itself is kept as it is
    assert {len(policy.select(refs, 1, "math", unsure, rng).chosen) for _ in range(100)} == {1}
    # escalating on the answer's confidence: the unreliable pick goes alone, marked
    # unsure (its answer decides); a reliable one is not marked, and no check is
    # asked up front even where one would be worth its price
    escalating = ReputationPolicy(escalate_below=0.5)
    sels = [escalating.select(refs, 1, "math", unsure, rng, adapt=True) for _ in range(100)]
    assert all(len(s.chosen) == 1 and s.unsure and "its answer decides" in s.reason for s in sels)
    assert not any(escalating.select(refs, 1, "math", sure, rng, adapt=True).unsure for _ in range(100))
    cheap = [ref(i, price=1.0) for i in range(3)]
    cheap_sure = table(cheap, [(0.95, 60), (0.94, 60), (0.93, 60)])
    assert {len(escalating.select(cheap, 1, "math", cheap_sure, rng, adapt=True).chosen) for _ in range(100)} == {1}
    with pytest.raises(ValueError, match="escalate_below"):
        ReputationPolicy(escalate_below=1.5)


def test_a_single_pick_no_confidence_will_judge_goes_to_the_most_proven_expert():
    """Without ``escalate_below``, a single pick (checked or not), and the first
    of several, is the expert with the best pessimistic value, not a sampled
    one: an expert that passed five of five probes by luck (a ring member right
    half the time, sybil-drift seed 10) samples above a proven 0.85 expert most
    of the time, and would carry user traffic until the probes caught up. With ``escalate_below`` the
    pick stays sampled: exploring there is what finds the cheaper expert."""
    proven, lucky, third = ref(0, price=2.5), ref(1, price=1.0), ref(2, price=2.0)
    refs = [proven, lucky, third]
    # (mean, evidence, probe evidence): the lucky one's mean is the higher, on thin evidence
    standing = table(refs, [(0.85, 46.0, 12.0), (0.87, 7.5, 5.0), (0.75, 11.0, 6.0)])
    rng = random.Random(7)
    policy = ReputationPolicy()
    firsts = [policy.select(refs, 1, "math", standing, rng, adapt=True).chosen[0] for _ in range(200)]
    assert set(firsts) == {proven}
    # sampled as before: when k was asked for, and when the answer's confidence decides
    asked = [policy.select(refs, 1, "math", standing, rng).chosen[0] for _ in range(200)]
    escalating = [ReputationPolicy(escalate_below=0.6).select(refs, 1, "math", standing, rng, adapt=True).chosen[0]
                  for _ in range(200)]
    for firsts in (asked, escalating):
        assert 0.3 < firsts.count(lucky) / 200 < 0.9
    # of two (an uncertain query), the first is the most proven, the second stays
    # sampled: the lucky one is still asked now and then, never as the first
    four = refs + [ref(3, price=2.0)]
    standing = table(four, [(0.85, 46.0, 12.0), (0.87, 7.5, 5.0), (0.75, 11.0, 6.0), (0.82, 20.0, 8.0)])
    picks = [policy.select(four, 2, "math", standing, rng, adapt=True).chosen for _ in range(200)]
    assert all(len(p) == 2 and p[0] == proven for p in picks)
    seconds = [p[1] for p in picks]
    assert 0.3 < seconds.count(lucky) / 200 < 0.95 and 0.05 < seconds.count(four[3]) / 200 < 0.7


def test_newcomers_are_explored_price_blind():
    """An expensive newcomer is tried as often as a cheap one: its price can only
    be weighed against its quality once that quality is known."""
    refs = [ref(0, price=1.0), ref(1, price=1.0), ref(2, price=1.0), ref(3, price=50.0)]
    standing = table(refs, [(0.9, 30), (0.9, 30), (0.6, 1), (0.6, 1)])
    policy = ReputationPolicy(explore_share=1.0, cost_weight=0.05)
    rng = random.Random(5)
    explored = [s.chosen[-1] for s in (policy.select(refs, 1, "math", standing, rng) for _ in range(600))]
    cheap, dear = explored.count(refs[2]), explored.count(refs[3])
    assert cheap + dear == 600 and 0.4 < dear / 600 < 0.6


def test_probes_settle_experts_that_user_queries_avoid():
    """A newcomer with one poor rating, or an expert banned on thin evidence,
    gets no user traffic; a probe (graded exactly) goes to one of them (here with
    ``probe_order`` "least": the least-known first), so the first gets a verdict
    and the second a second chance. (With ``probe_open_share`` 1: every probe; by
    default half of them, the rest re-measure the experts that carry traffic.)"""
    refs = [ref(i) for i in range(5)]
    standing = table(refs, [(0.9, 30), (0.9, 30), (0.33, 1.0), (0.3, 2.5), (0.2, 10)])
    policy = ReputationPolicy(explore_share=1.0, probe_open_share=1.0, probe_order="least", probe_k=1)
    rng = random.Random(6)
    assert share(policy, refs, standing, set(refs[2:]), k=2) == 0.0  # user queries never reach them
    probes = [policy.select(refs, 1, "math", standing, rng, probe=True) for _ in range(50)]
    assert all(s.chosen == (refs[2],) and "unsettled" in s.reason for s in probes)
    # once the newcomer is banned too, the one with less evidence is probed; the
    # expert banned on plenty of evidence (10 >= recheck_evidence) never is
    standing = table(refs, [(0.9, 30), (0.9, 30), (0.25, 3.0), (0.3, 2.5), (0.2, 10)])
    assert {policy.select(refs, 2, "math", standing, rng, probe=True).chosen[0] for _ in range(50)} == {refs[3]}
    settled = table(refs, [(0.9, 30), (0.9, 30), (0.25, 4.0), (0.3, 4.5), (0.2, 10)])
    sels = [policy.select(refs, 1, "math", settled, rng, probe=True) for _ in range(50)]
    assert all(s.chosen[0] in refs[:2] for s in sels)  # nothing unsettled: probes go where users go


def test_open_verdict_probes_draw_at_random_so_a_wave_cannot_starve_a_newcomer():
    """By default (``probe_order`` "random") the open-verdict slot of a probe is
    drawn uniformly, from the seeded rng, among the unsettled and unvetted
    experts. A wave of 8 fresh identities then cannot keep a newcomer with a
    sliver of evidence waiting (least-evidence-first never reaches it); experts
    with a settled verdict never take that slot; the same seed gives the same picks."""
    refs = [ref(i) for i in range(12)]
    values = [(0.9, 30), (0.9, 30), (0.2, 10), (0.6, 0.2)] + [(0.5, 0.0)] * 8
    standing = table(refs, values)
    rand = ReputationPolicy(probe_open_share=1.0)
    least = ReputationPolicy(probe_open_share=1.0, probe_order="least")
    assert rand.probe_order == "random"
    firsts = [rand.select(refs, 2, "math", standing, random.Random(s), probe=True).chosen[0] for s in range(900)]
    assert set(firsts) == set(refs[3:])  # only the open verdicts, each of them
    assert 900 / 9 * 0.6 < firsts.count(refs[3]) < 900 / 9 * 1.4
    assert all("drawn at random" in rand.select(refs, 1, "math", standing, random.Random(1), probe=True).reason
               for _ in range(3))
    assert refs[3] not in {least.select(refs, 2, "math", standing, random.Random(s), probe=True).chosen[0]
                           for s in range(200)}
    again = [rand.select(refs, 2, "math", standing, random.Random(s), probe=True).chosen for s in range(50)]
    assert again == [rand.select(refs, 2, "math", standing, random.Random(s), probe=True).chosen for s in range(50)]
    with pytest.raises(ValueError):
        ReputationPolicy(probe_order="newest")


def test_probes_ask_probe_k_experts_open_verdicts_first():
    """Every probe asks at least ``probe_k`` (3) experts, each graded against the
    known answer. An open-verdict probe fills its other slots with more open
    verdicts (a sybil wave is vetted three at a time), then with established
    experts; a re-measuring probe reaches past the best expert to the next ones
    (here an expert whose standing may rest on praise). User queries keep their k."""
    refs = [ref(i) for i in range(7)]
    standing = table(refs, [(0.9, 30), (0.9, 30), (0.75, 8)] + [(0.5, 0.0)] * 4)
    vetting = ReputationPolicy(probe_open_share=1.0)
    assert vetting.probe_k == 3
    for seed in range(40):
        sel = vetting.select(refs, 1, "math", standing, random.Random(seed), probe=True)
        assert len(sel.chosen) == 3 and set(sel.chosen) <= set(refs[3:])
    # two open verdicts left: both are probed, and the third slot re-measures an established expert
    two = table(refs, [(0.9, 30), (0.9, 30), (0.75, 8), (0.5, 0.0), (0.5, 0.0), (0.2, 10), (0.2, 10)])
    sel = vetting.select(refs, 1, "math", two, random.Random(3), probe=True)
    assert set(sel.chosen[:2]) == {refs[3], refs[4]} and sel.chosen[2] in refs[:3]
    # re-measuring probes (no open verdict drawn): the three established experts, not only the best
    remeasure = ReputationPolicy(probe_open_share=0.0)
    for seed in range(40):
        assert set(remeasure.select(refs, 1, "math", standing, random.Random(seed), probe=True).chosen) == set(refs[:3])
    # a larger k wins; probe_k=1 keeps one expert a probe; user queries are not widened
    assert len(vetting.select(refs, 4, "math", standing, random.Random(1), probe=True).chosen) == 4
    single = ReputationPolicy(probe_open_share=1.0, probe_k=1)
    assert len(single.select(refs, 1, "math", standing, random.Random(1), probe=True).chosen) == 1
    assert {len(vetting.select(refs[:3], 1, "math", table(refs, [(0.95, 60)] * 3), random.Random(s)).chosen)
            for s in range(20)} == {1}
    again = [vetting.select(refs, 1, "math", standing, random.Random(s), probe=True).chosen for s in range(20)]
    assert again == [vetting.select(refs, 1, "math", standing, random.Random(s), probe=True).chosen for s in range(20)]
    with pytest.raises(ValueError):
        ReputationPolicy(probe_k=0)


def test_re_measuring_probes_grade_the_least_proven_first():
    """Without ``escalate_below``, a probe that re-measures the experts carrying
    traffic goes to those with the least probe evidence first: an expert proven
    by two lucky probes (a ring member right half the time, sybil-drift seed
    10) is graded again before it carries much, and the most proven expert,
    which needs it least, waits its turn. Among equally probed experts the order
    is sampled, so each is re-measured. With ``escalate_below`` probes keep the
    order user queries pick in (sampled value, price included): the least probed
    there are the dear experts users seldom ask, and probing them spends the budget."""
    proven, lucky, mid, other = ref(0, price=2.5), ref(1, price=1.0), ref(2), ref(3)
    refs = [proven, lucky, mid, other]
    standing = table(refs, [(0.85, 46.0, 12.0), (0.75, 2.0, 2.0), (0.8, 20.0, 8.0), (0.82, 30.0, 10.0)])
    remeasure = ReputationPolicy(probe_open_share=0.0)
    for seed in range(40):
        sel = remeasure.select(refs, 1, "math", standing, random.Random(seed), probe=True, adapt=True)
        assert sel.chosen == (lucky, mid, other)
    # user queries still put the most proven first
    user = [remeasure.select(refs, 3, "math", standing, random.Random(s), adapt=True).chosen for s in range(40)]
    assert all(c[0] == proven for c in user)
    # equally probed: sampled, so each of them is sometimes left out
    even = table(refs, [(0.85, 30.0, 6.0)] * 4)
    left_out = {next(r for r in refs if r not in remeasure.select(refs, 1, "math", even, random.Random(s),
                                                                 probe=True, adapt=True).chosen)
                for s in range(80)}
    assert left_out == set(refs)
    # escalating on confidence: probes follow the sampled value, so the most proven is often among them
    escalating = ReputationPolicy(probe_open_share=0.0, escalate_below=0.6)
    probed = [escalating.select(refs, 1, "math", standing, random.Random(s), probe=True, adapt=True).chosen
              for s in range(60)]
    assert sum(proven in c for c in probed) > 20


def test_one_expert_per_model_at_temperature_zero():
    """With ``distinct_models`` (a temperature-0 query) copies of a chosen
    model are left out: they would repeat its answer. Fewer experts are asked
    when the candidates hold fewer models; without it nothing changes."""
    a, b, c = "a" * 64, "b" * 64, "c" * 64
    refs = [ref(0, model=a), ref(1, model=a), ref(2, model=b), ref(3, model=c)]
    standing = table(refs, [(0.95, 40), (0.94, 40), (0.9, 40), (0.85, 40)])
    policy = ReputationPolicy(explore_share=0.0)
    rng = random.Random(7)
    for _ in range(50):
        sel = policy.select(refs, 3, "math", standing, rng, distinct_models=True)
        assert sorted(r.card.sha256 for r in sel.chosen) == [a, b, c]
    sel = policy.select(refs[:3], 3, "math", standing, rng, distinct_models=True)
    assert sorted(r.card.sha256 for r in sel.chosen) == [a, b]
    assert "2 not 3: 1 more is a copy of a chosen model" in sel.reason
    assert len(policy.select(refs[:3], 3, "math", standing, rng).chosen) == 3
    # a second opinion on an unreliable pick goes to another model
    unsure = table(refs, [(0.72, 4), (0.71, 4), (0.7, 4), (0.5, 4)])
    sels = [policy.select(refs[:3], 1, "math", unsure, rng, adapt=True, distinct_models=True) for _ in range(50)]
    assert all(len(s.chosen) == 2 and len({r.card.sha256 for r in s.chosen}) == 2 for s in sels)
    # ... and none when the only other established expert is a copy
    assert {len(policy.select(refs[:2], 1, "math", unsure, rng, adapt=True, distinct_models=True).chosen)
            for _ in range(50)} == {1}
    # a newcomer that is a copy of the pick is not explored with it
    newcomer = table(refs, [(0.9, 30), (0.6, 1)])
    explorer = ReputationPolicy(explore_share=1.0)
    assert {len(explorer.select(refs[:2], 1, "math", newcomer, rng, distinct_models=True).chosen)
            for _ in range(50)} == {1}
    assert {len(explorer.select(refs[:2], 1, "math", newcomer, rng).chosen) for _ in range(50)} == {2}
    # the base policies do the same
    for base in (UcbCostPolicy(), RandomPolicy()):
        chosen = base.select(refs, 4, "math", standing, rng, distinct_models=True).chosen
        assert sorted(r.card.sha256 for r in chosen) == [a, b, c]
    # an expert that announces no model file is never taken for a copy
    blank = [ref(i, model="") for i in range(3)]
    assert len(policy.select(blank, 3, "math", no_standing, rng, distinct_models=True).chosen) == 3


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(means, evidence, st.integers(0, 3)), min_size=1, max_size=8),
       st.integers(1, 5), st.integers(0, 2**32), st.booleans(), st.booleans())
def test_distinct_models_never_asks_two_copies(rows, k, seed, adapt, probe):
    refs = [ref(i, model=str(m) * 64) for i, (_, _, m) in enumerate(rows)]
    standing = table(refs, [(mean, e) for mean, e, _ in rows])
    policy = ReputationPolicy(explore_share=0.5, audit_share=0.5)
    sel = policy.select(refs, k, "math", standing, random.Random(seed), adapt=adapt, probe=probe,
                        distinct_models=True)
    models = [r.card.sha256 for r in sel.chosen]
    assert 1 <= len(models) == len(set(models))


def test_an_unsure_answer_is_wrong_more_often_than_its_expert():
    assert wrong_when_unsure(0.9, 1.0) == pytest.approx(0.1)  # unsure says nothing: the standing alone
    assert wrong_when_unsure(0.9, 3.0) == pytest.approx(0.3 / 1.2)
    assert wrong_when_unsure(1.0, 3.0) == 0.0 and wrong_when_unsure(0.0, 3.0) == 1.0


@given(st.floats(0, 1), st.floats(0, 1))
def test_check_gain_is_bounded_by_the_chance_the_first_is_wrong(p_wrong, quality):
    gain, tie = check_gain(p_wrong, quality)
    assert -(1 - p_wrong) - 1e-9 <= gain <= p_wrong + 1e-9 and 0 <= tie <= 1
    perfect, perfect_tie = check_gain(p_wrong, 1.0)  # an expert never wrong: every wrong answer is caught
    assert perfect == pytest.approx(p_wrong) and perfect_tie == pytest.approx(p_wrong)


def test_a_check_must_be_worth_its_price():
    first, cheap, dear = ref(1, price=1.0), ref(2, price=1.0), ref(3, price=10.0)
    standing = table([first, cheap, dear], [(0.92, 500), (0.92, 500), (0.92, 500)])
    policy = ReputationPolicy(cost_weight=0.02, unsure_odds=4.0, escalate_below=0.6)
    # an equal expert at price 1 is worth asking; at price 10 (and a likely tie-break) it is not
    picked, why = policy.second_opinion(first, 0.5, [cheap, dear], "math", standing, random.Random(1))
    assert picked is cheap and "adds +0." in why
    picked, why = policy.second_opinion(first, 0.5, [dear], "math", standing, random.Random(1))
    assert picked is None and why.startswith("not worth its price")
    # a first expert that is often wrong makes the dear check worth it
    weak = table([first, dear], [(0.6, 500), (0.92, 500)])
    assert policy.second_opinion(first, 0.5, [dear], "math", weak, random.Random(1))[0] is dear
    # without a price on quality, any check that helps is asked
    free = ReputationPolicy(cost_weight=0.0, escalate_below=0.6)
    assert free.second_opinion(first, 0.5, [dear], "math", standing, random.Random(1))[0] is dear
    assert policy.second_opinion(first, 0.5, [], "math", standing) == (None, "no other expert")
    with pytest.raises(ValueError):
        ReputationPolicy(unsure_odds=-1.0)


def test_unvetted_newcomers_are_probed_before_user_queries_explore_them():
    """A newcomer with no evidence yet (a new identity, a sybil's included) is
    not explored by user queries while established experts answer; probes
    measure it first (half of them by default, the rest re-measure the experts
    that carry traffic). Once it has some evidence and none of it bad, user
    queries explore it."""
    refs = [ref(i) for i in range(4)]
    standing = table(refs, [(0.9, 30), (0.9, 30), (0.5, 0.0), (0.5, 0.0)])
    policy = ReputationPolicy(explore_share=1.0)
    assert share(policy, refs, standing, set(refs[2:]), k=1) == 0.0
    rng = random.Random(4)
    probes = [policy.select(refs, 1, "math", standing, rng, probe=True).chosen[0] for _ in range(400)]
    opened = sum(1 for r in probes if r in refs[2:])
    assert 150 < opened < 250
    vetted = table(refs, [(0.9, 30), (0.9, 30), (0.7, 1.0), (0.5, 0.0)])
    assert share(policy, refs, vetted, {refs[2]}, k=1) == 1.0
    assert share(policy, refs, vetted, {refs[3]}, k=1) == 0.0
    # with no established expert, unvetted newcomers answer as before
    fresh = table(refs, [(0.5, 0.0)] * 4)
    assert len(policy.select(refs, 2, "math", fresh, rng).chosen) == 2


def test_a_dominated_expert_comes_last():
    """An established expert whose optimistic value is below the best one's
    pessimistic value (a self-praising ring member just above the floor) is not
    taken for a second opinion while others are left, but still fills in when
    k needs it."""
    refs = [ref(i) for i in range(3)]
    standing = table(refs, [(0.9, 40), (0.85, 40), (0.6, 10)])
    policy = ReputationPolicy(explore_share=0.0)
    assert share(policy, refs, standing, {refs[2]}, k=2) == 0.0
    assert share(policy, refs, standing, {refs[2]}, k=3) == 1.0
    # probes are not steered by it
    rng = random.Random(2)
    assert any(refs[2] in policy.select(refs, 3, "math", standing, rng, probe=True).chosen for _ in range(20))


def test_probes_prove_an_expert_before_user_queries_rely_on_it():
    """Standing built from praise and won votes is not proof: while some expert
    holds ``proven_evidence`` (2) units of probe grades, one with less is a
    newcomer whatever its other evidence. User queries neither rely on it nor
    explore it (probes measure it: its verdict is open), until probes have
    graded it. A network whose validators do not probe (no candidate has probe
    grades), or a standing that does not report them, is not held back."""
    refs = [ref(i) for i in range(4)]
    praised = table(refs, [(0.9, 30, 12), (0.85, 20, 8), (0.85, 6, 1.0), (0.8, 3, 0.0)])
    policy = ReputationPolicy(explore_share=1.0, probe_open_share=1.0, probe_k=1)
    for k in (1, 2):
        assert share(policy, refs, praised, set(refs[2:]), k=k) == 0.0
    probes = {policy.select(refs, 1, "math", praised, random.Random(s), probe=True).chosen[0] for s in range(60)}
    assert probes == set(refs[2:])  # both are open verdicts, drawn at random
    proven = table(refs, [(0.9, 30, 12), (0.85, 20, 8), (0.85, 6, 2.0), (0.8, 3, 0.0)])
    assert share(policy, refs, proven, {refs[2]}, k=2) > 0.2
    assert share(policy, refs, proven, {refs[3]}, k=2) == 0.0
    # no probe grades anywhere, or none reported: evidence alone establishes, newcomers are explored
    unprobed = table(refs, [(0.9, 30, 0.0), (0.85, 20, 0.0), (0.85, 6, 0.0), (0.8, 1, 0.0)])
    legacy = table(refs, [(0.9, 30), (0.85, 20), (0.85, 6), (0.8, 1)])
    for standing in (unprobed, legacy):
        assert share(policy, refs, standing, {refs[2]}, k=2) > 0.2
        assert share(policy, refs, standing, {refs[3]}, k=1) == 1.0  # explored, as an extra respondent
    off = ReputationPolicy(explore_share=1.0, proven_evidence=0.0)
    assert share(off, refs, praised, {refs[2]}, k=2) > 0.2
    with pytest.raises(ValueError):
        ReputationPolicy(proven_evidence=-1.0)


def test_while_validators_probe_user_queries_explore_only_to_save():
    """While probes measure quality (some candidate is proven by them), a user
    query explores a vetted newcomer only if it may save what the user values:
    ``cost_weight`` times its price below the pick's is at least
    ``explore_saving`` (0.05). A newcomer as dear as the pick is left to probes."""
    dear = [ref(0, price=10.0), ref(1, price=10.0)]
    same, cheap = ref(2, price=10.0), ref(3, price=2.0)
    refs = dear + [same, cheap]
    standing = table(refs, [(0.9, 30, 12), (0.88, 30, 12), (0.7, 1.0, 1.0), (0.7, 1.0, 1.0)])
    policy = ReputationPolicy(explore_share=1.0, cost_weight=0.01)  # cheap saves 0.01 x 8 = 0.08
    assert share(policy, refs, standing, {same}, k=1) == 0.0
    assert share(policy, refs, standing, {cheap}, k=1) == 1.0
    stingy = ReputationPolicy(explore_share=1.0, cost_weight=0.005)  # 0.04 < 0.05: not worth it
    assert share(stingy, refs, standing, {same, cheap}, k=1) == 0.0
    sel = policy.select(refs, 1, "math", standing, random.Random(1))
    assert sel.chosen[1] == cheap and "exploring a newcomer" in sel.reason
    with pytest.raises(ValueError):
        ReputationPolicy(explore_saving=-0.1)


def test_vetted_newcomers_fill_in_before_dominated_experts():
    """When k needs more than the established experts that are not dominated, a
    vetted newcomer (unknown, nothing bad seen) is asked before a dominated one
    (known to be worse than the best), and the dominated one before unvetted
    identities. No expert is taken twice."""
    refs = [ref(i) for i in range(5)]
    standing = table(refs, [(0.9, 40, 12), (0.85, 40, 12), (0.6, 10, 10), (0.7, 1.0, 1.0), (0.5, 0.0, 0.0)])
    policy = ReputationPolicy(explore_share=0.0)
    for seed in range(30):
        sel = policy.select(refs, 3, "math", standing, random.Random(seed))
        assert set(sel.chosen) == {refs[0], refs[1], refs[3]} and "newcomers fill in" in sel.reason
        sel = policy.select(refs, 4, "math", standing, random.Random(seed))
        assert set(sel.chosen) == set(refs[:4])
        sel = policy.select(refs, 5, "math", standing, random.Random(seed))
        assert sorted(sel.chosen, key=refs.index) == refs
    alone = table(refs, [(0.9, 40, 12), (0.85, 40, 12), (0.6, 10, 10), (0.2, 10, 10), (0.25, 10, 10)])
    sel = policy.select(refs, 3, "math", alone, random.Random(1))
    assert set(sel.chosen) == set(refs[:3]) and "dominated experts fill in" in sel.reason
