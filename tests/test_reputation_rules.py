import dataclasses
import hashlib
import random

import pytest

from hypothesis import given, settings, strategies as st

from p2pnet import wire
from p2pnet.consensus.genesis import generate_genesis
from p2pnet.consensus.reputation import (
    FP, PROBE_MIN_EVIDENCE, PROBE_POOL_CAP, STATE_VERSION, ReputationState, Rules, apply_txs, check_block_txs,
    decay_factor, decode_tx, genesis_state, probe_bound, rater_weight, score, standing_view, standings, state_hash,
)
from p2pnet.consensus.sim import make_signer

VALIDATORS = [make_signer(hashlib.sha256(b"v%d" % i).digest()) for i in range(4)]
EXPERT = make_signer(b"E" * 32)
OTHER = make_signer(b"O" * 32)
GENESIS = generate_genesis([v.public_key for v in VALIDATORS], chain_id="rep", genesis_time_ms=0)


def rate(signer, respondent, s, domain="code", k=0, signal="agreement"):
    r = wire.Rating(query_hash=hashlib.sha256(b"%d" % k).digest(), respondent=respondent.peer_id,
                    expert_id="x", domain=domain, answer_hash=b"", score=s, signal=signal)
    return decode_tx(signer.seal(r, ts_ms=0), 1024)


def run(blocks, state=None):
    state = state or genesis_state(GENESIS)
    for txs in blocks:
        assert check_block_txs(state, txs) is None
        state = apply_txs(state, state.height + 1, txs)
    return state


def test_replays_are_byte_identical_and_roundtrip():
    blocks = [[rate(v, EXPERT, (i % 4) / 3, k=i) for v in VALIDATORS] for i in range(10)]
    a, b = run(blocks), run(blocks)
    assert a.to_bytes() == b.to_bytes() and state_hash(a) == state_hash(b)
    c = ReputationState.from_bytes(a.rules, a.to_bytes())
    assert c.to_bytes() == a.to_bytes() and c.hash() == a.hash()
    assert state_hash(genesis_state(GENESIS)) != state_hash(a)


def _packed_whole(state):
    """The canonical bytes packed in one go, as the format defines them."""
    return wire.packb([
        STATE_VERSION, state.height,
        [[k, state.nonces[k]] for k in sorted(state.nonces)],
        [[r, d, *state.records[r][d]] for r in sorted(state.records) for d in sorted(state.records[r])],
        [[x, r, d, *state.pairs[x][(r, d)]] for x in sorted(state.pairs) for (r, d) in sorted(state.pairs[x])],
    ])


def test_incremental_packing_gives_the_bytes_of_packing_the_whole_state():
    """A block re-packs only the records it touched; over a chain that grows
    past the msgpack array sizes 15 and 65535 and forks twice from one state,
    every state's bytes equal those of packing it whole."""
    rnd = random.Random(7)
    experts = [make_signer(hashlib.sha256(b"e%d" % i).digest()) for i in range(40)]
    raters = VALIDATORS + experts[:8]
    state, k = genesis_state(GENESIS), 0
    for height in range(1, 31):
        txs, seen = [], set()
        for _ in range(rnd.randrange(0, 40)):
            rater, expert = rnd.choice(raters), rnd.choice(experts)
            if rater is expert or rater in seen:
                continue
            seen.add(rater)
            k += 1
            txs.append(rate(rater, expert, rnd.random(), domain=rnd.choice(["code", "math", "law"]), k=k))
        txs.sort(key=lambda tx: tx.nonce)
        state = apply_txs(state, height, txs)
        assert state.to_bytes() == _packed_whole(state)
        if height in (10, 20):  # a fork: two children of one state, packed in turn
            other = apply_txs(state, height + 1, [rate(VALIDATORS[0], experts[0], 0.0, k=10_000 + height)])
            assert other.to_bytes() == _packed_whole(other)
    assert min(sum(len(v) for v in table.values()) for table in (state.pairs, state.records)) > 15
    big = ReputationState(state.rules, 1, {}, {b"r": {f"d{i}": (1, 2, 3, 4, 5, 0) for i in range(70_000)}})
    assert big.to_bytes() == _packed_whole(big)
    assert ReputationState.from_bytes(state.rules, state.to_bytes()).to_bytes() == state.to_bytes()


