"""Routing reads standings through one pure function of the committed state,
``reputation.standing_view``: the node's ledger adapter and the simulator's
ledger give the same (mean, evidence) for the same state, and the evidence is
decayed, rater-weighted rating mass (not a raw count of ratings)."""

import hashlib
import types

import pytest

from p2pnet import wire
from p2pnet.consensus.genesis import Params, generate_genesis
from p2pnet.consensus.reputation import FP, genesis_state, standing_of, standing_view
from p2pnet.consensus.sim import make_signer
from p2pnet.ledger_service import LedgerService
from p2pnet.sim.ledger import Sequencer

VALIDATORS = [make_signer(hashlib.sha256(b"sv%d" % i).digest()) for i in range(4)]
GOOD, BAD, UNRATED = (make_signer(bytes([c]) * 32) for c in b"GBU")
OUTSIDER = make_signer(b"X" * 32)  # not a validator: its ratings weigh little or nothing


def _rating(signer, respondent, score, domain, k, signal="agreement"):
    r = wire.Rating(query_hash=hashlib.sha256(b"sv:%d" % k).digest(), respondent=respondent.peer_id,
                    expert_id="e", domain=domain, answer_hash=b"", score=score, signal=signal)
    return signer.seal(r, ts_ms=0)


def _ledger(params: Params = Params(), blocks: int = 6) -> Sequencer:
    genesis = generate_genesis([v.public_key for v in VALIDATORS], chain_id="sv", genesis_time_ms=0,
                               params=params)
    seq = Sequencer(genesis)
    k = 0
    for _ in range(blocks):
        for v in VALIDATORS:
            for who, score in ((GOOD, 1.0), (BAD, 0.0)):
                k += 1
                seq.submit(_rating(v, who, score, "law", k))
            k += 1
            seq.submit(_rating(OUTSIDER, GOOD, 0.0, "law", k))
            k += 1  # a graded probe in medicine: routing reads its probe evidence apart
            seq.submit(_rating(v, GOOD, 1.0, "medicine", k, signal="probe"))
        seq.cut_block()
    return seq


def _node_adapter(state) -> LedgerService:
    """The node's LedgerService, reading ``state`` as its committed state."""
    service = object.__new__(LedgerService)
    service.service = types.SimpleNamespace(state=state)
    return service


@pytest.mark.parametrize("params", [Params(), Params(decay_epoch_blocks=2, decay_per_epoch_ppm=200_000)])
def test_the_node_and_the_simulator_read_the_same_standing(params):
    seq = _ledger(params)
    node = _node_adapter(seq.state)
    assert seq.state.height == 6
    for who in (GOOD, BAD, UNRATED, OUTSIDER):
        for domain in ("law", "medicine"):
            assert node.standing(who.peer_id, domain) == seq.standing(who.peer_id, domain)
            assert node.standing(who.peer_id, domain) == standing_view(seq.state, who.peer_id, domain)
    # the probe grades are told apart: all of GOOD's medicine evidence, none of its law evidence
    mean, evidence, probed = node.standing(GOOD.peer_id, "medicine")
    assert mean > 0.7 and evidence > 0 and probed == pytest.approx(evidence, abs=1e-5)
    assert node.standing(GOOD.peer_id, "law")[2] == 0.0


def test_evidence_is_weighted_and_decayed_not_a_count():
    plain = _ledger()
    mean, evidence, probed = standing_view(plain.state, GOOD.peer_id, "law")
    count = standing_of(plain.state, GOOD.peer_id, "law").count
    assert mean > 0.8 and plain.standing(BAD.peer_id, "law")[0] < 0.2
    # the outsider's ratings are counted but carry no validator weight: evidence < count
    assert count > evidence > 0
    assert probed == 0.0  # no probe grades among them
    decayed = _ledger(Params(decay_epoch_blocks=2, decay_per_epoch_ppm=200_000))
    assert decayed.standing(GOOD.peer_id, "law")[1] < evidence
    # the evidence agrees with the state's published confidence E / (E + half)
    conf = standing_of(plain.state, GOOD.peer_id, "law").confidence
    half = plain.params.standing_half_evidence / FP
    assert evidence / (evidence + half) == pytest.approx(conf, abs=1e-6)


def test_unrated_is_the_prior_with_no_evidence():
    state = genesis_state(generate_genesis([v.public_key for v in VALIDATORS], chain_id="sv", genesis_time_ms=0))
    assert standing_view(state, UNRATED.peer_id, "law") == (0.5, 0.0, 0.0)
    assert _node_adapter(state).standing(UNRATED.peer_id, "law") == (0.5, 0.0, 0.0)