def test_validator_ratings_move_the_score():
    good = run([[rate(v, EXPERT, 1.0, k=i) for v in VALIDATORS] for i in range(3)])
    bad = run([[rate(v, EXPERT, 0.0, k=i) for v in VALIDATORS] for i in range(3)])
    assert score(good, EXPERT.peer_id, "code") > 0.8
    assert score(bad, EXPERT.peer_id, "code") < 0.2
    assert score(good, EXPERT.peer_id, "math") == 0.5  # other domain untouched
    top = standings(good)[0]
    assert top.peer_id == wire.peer_id_str(EXPERT.peer_id) and top.count == 12


def test_sybil_ring_cannot_move_a_score_much():
    honest = run([[rate(v, EXPERT, 0.9, k=i) for v in VALIDATORS] for i in range(2)])
    before = score(honest, EXPERT.peer_id, "code")
    sybils = [make_signer(hashlib.sha256(b"sybil%d" % i).digest()) for i in range(200)]
    # the ring rates each other up (to gain standing), then sinks the expert
    ring = [[rate(s, sybils[(j + 1) % len(sybils)], 1.0, k=j) for j, s in enumerate(sybils)]]
    attack = [[rate(s, EXPERT, 0.0, k=1000 + j) for j, s in enumerate(sybils)] for _ in range(3)]
    after_state = run(ring + attack, honest)
    after = score(after_state, EXPERT.peer_id, "code")
    assert before - after < 0.15, (before, after)
    # and no sybil earned standing from the ring
    assert all(not rater_weight(after_state, s.peer_id)[1] for s in sybils)


def test_one_rater_influence_is_capped_per_pair():
    p = GENESIS.params
    blocks = [[rate(VALIDATORS[0], EXPERT, 0.0, k=i * 100 + j) for j in range(p.max_ratings_per_rater_per_block)]
              for i in range(20)]
    s = run(blocks)
    ta, tb = s.records[EXPERT.peer_id]["code"][:2]
    assert ta + tb <= p.pair_cap  # 320 ratings, at most pair_cap of evidence
    assert score(s, EXPERT.peer_id, "code") >= 0.2  # prior (1, 1) + at most 3 counts against


def test_a_raters_say_follows_its_latest_ratings():
    """A validator that praised an expert can later sink it: once its say is
    full (pair_cap), each new rating fades its older ones in proportion."""
    v, p = VALIDATORS[0], GENESIS.params
    praised = run([[rate(v, EXPERT, 1.0, k=i)] for i in range(3)])
    assert score(praised, EXPERT.peer_id, "code") == 0.8  # (1 + 3) / (2 + 3)
    once = run([[rate(v, EXPERT, 0.0, k=3)]], praised)
    assert score(once, EXPERT.peer_id, "code") == 0.6  # 2 of the 3 praises kept: (1 + 2) / (2 + 3)
    sunk = run([[rate(v, EXPERT, 0.0, k=3 + i)] for i in range(1, 12)], once)
    ta, tb = sunk.records[EXPERT.peer_id]["code"][:2]
    assert p.pair_cap - 20 <= ta + tb <= p.pair_cap  # integer rounding only
    assert score(sunk, EXPERT.peer_id, "code") < 0.22
    assert sunk.pairs[v.peer_id][(EXPERT.peer_id, "code")][:2] == (ta, tb)
    # other raters' evidence is untouched by it
    both = run([[rate(VALIDATORS[1], EXPERT, 1.0, k=100)]], sunk)
    assert both.records[EXPERT.peer_id]["code"][:2] == (ta + FP, tb)


def test_a_rater_that_earns_standing_leaves_the_newcomer_pool():
    """A rater's say sits in the newcomer or the trusted pool; when it becomes
    trusted, its next rating takes its newcomer say out of the record."""
    p = GENESIS.params
    s = run([[rate(OTHER, EXPERT, 0.0, k=0)]])
    assert s.records[EXPERT.peer_id]["code"][:4] == (0, 0, 0, p.newcomer_weight)
    s = run([[rate(v, OTHER, 1.0, k=i, signal="probe") for v in VALIDATORS] for i in range(1, 31)], s)
    w, trusted = rater_weight(s, OTHER.peer_id)
    assert trusted
    s = run([[rate(OTHER, EXPERT, 1.0, k=31)]], s)
    assert s.records[EXPERT.peer_id]["code"][:4] == (w, 0, 0, 0)
    assert s.pairs[OTHER.peer_id][(EXPERT.peer_id, "code")] == (w, 0, s.epoch, 1)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 2), st.integers(0, 4),
                                   st.sampled_from(["probe", "agreement", "feedback"])), max_size=10),
                max_size=25))
def test_every_record_is_the_sum_of_its_raters_says(blocks):
    """Whatever the ratings, each record's pools hold exactly its raters' says
    (no decay within 1000 blocks), and no say exceeds pair_cap times the weight."""
    params = dataclasses.replace(GENESIS.params, weight_probe_ppm=2_500_000, weight_feedback_ppm=0)
    genesis = dataclasses.replace(GENESIS, params=params)
    raters = [VALIDATORS[0], VALIDATORS[1], OTHER, make_signer(b"N" * 32)]
    experts = [EXPERT, OTHER, make_signer(b"Q" * 32)]
    state, k = genesis_state(genesis), 0
    for block in blocks:
        txs = []
        for r, e, sc, signal in block:
            if raters[r] is experts[e]:
                continue
            k += 1
            txs.append(rate(raters[r], experts[e], sc / 4, k=k, signal=signal))
        txs = [t for t in txs if sum(u.rater == t.rater for u in txs[:txs.index(t) + 1])
               <= params.max_ratings_per_rater_per_block]
        state = run([txs], state)
    for resp, recs in state.records.items():
        for domain, (ta, tb, na, nb, *_) in recs.items():
            says = [x[(resp, domain)] for x in state.pairs.values() if (resp, domain) in x]
            assert (ta, tb) == (sum(a for a, b, _, t in says if t), sum(b for a, b, _, t in says if t))
            assert (na, nb) == (sum(a for a, b, _, t in says if not t), sum(b for a, b, _, t in says if not t))
            assert all(a + b <= params.pair_cap for a, b, _, _ in says)
    for recs in state.records.values():
        for rec in recs.values():  # the probe pool: the validators' latest probe grades, bounded
            assert rec[6] + rec[7] <= PROBE_POOL_CAP


def test_signal_weights_scale_the_evidence_a_rating_adds():
    params = dataclasses.replace(GENESIS.params, weight_probe_ppm=3_000_000, weight_agreement_ppm=500_000,
                                 weight_feedback_ppm=0)
    weighted = dataclasses.replace(GENESIS, params=params)

    def evidence(signal, genesis=weighted, n=1):
        s = run([[rate(v, EXPERT, 1.0, k=i * 10 + j, signal=signal) for j, v in enumerate(VALIDATORS)]
                 for i in range(n)], genesis_state(genesis))
        ta, tb, na, nb, count = s.records[EXPERT.peer_id]["code"][:5]
        return ta + tb + na + nb, count

    assert evidence("agreement", GENESIS) == (4 * FP, 4)  # the default: every signal counts 1.0
    assert evidence("probe") == (12 * FP, 4)
    assert evidence("agreement") == (2 * FP, 4)
    assert evidence("judge+agreement") == (4 * FP, 4)  # the heaviest signal named: judge, 1.0
    assert evidence("feedback") == (0, 4)  # counted as ratings, no evidence
    # a rater's budget on one record stays pair_cap times its weight, whatever the signal
    assert evidence("probe", n=3) == (4 * GENESIS.params.pair_cap, 12)
    assert score(run([[rate(VALIDATORS[0], EXPERT, 0.0, k=1, signal="probe")]], genesis_state(weighted)),
                 EXPERT.peer_id, "code") == 0.2  # (1 + 0) / (2 + 3)


def test_a_rating_naming_an_unknown_signal_is_not_a_transaction():
    for signal in ("vibes", "probe+probe", "", "agreement+"):
        r = wire.Rating(query_hash=bytes(32), respondent=EXPERT.peer_id, expert_id="x", domain="code",
                        answer_hash=b"", score=1.0, signal=signal)
        with pytest.raises(ValueError, match="signal must be one of"):
            decode_tx(VALIDATORS[0].seal(r, ts_ms=0), 1024)
    for signal in ("probe", "judge+agreement", "feedback", "failure"):
        r = wire.Rating(query_hash=bytes(32), respondent=EXPERT.peer_id, expert_id="x", domain="code",
                        answer_hash=b"", score=1.0, signal=signal)
        assert decode_tx(VALIDATORS[0].seal(r, ts_ms=0), 1024).rating.signal == signal


def test_rater_cap_per_block_and_nonce_order_enforced():
    p = GENESIS.params
    txs = [rate(VALIDATORS[0], EXPERT, 1.0, k=i) for i in range(p.max_ratings_per_rater_per_block + 1)]
    state = genesis_state(GENESIS)
    assert "more than" in check_block_txs(state, txs)
    assert check_block_txs(state, txs[:-1]) is None
    assert "nonce" in check_block_txs(state, [txs[1], txs[0]])
    after = apply_txs(state, 1, txs[:2])
    assert "nonce" in check_block_txs(after, [txs[1]])  # replay of a committed nonce


def test_earned_standing_lets_an_expert_rate_with_weight():
    p = GENESIS.params
    # validators' probes grade OTHER's answers right for a while: OTHER becomes a trusted rater
    s = run([[rate(v, OTHER, 1.0, k=i, signal="probe") for v in VALIDATORS] for i in range(30)])
    w, trusted = rater_weight(s, OTHER.peer_id)
    # the probe pool holds 12 units at (1 + 12) / (2 + 12): (2 * mean - 1) * 12 / (12 + 10)
    assert trusted and w == (2 * (13 * FP // 14) - FP) * 12 // 22 <= p.max_rater_weight
    fresh = make_signer(b"F" * 32)
    assert rater_weight(s, fresh.peer_id) == (p.newcomer_weight, False)
    # as much trusted praise by other signals earns nothing: the validators' votes and
    # agreement can be won by a ring, and a trusted rater's praise could lend a ring standing
    praised = run([[rate(v, OTHER, 1.0, k=i) for v in VALIDATORS] for i in range(30)])
    assert standing_view(praised, OTHER.peer_id, "code")[0] > 0.9
    assert rater_weight(praised, OTHER.peer_id) == (p.newcomer_weight, False)


def test_decay_is_integer_and_monotonic():
    assert decay_factor(990_000, 0) == FP
    assert decay_factor(990_000, 1) == 990_000
    assert decay_factor(990_000, 2) == 980_100
    assert decay_factor(500_000, 64) == 0
    params = dataclasses.replace(GENESIS.params, decay_epoch_blocks=1, decay_per_epoch_ppm=500_000)
    rules = Rules(params, frozenset(v.peer_id for v in VALIDATORS))
    s = run([[rate(v, EXPERT, 1.0, k=1) for v in VALIDATORS]], ReputationState(rules))
    fresh = score(s, EXPERT.peer_id, "code")
    s = run([[]] * 5, s)
    assert 0.5 < score(s, EXPERT.peer_id, "code") < fresh


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 4), st.sampled_from(["a", "b"])), max_size=12),
       st.randoms(use_true_random=False))
def test_weights_do_not_depend_on_order_within_a_block(ratings, rnd):
    """Rater weights come from the state before the block, so only per-rater
    nonce order matters: shuffling raters' interleaving gives the same state."""
    txs = [rate(VALIDATORS[r], EXPERT if e % 2 else OTHER, e / 4, domain=d, k=i)
           for i, (r, e, d) in enumerate(ratings)]
    by_rater = {}
    for t in txs:
        by_rater.setdefault(t.rater, []).append(t)
    if any(len(v) > GENESIS.params.max_ratings_per_rater_per_block for v in by_rater.values()):
        return
    keys = list(by_rater)
    rnd.shuffle(keys)
    reordered = [t for k in keys for t in by_rater[k]]
    assert run([txs]).to_bytes() == run([reordered]).to_bytes()


# ---------------------------------------------------------------- the probe bound


def _praised(n=3):
    """An expert every validator rated 1.0 by agreement ``n`` times (a vote a
    colluding majority can win): 12 units of trusted evidence, all praise."""
    return run([[rate(v, EXPERT, 1.0, k=i * 10 + j) for j, v in enumerate(VALIDATORS)] for i in range(n)])


def _probed(state, grades, rater=None, k0=1000):
    """``state`` after one probe grade per block, alternating validators unless ``rater``."""
    for i, g in enumerate(grades):
        who = rater or VALIDATORS[i % 2]
        state = run([[rate(who, EXPERT, g, k=k0 + i, signal="probe")]], state)
    return state


def test_graded_probes_bound_the_mean_that_praise_and_votes_lift():
    praised = _praised()
    mean, evidence, probed_evidence = standing_view(praised, EXPERT.peer_id, "code")
    assert mean > 0.9 and evidence == 12.0 and probed_evidence == 0.0  # praise is no probe grade
    # half of its probe answers are wrong: 4 units of probe evidence at 0.5
    probed = _probed(praised, [1.0, 0.0, 1.0, 0.0])
    rec = probed.records[EXPERT.peer_id]["code"]
    assert rec[6:] == (2 * FP, 2 * FP)
    bound = probe_bound(rec, probed.rules.params)
    assert bound == 500_000 + 188_982  # Beta(3, 3): mean 0.5, sd sqrt(9 / 252)
    mean, evidence, probed_evidence = standing_view(probed, EXPERT.peer_id, "code")
    assert probed_evidence == 4.0  # what routing reads of the probe pool: 4 grades of 1 unit
    # the probes replaced two validators' earlier praise within their say (pair_cap): the
    # evidence is as much as before, and only the mean is bounded
    assert mean == bound / FP and evidence == pytest.approx(12.0, abs=1e-5)
    assert score(probed, EXPERT.peer_id, "code") == bound / FP
    # as a rater, neither the praise nor probes at 0.5 earn it a weight: it is a newcomer
    newcomer = (probed.rules.params.newcomer_weight, False)
    assert rater_weight(praised, EXPERT.peer_id) == rater_weight(probed, EXPERT.peer_id) == newcomer


def test_probes_only_bound_from_above_and_only_with_enough_of_them():
    # one probe grade (1 unit < PROBE_MIN_EVIDENCE): no bound yet
    assert PROBE_MIN_EVIDENCE == 2 * FP
    one = _probed(_praised(), [0.0])
    assert probe_bound(one.records[EXPERT.peer_id]["code"], one.rules.params) is None
    # the plain posterior: the grade took the place of one of that validator's 3 praises
    assert standing_view(one, EXPERT.peer_id, "code")[0] == pytest.approx((1 + 11) / (2 + 12), abs=1e-5)
    # good probes never lift a mean that other ratings hold down (a degrading expert still falls)
    panned = run([[rate(v, EXPERT, 0.0, k=i * 10 + j) for j, v in enumerate(VALIDATORS)] for i in range(3)])
    lifted = _probed(panned, [1.0, 1.0, 1.0])
    mean, _, _ = standing_view(lifted, EXPERT.peer_id, "code")
    # the plain posterior: the grades count as ratings within each validator's say (its older
    # ratings fade in proportion: 8/3 praise of 12 units), nothing more; the bound is far above
    assert mean == pytest.approx((1 + 8 / 3) / (2 + 12), abs=1e-5)
    assert probe_bound(lifted.records[EXPERT.peer_id]["code"], lifted.rules.params) > 0.9 * FP


def test_the_probe_pool_holds_only_the_validators_latest_probe_grades():
    # a non-validator's "probe" ratings and a validator's agreement ratings leave the pool empty
    other = _probed(_praised(), [0.0] * 4, rater=OTHER)
    assert other.records[EXPERT.peer_id]["code"][6:] == (0, 0)
    # many good grades, then bad ones: the pool never holds more than its cap, and the
    # older grades make room for the newer (an expert that degrades loses its bound's support)
    state = _probed(_praised(), [1.0] * 20)
    assert state.records[EXPERT.peer_id]["code"][6:] == (PROBE_POOL_CAP, 0)
    state = _probed(state, [0.0] * 20, k0=2000)
    pa, pb = state.records[EXPERT.peer_id]["code"][6:]
    # each new grade scales the older ones by 11/12: 12 * (11/12)**20 = 2.1 units of good grades left
    assert pa + pb <= PROBE_POOL_CAP and 2.0 * FP < pa < 2.2 * FP and pb > 9.8 * FP
    # two validators still praise it (6 units), two now grade it 0: the probes bound it to 0.33
    bound = probe_bound(state.records[EXPERT.peer_id]["code"], state.rules.params)
    assert bound < 0.35 * FP and standing_view(state, EXPERT.peer_id, "code")[0] == bound / FP
    # and the state with its pools replays and round-trips byte for byte
    assert ReputationState.from_bytes(state.rules, state.to_bytes()).hash() == state.hash()
