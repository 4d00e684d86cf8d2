"""The sans-IO query round (p2pnet.experts.query_round): scripted event
sequences with the exact actions expected, and seeded properties over random
experts, options and event scripts. No network, no Trio: time is a float."""

import hashlib
import itertools
import math
import random

import pytest
from hypothesis import given, settings, strategies as st

from p2pnet import wire
from p2pnet.experts import signals
from p2pnet.experts.directory import ExpertRef
from p2pnet.experts.evaluation import AgreementEvaluator, Candidate, vote_weight, weighted_choice
from p2pnet.experts.patience import LatencyBook, card_seconds, patience, still_wanted
from p2pnet.experts.query_round import (
    Ask, Cancel, Chunk, Close, Done, Forget, Gone, QueryRound, Rate, Reply, RoundRules, RoundSetup, Stream, Tick,
)
from p2pnet.experts.selection import RandomPolicy, ReputationPolicy, SelectionPolicy, UcbCostPolicy, no_standing
from p2pnet.experts.verdict import pieces
from p2pnet.query import (
    BadQuery, DeadlineExceeded, Escalation, ExpertKey, JudgeReport, NoExpertAvailable, QueryError,
)

QUESTION = "What is the capital of France?"  # 30 characters: 8 + 30/4 = 15.5 prompt tokens
PROMPT = wire.PromptBody(messages=(wire.ChatMessage("user", QUESTION),), max_tokens=32)


def peer(i: int) -> bytes:
    return wire.peer_id_from_public_key(bytes([i]) * 32)


ME = peer(200)


def ref(i: int, *, at: bytes = b"", sha: str = "", prompt_tps: float = 100.0, gen_tps: float = 100.0,
        load: int = 0, price: float = 1.0, max_concurrency: int = 8) -> ExpertRef:
    """Expert ``e<i>`` on peer ``i`` (or ``at``), its own model file unless ``sha`` is given."""
    card = wire.ModelCard(expert_id=f"e{i}", model="m", sha256=sha or f"{i:064x}", quantization="q4",
                          n_ctx=2048, domains=("general",), prompt_tps=prompt_tps, gen_tps=gen_tps,
                          price_per_1k=price, load=load, max_concurrency=max_concurrency)
    return ExpertRef(at or peer(i), card, 0.0)


class Fixed(SelectionPolicy):
    """Picks by a fixed order: e1 before e2 before e3..."""

    name = "fixed"

    def __init__(self, escalate_below: float = 0.0) -> None:
        self.escalate_below = escalate_below

    def score(self, ref, domain, standing, total_evidence, rng) -> float:
        return -int(ref.card.expert_id[1:])


def B(n: int) -> bytes:
    """The n-th batch id made by :func:`setup`'s ``new_id``."""
    return n.to_bytes(16, "big")


def setup(cands, **kw) -> RoundSetup:
    counter = itertools.count(1)
    base = dict(domain="general", prompt=PROMPT, candidates=list(cands), deadline_s=60.0, policy=Fixed(),
                evaluator=AgreementEvaluator(), standing=no_standing, rng=random.Random(0),
                new_id=lambda: B(next(counter)), me=ME)
    base.update(kw)
    return RoundSetup(**base)


def sha(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


def ok(batch: bytes, r: ExpertRef, text: str, confidence=None) -> Reply:
    return Reply(batch, r.key, "ok", text, 3, "stop", confidence, sha(text), 10, 5)


def fail(batch: bytes, r: ExpertRef, status: str) -> Reply:
    return Reply(batch, r.key, status, error="boom" if status == "error" else "")


def rating(rnd, r: ExpertRef, score: float, text: str = "", signal: str = "agreement") -> Rate:
    query_hash = hashlib.sha256(rnd.query_id + rnd.prompt.pack()).digest()
    return Rate(wire.Rating(query_hash, r.peer, r.card.expert_id, "general", sha(text) if text else b"",
                            score, signal))


def xkey(r: ExpertRef) -> ExpertKey:
    return ExpertKey(r.peer_str, r.card.expert_id)


def done(actions) -> Done:
    assert isinstance(actions[-1], Done) and sum(isinstance(a, Done) for a in actions) == 1
    return actions[-1]


# ------------------------------------------------------------ scripted rounds

def test_two_respondents_agree():
    r1, r2, r3 = ref(1), ref(2), ref(3)
    rnd = QueryRound(setup([r1, r2, r3]), 0.0)
    assert rnd.start(0.0) == [Ask(B(1), (r1, r2), PROMPT, 60.0, None)]
    assert rnd.wake_at() == 5.0  # 3 x (15.5/100 + 32/100) s is under the 5 s floor
    assert rnd.step(ok(B(1), r1, "Paris."), 1.0) == []
    assert rnd.silent() == [r2.key] and rnd.waits_for(B(1), r2.key) and not rnd.waits_for(B(1), r1.key)
    acts = rnd.step(ok(B(1), r2, "Paris"), 2.0)
    assert acts[:-1] == [Close(B(1)), rating(rnd, r1, 1.0, "Paris."), rating(rnd, r2, 1.0, "Paris")]
    res = done(acts).outcome.result
    assert rnd.finished and rnd.wake_at() is None and rnd.step(Tick(), 3.0) == []
    assert res.text == "Paris." and res.query_id == B(1).hex()
    prov = res.provenance
    assert prov.chosen == xkey(r1)  # the faster of the two that agree
    assert [(x.peer_id, x.expert_id, x.status, x.latency_ms, x.score) for x in prov.respondents] == [
        (r1.peer_str, "e1", "ok", 1000, 1.0), (r2.peer_str, "e2", "ok", 2000, 1.0)]
    assert prov.tiebreakers == () and prov.escalated is None and prov.judges is None
    assert rnd.outcome.feedback.respondent == r1.peer


def test_two_answers_differ_a_third_breaks_the_tie():
    # e3 is a copy of e2's model: at temperature 0 it would repeat e2, so e4 is asked
    r1, r2, r3, r4 = ref(1), ref(2), ref(3, sha=f"{2:064x}"), ref(4)
    rnd = QueryRound(setup([r1, r2, r3, r4]), 0.0)
    assert rnd.start(0.0) == [Ask(B(1), (r1, r2), PROMPT, 60.0, None)]
    assert rnd.step(ok(B(1), r1, "Paris"), 1.0) == []
    assert rnd.step(ok(B(1), r2, "Lyon"), 2.0) == [Close(B(1)), Ask(B(2), (r4,), PROMPT, 60.0, None)]
    assert rnd.wake_at() == 7.0
    # late and stray answers change nothing
    assert rnd.step(ok(B(1), r1, "Lyon"), 3.0) == []
    assert rnd.step(ok(B(2), r1, "Lyon"), 3.0) == []
    assert rnd.step(ok(B(99), r4, "Lyon"), 3.0) == []
    acts = rnd.step(ok(B(2), r4, "Paris"), 4.0)
    assert acts[:-1] == [Close(B(2)), rating(rnd, r1, 1.0, "Paris"), rating(rnd, r2, 0.0, "Lyon"),
                         rating(rnd, r4, 1.0, "Paris")]
    prov = done(acts).outcome.result.provenance
    assert prov.chosen == xkey(r1) and prov.tiebreakers == (xkey(r4),)
    assert [x.status for x in prov.respondents] == ["ok", "ok", "ok"]


def test_silent_past_its_patience_is_slow_and_replaced():
    # e2's card: 15.5 prompt tokens at 15.5/s + 32 tokens at 16/s = 3 s, x (1 + load 1) = 6 s, x factor 3 = 18 s
    r1, r2, r3, r4 = ref(1), ref(2, prompt_tps=15.5, gen_tps=16.0, load=1), ref(3), ref(4)
    rnd = QueryRound(setup([r1, r2, r3, r4]), 0.0)
    rnd.start(0.0)
    assert rnd.wake_at() == 18.0  # the slowest respondent's patience
    assert rnd.step(fail(B(1), r1, "error"), 1.0) == []
    assert rnd.step(Tick(), 17.9) == []
    # nothing usable: both failures are replaced by the next two experts
    assert rnd.step(Tick(), 18.0) == [Cancel(B(1), (r2.key,), "slow"), Close(B(1)),
                                      Ask(B(2), (r3, r4), PROMPT, 60.0, None)]
    assert rnd.answers[r2.key].status == "slow" and rnd.wake_at() == 23.0
    assert rnd.step(ok(B(1), r2, "Paris"), 19.0) == []  # too late
    assert rnd.step(ok(B(2), r3, "Paris"), 20.0) == []
    acts = rnd.step(ok(B(2), r4, "Paris"), 21.0)
    assert acts[:-1] == [Close(B(2)), rating(rnd, r1, 0.0, signal="failure"), rating(rnd, r2, 0.0, signal="failure"),
                         rating(rnd, r3, 1.0, "Paris"), rating(rnd, r4, 1.0, "Paris")]
    prov = done(acts).outcome.result.provenance
    assert [x.status for x in prov.respondents] == ["error", "slow", "ok", "ok"] and prov.chosen == xkey(r3)


def test_patience_is_at_most_half_the_deadline():
    r2 = ref(2, prompt_tps=15.5, gen_tps=16.0, load=1)  # 18 s, as above
    rnd = QueryRound(setup([r2], deadline_s=20.0), 100.0)
    rnd.start(100.0)
    assert rnd.wake_at() == 110.0


def test_deadline_with_nobody_answering():
    # a driver whose first tick comes at the deadline: the silent are timed out, not slow
    r1, r2, r3 = ref(1), ref(2), ref(3)
    rnd = QueryRound(setup([r1, r2, r3], deadline_s=30.0), 0.0)
    rnd.start(0.0)
    acts = rnd.step(Tick(), 30.0)
    # failures are rated 0 by design (evaluation.failure_scores), timeouts included
    assert acts[:-1] == [Cancel(B(1), (r1.key, r2.key), "timeout"), Close(B(1)),
                         rating(rnd, r1, 0.0, signal="failure"), rating(rnd, r2, 0.0, signal="failure")]
    assert isinstance(done(acts).outcome.error, DeadlineExceeded) and done(acts).outcome.result is None


def test_deadline_with_our_own_silent_experts_rates_nobody():
    r1, r2 = ref(1, at=ME), ref(2, at=ME)
    rnd = QueryRound(setup([r1, r2], deadline_s=30.0), 0.0)
    rnd.start(0.0)
    acts = rnd.step(Tick(), 30.0)
    assert acts[:-1] == [Cancel(B(1), (r1.key, r2.key), "timeout"), Close(B(1))]
    assert isinstance(done(acts).outcome.error, DeadlineExceeded)


def test_gone_respondent_is_forgotten():
    r1, r2, r3 = ref(1), ref(2), ref(3)
    rnd = QueryRound(setup([r1, r2, r3]), 0.0)
    rnd.start(0.0)
    assert rnd.step(Gone(B(1), (r2.key, r3.key)), 1.0) == [Forget(r2.key)]  # e3 was not asked
    assert rnd.answers[r2.key].status == "gone" and rnd.silent() == [r1.key]
    assert rnd.step(Gone(B(1), (r2.key,)), 1.5) == [] and rnd.step(Gone(B(7), (r1.key,)), 1.5) == []
    acts = rnd.step(ok(B(1), r1, "Paris"), 2.0)
    assert acts[:-1] == [Close(B(1)), rating(rnd, r2, 0.0, signal="failure")]
    prov = done(acts).outcome.result.provenance
    assert [x.status for x in prov.respondents] == ["ok", "gone"] and prov.chosen == xkey(r1)


def test_streaming_single_respondent():
    r1, r2 = ref(1), ref(2)
    rnd = QueryRound(setup([r1, r2], respondents=1, streaming=True), 0.0)
    streaming = wire.PromptBody(PROMPT.messages, 32, 0.0, stream=True)
    assert rnd.start(0.0) == [Ask(B(1), (r1,), streaming, 60.0, r1.key)]
    assert rnd.step(Chunk(B(1), r1.key, 0, "The capital "), 1.0) == [Stream("The capital ")]
    assert rnd.streams(B(1), r1.key, 1) and not rnd.streams(B(1), r1.key, 2)
    assert rnd.step(Chunk(B(1), r1.key, 2, "France "), 1.1) == []  # out of order
    assert rnd.step(Chunk(B(1), r1.key, 0, "The capital "), 1.2) == []  # a repeat
    assert rnd.step(Chunk(B(1), r2.key, 1, "x"), 1.3) == []  # not asked
    assert rnd.step(Chunk(B(1), r1.key, 1, "of "), 1.4) == [Stream("of ")]
    assert rnd.step(Tick(), 5.0) == []  # past its patience, but its text shows it is alive
    text = "The capital of France is Paris, a city on the Seine."
    acts = rnd.step(ok(B(1), r1, text), 6.0)
    assert acts[0] == Close(B(1)) and all(isinstance(a, Stream) for a in acts[1:-1])
    assert [a.text for a in acts[1:-1]] == list(pieces(text[len("The capital of "):]))
    out = done(acts).outcome
    assert out.result.text == text and not out.stream_mismatch
    assert "The capital of " + "".join(a.text for a in acts[1:-1]) == text
    assert not any(isinstance(a, Rate) for a in acts)  # one answer alone is not rated


def test_streaming_respondent_that_stalls_times_out():
    r1, r2 = ref(1), ref(2)
    rnd = QueryRound(setup([r1, r2], respondents=1, streaming=True, deadline_s=20.0), 0.0)
    rnd.start(0.0)
    assert rnd.step(Chunk(B(1), r1.key, 0, "Par"), 1.0) == [Stream("Par")]
    assert rnd.step(Tick(), rnd.wake_at()) == [] and rnd.wake_at() == 20.0
    acts = rnd.step(Tick(), 20.0)
    assert acts[:-1] == [Cancel(B(1), (r1.key,), "timeout"), Close(B(1)), rating(rnd, r1, 0.0, signal="failure")]
    assert isinstance(done(acts).outcome.error, DeadlineExceeded)


def test_this_nodes_own_expert_is_never_rated():
    mine, r2 = ref(1, at=ME), ref(2)
    rnd = QueryRound(setup([mine, r2]), 0.0)
    assert rnd.start(0.0) == [Ask(B(1), (mine, r2), PROMPT, 60.0, None)]
    rnd.step(ok(B(1), mine, "Paris"), 1.0)
    acts = rnd.step(ok(B(1), r2, "Paris"), 2.0)
    assert acts[:-1] == [Close(B(1)), rating(rnd, r2, 1.0, "Paris")]
    assert done(acts).outcome.result.provenance.respondents[0].score == 1.0


def test_unsure_single_answer_escalates():
    r1, r2, r3 = ref(1), ref(2), ref(3)
    rnd = QueryRound(setup([r1, r2, r3], policy=Fixed(escalate_below=0.6),
                           rules=RoundRules(default_respondents=1)), 0.0)
    assert rnd.start(0.0) == [Ask(B(1), (r1,), PROMPT, 60.0, None)]
    assert rnd.step(ok(B(1), r1, "Paris", 0.3), 1.0) == [Close(B(1)), Ask(B(2), (r2,), PROMPT, 60.0, None)]
    acts = rnd.step(ok(B(2), r2, "Paris", 0.9), 2.0)
    assert acts[:-1] == [Close(B(2)), rating(rnd, r1, 1.0, "Paris"), rating(rnd, r2, 1.0, "Paris")]
    prov = done(acts).outcome.result.provenance
    assert prov.escalated == Escalation("its confidence 0.30 is below 0.60", 0.3, 0.6, (xkey(r2),))
    assert prov.tiebreakers == ()


def test_sure_single_answer_does_not_escalate():
    r1, r2 = ref(1), ref(2)
    rnd = QueryRound(setup([r1, r2], policy=Fixed(escalate_below=0.6), rules=RoundRules(default_respondents=1)), 0.0)
    rnd.start(0.0)
    acts = rnd.step(ok(B(1), r1, "Paris", 0.8), 1.0)
    assert acts[0] == Close(B(1)) and len(acts) == 2
    assert done(acts).outcome.result.provenance.escalated is None


def judge_setup(**kw):
    r1, r2, j = ref(1), ref(2), ref(9)
    return (r1, r2, j), setup([r1, r2], judges=1, judge_pool=[r1, r2, j], **kw)


def test_judge_decides_between_differing_answers():
    (r1, r2, j), s = judge_setup()
    rnd = QueryRound(s, 0.0)
    rnd.start(0.0)
    assert rnd.step(ok(B(1), r1, "Paris"), 1.0) == []
    acts = rnd.step(ok(B(1), r2, "Lyon"), 50.0)
    order = random.Random(0).sample([0, 1], 2)  # the round's rng, untouched by the fixed policy
    texts = [["Paris", "Lyon"][i] for i in order]
    body = wire.PromptBody(tuple(wire.ChatMessage(r, c) for r, c in signals.judge_prompt(QUESTION, texts)), 16, 0.0)
    # no tie-break with judges asked for; the judges' batch ends with the round
    assert acts == [Close(B(1)), Ask(B(2), (j,), body, 60.0, None, traffic=False)]
    assert rnd.wake_at() == 60.0  # judges have no patience of their own
    letter = "AB"[texts.index("Lyon")]
    acts = rnd.step(ok(B(2), j, letter), 51.0)
    assert acts[:-1] == [Close(B(2)), rating(rnd, r1, 0.0, "Paris", "judge+agreement"),
                         rating(rnd, r2, 0.6667, "Lyon", "judge+agreement")]
    prov = done(acts).outcome.result.provenance
    assert prov.chosen == xkey(r2) and prov.judges == (JudgeReport(j.peer_str, "e9", "ok", 0.55, xkey(r2)),)
    assert prov.tiebreakers == ()


def test_silent_judge_times_out_at_the_deadline():
    (r1, r2, j), s = judge_setup()
    rnd = QueryRound(s, 0.0)
    rnd.start(0.0)
    rnd.step(ok(B(1), r1, "Paris"), 1.0)
    assert isinstance(rnd.step(ok(B(1), r2, "Lyon"), 2.0)[-1], Ask)
    assert rnd.step(Tick(), 59.9) == []
    acts = rnd.step(Tick(), 60.0)
    assert acts[:2] == [Cancel(B(2), (j.key,), "timeout"), Close(B(2))]
    out = done(acts).outcome
    assert out.result.text in ("Paris", "Lyon") and out.result.provenance.judges[0].status == "timeout"


def test_no_judge_asked_too_close_to_the_deadline():
    (r1, r2, j), s = judge_setup()
    rnd = QueryRound(s, 0.0)
    rnd.start(0.0)
    rnd.step(ok(B(1), r1, "Paris"), 1.0)
    acts = rnd.step(ok(B(1), r2, "Lyon"), 59.6)  # 0.4 s left: under MIN_ASK_S
    assert acts[0] == Close(B(1)) and not any(isinstance(a, Ask) for a in acts)
    assert done(acts).outcome.result.provenance.judges == ()


@pytest.mark.parametrize("kw, error", [
    (dict(respondents=17), BadQuery), (dict(respondents=-1), BadQuery),
    (dict(rules=RoundRules(default_respondents=0)), BadQuery),
    (dict(judges=17), BadQuery), (dict(judges=-1), BadQuery),
    (dict(candidates=[]), NoExpertAvailable),
    (dict(prompt=wire.PromptBody((), 32)), BadQuery),
    (dict(prompt=wire.PromptBody(PROMPT.messages, 0)), BadQuery),
    (dict(prompt=wire.PromptBody(PROMPT.messages, 32, 2.5)), BadQuery),
    (dict(prompt=wire.PromptBody((wire.ChatMessage("robot", "hi"),), 32)), BadQuery),
])
def test_bad_setup(kw, error):
    with pytest.raises(error):
        QueryRound(setup([ref(1), ref(2)], **kw), 0.0)


def test_knowledge_experts_on_one_model_are_two_voices_and_their_passages_are_provenance():
    # one model file, two knowledge bases: at temperature 0 both may be asked, and agreeing
    # answers count twice (copies of one model with one knowledge base would count once)
    def kref(i, kb):
        r = ref(i, sha="ab" * 32)
        card = wire.ModelCard(**{**r.card.__dict__, "knowledge": kb, "knowledge_passages": 3,
                                 "knowledge_sha256": hashlib.sha256(kb.encode()).hexdigest()})
        return ExpertRef(r.peer, card, 0.0)

    chem, geo, copy = kref(1, "chemistry"), kref(2, "geography"), ref(3, sha="ab" * 32)
    rnd = QueryRound(setup([chem, geo, copy], respondents=None), 0.0)
    (ask,) = rnd.start(0.0)
    assert ask.refs == (chem, geo)  # distinct voices; the bare copy shares neither's
    rnd.step(Reply(B(1), chem.key, "ok", "Paris", 1, "stop", None, sha("Paris"), 5, 5, "", ("fr-1", "fr-2")), 1.0)
    res = done(rnd.step(ok(B(1), geo, "Paris"), 2.0)).outcome.result
    reports = {r.expert_id: r for r in res.provenance.respondents}
    assert reports["e1"].passages == ("fr-1", "fr-2") and reports["e2"].passages == ()
    assert reports["e1"].score == reports["e2"].score == 1.0
    assert res.provenance.to_json()["respondents"][0]["passages"] == ["fr-1", "fr-2"]


# ------------------------------------- regressions (bugs these tests found)

def test_text_streamed_by_a_failed_respondent_is_not_forgotten():
    r1, r2 = ref(1), ref(2)
    rnd = QueryRound(setup([r1, r2], respondents=1, streaming=True), 0.0)
    seen = [a.text for a in rnd.start(0.0) if isinstance(a, Stream)]
    seen += [a.text for a in rnd.step(Chunk(B(1), r1.key, 0, "Lyo"), 1.0) if isinstance(a, Stream)]
    acts = rnd.step(Gone(B(1), (r1.key,)), 2.0)  # the streamer's node died: e2 is asked instead
    # the client already saw text: e2 does not stream (its chunks could not replace "Lyo")
    assert acts[:2] == [Forget(r1.key), Close(B(1))] and acts[2].stream_key is None
    assert not acts[2].prompt.stream
    acts = rnd.step(ok(B(2), r2, "Paris is the capital"), 3.0)
    seen += [a.text for a in acts if isinstance(a, Stream)]
    out = done(acts).outcome
    # the answer comes whole after the stale text, and the mismatch is reported
    assert "".join(seen) == "Lyo" + out.result.text and out.stream_mismatch


def test_first_batch_respects_max_experts():
    rnd = QueryRound(setup([ref(i) for i in range(1, 5)], respondents=3, rules=RoundRules(max_experts=2)), 0.0)
    assert len(rnd.start(0.0)[0].refs) <= 2


def test_later_batch_deadline_never_passes_the_rounds():
    r1, r2 = ref(1), ref(2)
    rnd = QueryRound(setup([r1, r2], respondents=1), 0.1)  # deadline 60.1
    rnd.start(0.1)
    (ask,) = [a for a in rnd.step(fail(B(1), r1, "error"), 8.2) if isinstance(a, Ask)]
    assert ask.deadline <= rnd.deadline  # 8.2 + (60.1 - 8.2) == 60.10000000000001


def test_an_ask_that_streams_nothing_asks_for_no_chunks():
    r1, r2 = ref(1), ref(2)
    rnd = QueryRound(setup([r1, r2], streaming=True, policy=Fixed(escalate_below=0.6),
                           rules=RoundRules(default_respondents=1)), 0.0)
    assert rnd.start(0.0)[0].prompt.stream
    ask = rnd.step(ok(B(1), r1, "Paris", 0.3), 1.0)[-1]  # no chunk came: the escalation is asked
    assert ask.stream_key is None and not ask.prompt.stream


# ------------------------------------------- standing: waiting and voting

def standing_of(table):
    return lambda peer_id, domain: table.get(peer_id, (0.5, 0.0))


def test_a_better_standing_silent_respondent_is_waited_for_past_its_patience():
    # e1 (standing 0.3) answers fast; e2 (0.8) is still working at its patience (5 s): it is
    # waited for one more patience, and its answer, not the fast one, is delivered
    r1, r2 = ref(1), ref(2)
    rnd = QueryRound(setup([r1, r2], standing=standing_of({r1.peer: (0.3, 6.0), r2.peer: (0.8, 6.0)})), 0.0)
    rnd.start(0.0)
    assert rnd.step(ok(B(1), r1, "Lyon"), 0.1) == [] and rnd.wake_at() == 5.0
    assert rnd.step(Tick(), 5.0) == [] and rnd.silent() == [r2.key] and rnd.wake_at() == 10.0
    acts = rnd.step(ok(B(1), r2, "Paris"), 9.0)
    res = done(acts).outcome.result
    assert res.text == "Paris" and res.provenance.chosen == xkey(r2)
    assert "vote weight by standing" in res.provenance.reason
    # the ratings stay the head count's (two answers that differ: 0 each), standing rates nobody
    assert [a.rating.score for a in acts if isinstance(a, Rate)] == [0.0, 0.0]


def test_the_wait_for_a_better_standing_respondent_ends_after_one_more_patience():
    # (its query or answer may have been lost: the round does not hold on to the deadline)
    r1, r2 = ref(1), ref(2)
    rnd = QueryRound(setup([r1, r2], standing=standing_of({r1.peer: (0.3, 6.0), r2.peer: (0.8, 6.0)})), 0.0)
    rnd.start(0.0)
    rnd.step(ok(B(1), r1, "Lyon"), 0.1)
    assert rnd.step(Tick(), 5.0) == []
    acts = rnd.step(Tick(), 10.0)
    assert acts[:2] == [Cancel(B(1), (r2.key,), "slow"), Close(B(1))]
    assert done(acts).outcome.result.text == "Lyon"


def test_no_wait_for_a_better_standing_respondent_that_would_leave_no_time():
    # deadline 10 s, patience 5 s: one more patience would end at the deadline, leaving no
    # time for a tie-break or a replacement: the silent one is slow at once
    r1, r2 = ref(1), ref(2)
    rnd = QueryRound(setup([r1, r2], deadline_s=10.0,
                           standing=standing_of({r1.peer: (0.3, 6.0), r2.peer: (0.8, 6.0)})), 0.0)
    rnd.start(0.0)
    rnd.step(ok(B(1), r1, "Lyon"), 0.1)
    assert rnd.step(Tick(), 5.0)[:2] == [Cancel(B(1), (r2.key,), "slow"), Close(B(1))]


def test_a_silent_respondent_without_better_standing_is_slow():
    r1, r2 = ref(1), ref(2)
    rnd = QueryRound(setup([r1, r2], standing=standing_of({r1.peer: (0.8, 6.0), r2.peer: (0.8, 6.0)})), 0.0)
    rnd.start(0.0)
    rnd.step(ok(B(1), r1, "Paris"), 0.1)
    acts = rnd.step(Tick(), 5.0)
    assert acts[:2] == [Cancel(B(1), (r2.key,), "slow"), Close(B(1))]
    assert rnd.answers[r2.key].status == "slow"


def test_nobody_answered_the_silent_are_replaced_whatever_their_standing():
    r1, r2, r3 = ref(1), ref(2), ref(3)
    rnd = QueryRound(setup([r1, r2, r3], standing=standing_of({r1.peer: (0.9, 9.0)})), 0.0)
    rnd.start(0.0)
    assert rnd.step(Tick(), 5.0)[:3] == [Cancel(B(1), (r1.key, r2.key), "slow"), Close(B(1)),
                                         Ask(B(2), (r3,), PROMPT, 60.0, None)]


def test_with_nobody_to_replace_it_a_silent_respondent_is_waited_for_to_the_deadline():
    # the only expert: giving up at its patience (5 s) would end the round with nothing while
    # 55 s of the deadline are left; its answer at 7 s is delivered
    r1 = ref(1)
    book = LatencyBook()
    rnd = QueryRound(setup([r1], latency=book), 0.0)
    assert rnd.start(0.0) == [Ask(B(1), (r1,), PROMPT, 60.0, None)]
    assert rnd.wake_at() == 5.0
    assert rnd.step(Tick(), 5.0) == [] and rnd.silent() == [r1.key] and rnd.wake_at() == 60.0
    acts = rnd.step(ok(B(1), r1, "Paris"), 7.0)
    assert acts[:-1] == [Close(B(1))]  # a single answer: no agreement to rate
    res = done(acts).outcome.result
    assert res.text == "Paris" and [x.status for x in res.provenance.respondents] == ["ok"]
    assert book.stats(r1.key)[0] == pytest.approx(7.0 / 0.475)  # its real time, not a give-up


def test_with_the_budget_spent_the_silent_are_waited_for_and_time_out_at_the_deadline():
    r1, r2 = ref(1), ref(2)
    rnd = QueryRound(setup([r1, r2], rules=RoundRules(default_respondents=1, max_experts=1)), 0.0)
    rnd.start(0.0)
    assert rnd.step(Tick(), 5.0) == []
    acts = rnd.step(Tick(), 60.0)
    assert acts[:2] == [Cancel(B(1), (r1.key,), "timeout"), Close(B(1))]
    assert isinstance(done(acts).outcome.error, DeadlineExceeded)


def test_a_banned_expert_is_no_replacement():
    # e2 is shut out by the reputation policy: e1, silent past its patience, is waited for
    r1, r2 = ref(1), ref(2)
    table = {r1.peer: (0.9, 20.0), r2.peer: (0.02, 40.0)}
    pol = ReputationPolicy()
    assert pol.eligible([r2], "general", standing_of(table)) == []
    rnd = QueryRound(setup([r1, r2], policy=pol, respondents=1, standing=standing_of(table)), 0.0)
    assert rnd.start(0.0)[0].refs == (r1,)
    assert rnd.step(Tick(), 5.0) == []
    assert done(rnd.step(ok(B(1), r1, "Paris"), 9.0)).outcome.result.text == "Paris"


def test_agreement_counts_by_standing_not_head_count():
    # two weak experts agree on a wrong answer; the one with standing differs: its answer is
    # delivered, and the ratings stay the head count's
    r1, r2, r3 = ref(1), ref(2), ref(3)
    table = {r1.peer: (0.2, 9.0), r2.peer: (0.4, 9.0), r3.peer: (0.9, 9.0)}
    rnd = QueryRound(setup([r1, r2, r3], respondents=3, standing=standing_of(table)), 0.0)
    rnd.start(0.0)
    rnd.step(ok(B(1), r1, "Lyon"), 0.1)
    rnd.step(ok(B(1), r2, "Lyon."), 0.2)
    acts = rnd.step(ok(B(1), r3, "Paris"), 1.0)
    res = done(acts).outcome.result
    assert res.text == "Paris" and res.provenance.chosen == xkey(r3)
    assert "head count: majority answer (2 of 3 agree)" in res.provenance.reason
    assert [a.rating.score for a in acts if isinstance(a, Rate)] == [1.0, 1.0, 0.0]


def test_a_majority_delivers_its_best_standing_member_not_its_fastest():
    r1, r2 = ref(1), ref(2)
    rnd = QueryRound(setup([r1, r2], standing=standing_of({r1.peer: (0.5, 9.0), r2.peer: (0.7, 9.0)})), 0.0)
    rnd.start(0.0)
    rnd.step(ok(B(1), r1, "Paris."), 0.1)
    res = done(rnd.step(ok(B(1), r2, "The answer is Paris"), 2.0)).outcome.result
    assert res.provenance.chosen == xkey(r2) and res.text == "The answer is Paris"


def test_equal_standing_keeps_the_head_count():
    # nobody known yet: the majority's fastest, as before standing existed
    r1, r2, r3 = ref(1), ref(2), ref(3)
    rnd = QueryRound(setup([r1, r2, r3], respondents=3), 0.0)
    rnd.start(0.0)
    rnd.step(ok(B(1), r1, "Lyon"), 0.1)
    rnd.step(ok(B(1), r2, "Paris"), 0.2)
    res = done(rnd.step(ok(B(1), r3, "Paris"), 0.3)).outcome.result
    assert res.provenance.chosen == xkey(r2) and res.provenance.reason == "majority answer (2 of 3 agree), fastest of them"


def test_weighted_choice_counts_copies_once():
    c = [Candidate("p1", "e1", "ok", "Lyon", 10), Candidate("p2", "e2", "ok", "Lyon", 20),
         Candidate("p3", "e3", "ok", "Paris", 30), Candidate("p4", "e4", "error")]
    w = [vote_weight(0.6), vote_weight(0.6), vote_weight(0.7), 1.0]
    assert w[:3] == [pytest.approx(math.log(16)), pytest.approx(math.log(16)), pytest.approx(math.log(1 + 70 / 3))]
    assert weighted_choice(c, w)[0] == 0  # 5.55 against 3.19
    assert weighted_choice(c, w, ["v", "v", None, None])[0] == 2  # one voice: 2.77 against 3.19
    assert weighted_choice(c[3:], [1.0]) is None
    # two unknown experts that agree outweigh one of 0.9, not one of 0.96
    assert 2 * vote_weight(0.5) > vote_weight(0.9) and 2 * vote_weight(0.5) < vote_weight(0.96)
    assert vote_weight(1.0) == pytest.approx(math.log(991)) and vote_weight(-1) == pytest.approx(math.log1p(10 / 99))


def test_patience_learns_from_observed_latency():
    # e2's card: 0.475 s for this prompt; it takes 3 s (6.3 x): the next round waits longer
    r1, r2 = ref(1), ref(2)
    book = LatencyBook()
    assert card_seconds(r2.card, PROMPT) == pytest.approx(0.475)
    assert patience([r2], PROMPT, 60.0, 3.0, 0.5, book) == pytest.approx(1.425)
    rnd = QueryRound(setup([r1, r2], latency=book), 0.0)
    rnd.start(0.0)
    rnd.step(ok(B(1), r1, "Paris"), 0.2)
    done(rnd.step(ok(B(1), r2, "Paris"), 3.0))
    mean, dev, n = book.stats(r2.key)
    assert (mean, n) == (pytest.approx(3.0 / 0.475), 1) and dev == pytest.approx(mean / 2)
    assert book.scale(r2.key) == pytest.approx(2 * mean)  # mean + 2 x dev
    assert patience([r2], PROMPT, 60.0, 3.0, 0.5, book) == pytest.approx(3 * 0.475 * 2 * mean)
    assert patience([r1, r2], PROMPT, 20.0, 3.0, 0.5, book) == 10.0  # at most half the deadline
    # an expert faster than its card never shortens the card's patience
    book.observe(r1.key, 0.01, 0.475)
    assert book.scale(r1.key) == 1.0


def test_a_respondent_given_up_on_counts_twice_its_wait():
    r1, r2 = ref(1), ref(2)
    book = LatencyBook()
    rnd = QueryRound(setup([r1, r2], latency=book), 0.0)
    rnd.start(0.0)
    rnd.step(ok(B(1), r1, "Paris"), 0.1)
    rnd.step(Tick(), 5.0)  # e2 slow after 5 s: at least that long, counted as 10 s
    assert book.stats(r2.key)[0] == pytest.approx(10.0 / 0.475)
    assert patience([r2], PROMPT, 60.0, 3.0, 5.0, book) == 30.0


def test_latency_book_is_bounded_and_ignores_nonsense():
    book = LatencyBook(capacity=2)
    for i in range(3):
        book.observe(("p", f"e{i}"), 1.0, 1.0)
    assert len(book) == 2 and book.stats(("p", "e0")) is None
    book.observe(("p", "x"), -1.0, 1.0)
    book.observe(("p", "x"), 1.0, 0.0)
    assert book.stats(("p", "x")) is None
    with pytest.raises(ValueError):
        LatencyBook(capacity=0)


def test_still_wanted():
    table = {b"a": (0.9, 5.0), b"b": (0.5, 0.0), b"c": (0.2, 5.0)}
    st_ = standing_of(table)
    assert still_wanted([(b"a", "x"), (b"b", "x")], [(b"c", "x")], "d", st_) == {(b"a", "x"), (b"b", "x")}
    assert still_wanted([(b"b", "x"), (b"c", "x")], [(b"a", "x")], "d", st_) == set()
    assert still_wanted([(b"a", "x")], [], "d", st_) == set()


# ---------------------------------------------------------- seeded properties

TEXTS = ("Paris", "Lyon", "Paris.", "The answer is Paris", "Marseille, I think")
JUDGE_TEXTS = ("A", "B", "C", "The best answer is B", "no idea")
STATUSES = ("ok",) * 8 + ("busy", "error", "rejected", "invalid", "blank")
KINDS = ("reply",) * 6 + ("chunk", "chunk", "gone", "dup", "unknown", "stranger", "tick")

POLICIES = ("fixed", "fixed-escalate", "reputation", "reputation-escalate", "ucb", "random")


def random_case(seed: int):
    """A random round: (setup, start time, events). Events are (time step, kind,
    two picks, status, text pick, confidence), resolved as the round goes."""
    rng = random.Random(seed)
    rich = rng.random() < 0.5  # many experts, mostly answering: room for tie-breaks and escalations
    o = dict(respondents=rng.choice((None, None, None, 1, 2, 3, 4)), temperature=rng.choice((0.0, 0.7)),
             streaming=rng.random() < 0.4, judges=rng.choice((0, 0, 1, 2)), probe=rng.random() < 0.2,
             policy=rng.choice(POLICIES), me_expert=rng.random() < 0.3)
    if o["policy"].endswith("escalate") and rng.random() < 0.7 or rich and rng.random() < 0.5:
        o.update(respondents=None, judges=0, probe=False)  # what escalations and tie-breaks need
    cands = []
    for i in range(1, rng.randint(5 if rich else 1, 8) + 1):  # some share a peer, some a model file
        p = rng.randint(1, 6)
        model = rng.choice((f"{i}",) if rich else ("", "a", "b", f"{i}")) * 64
        card = wire.ModelCard(f"e{i}", "m", model, "q4", 2048, ("general",), rng.uniform(5, 200),
                              rng.uniform(2, 100), rng.uniform(0, 5), rng.randint(0, 3), 2)
        cands.append(ExpertRef(ME if o["me_expert"] and p == 1 else peer(p), card, 0.0))
    table = {p: (rng.random(), rng.uniform(0, 10)) for p in [ME] + [peer(i) for i in range(1, 7)]}
    policy = {"fixed": Fixed(), "fixed-escalate": Fixed(escalate_below=0.6), "ucb": UcbCostPolicy(),
              "random": RandomPolicy(), "reputation": ReputationPolicy(explore_share=0.3),
              "reputation-escalate": ReputationPolicy(escalate_below=0.6)}[o["policy"]]
    rules = RoundRules(default_respondents=rng.choice((1, 1, 2, 2, 3)), tiebreak=rng.choice((0, 1, 1, 2)),
                       retry_rounds=rng.randint(0, 2), max_experts=16 if rich else rng.choice((1, 2, 3, 4, 16)),
                       patience_floor_s=5.0 if rich else rng.choice((0.5, 2.0, 5.0)))
    judges = 0 if o["probe"] else o["judges"]  # as the coordinator does: a probe is graded, never judged
    s = setup(cands, prompt=wire.PromptBody(PROMPT.messages, 32, o["temperature"]),
              deadline_s=rng.choice((3.0, 10.0, 30.0, 60.0)) * rng.uniform(1, 1.1), policy=policy, rules=rules,
              standing=lambda p, d: table.get(p, (0.5, 0.0)), rng=random.Random(seed),
              respondents=o["respondents"], judges=judges, streaming=o["streaming"],
              probe=signals.Probe(QUESTION, "Paris") if o["probe"] else None,
              judge_pool=cands + [ref(i) for i in (7, 8)] if judges else ())
    steps = (0.0, 0.01, 0.1, 0.5) + ((0.5,) if rich else (1.0, 4.0))  # seconds between events
    script = [(rng.choice(steps), rng.choice(KINDS), rng.randrange(8), rng.randrange(16),
               rng.choice(("ok",) * 5 + ("error",) if rich else STATUSES), rng.randrange(5),
               rng.choice((None, 0.2, rng.random())))
              for _ in range(rng.randint(3, 40))]
    start = rng.choice((0.0, rng.uniform(0, 1), rng.uniform(0, 1000)))
    s.latency = LatencyBook() if rng.random() < 0.5 else None  # learned patience, or the cards alone
    return s, start, script


class Drive:
    """Drives a round as the coordinator does, keeping its own account of what
    was asked and answered, and checks every step against it."""

    def __init__(self, s: RoundSetup, now0: float) -> None:
        self.s, self.now = s, now0
        self.rnd = QueryRound(s, now0)
        self.log: list = []  # (time, action)
        self.steps: list = []  # the actions of each step
        self.asks: dict = {}  # batch id -> Ask
        self.closed: set = set()
        self.settled: set = set()  # (batch id, key) answered, cancelled or gone
        self.taken: dict = {}  # key -> the Reply it answered with
        self.planned: dict = {}  # (batch id, key) -> the text it will send
        self.next_chunk: dict = {}  # batch id -> index
        self.chunk_streams: list = []  # batch ids whose chunks streamed
        self.last_reply = None
        self.record(self.rnd.start(now0))

    def record(self, acts) -> list:
        self.steps.append(acts)
        for a in acts:
            self.log.append((self.now, a))
            if isinstance(a, Ask):
                assert a.batch_id not in self.asks and len({r.key for r in a.refs}) == len(a.refs)
                self.asks[a.batch_id] = a
            elif isinstance(a, (Cancel, Close)):
                assert a.batch_id in self.asks and a.batch_id not in self.closed
                if isinstance(a, Close):
                    self.closed.add(a.batch_id)
                else:
                    keys = {r.key for r in self.asks[a.batch_id].refs}
                    assert set(a.keys) <= keys and not any((a.batch_id, k) in self.settled for k in a.keys)
                    self.settled.update((a.batch_id, k) for k in a.keys)
        return acts

    def step(self, event, expect=None) -> list:
        acts = self.record(self.rnd.step(event, self.now))
        if expect is not None:
            assert acts == expect, (event, acts, expect)
        return acts

    def tick_until(self, t: float) -> None:
        while not self.rnd.finished and self.rnd.wake_at() <= t:
            wake = self.rnd.wake_at()
            assert wake >= self.now  # never a timer in the past
            self.now = wake
            self.step(Tick())

    def current(self) -> Ask:
        return list(self.asks.values())[-1]

    def text(self, bid: bytes, key, i: int) -> str:
        texts = TEXTS if self.asks[bid].traffic else JUDGE_TEXTS
        i += sum(b == bid for b, _ in self.planned)  # the first two to answer differ unless i says otherwise
        return self.planned.setdefault((bid, key), texts[i % len(texts)])

    def event(self, kind, a, b, status, i, conf) -> None:
        ask = self.current()
        bid = ask.batch_id
        if kind == "reply":
            if a == 7:  # now and then an answer to an earlier batch
                bid = list(self.asks)[b % len(self.asks)]
            key = self.asks[bid].refs[b % len(self.asks[bid].refs)].key
            text = "  " if status == "blank" else self.text(bid, key, i) if status == "ok" else ""
            r = Reply(bid, key, "ok" if status == "blank" else status, text, 3, "stop",
                      conf if status == "ok" else None, sha(text), 7, 9, "why" if status == "rejected" else "")
            self.deliver(r)
        elif kind == "dup" and self.last_reply is not None:
            self.step(self.last_reply, expect=[])
        elif kind == "unknown":
            self.step(Reply(b"\xff" * 16, ask.refs[0].key, "ok", "Paris"), expect=[])
        elif kind == "stranger":
            self.step(Reply(bid, (peer(100 + b), "e1"), "ok", "Paris"), expect=[])
        elif kind == "tick":
            self.step(Tick(), expect=[])
        elif kind == "chunk":
            key = ask.stream_key if ask.stream_key and a < 6 else ask.refs[b % len(ask.refs)].key
            index = self.next_chunk.get(bid, 0) if a < 5 else b % 4
            streams = (bid not in self.closed and key == ask.stream_key and (bid, key) not in self.settled
                       and index == self.next_chunk.get(bid, 0))
            piece = self.text(bid, key, i)[4 * index:4 * index + 4]
            assert self.rnd.streams(bid, key, index) == streams
            self.step(Chunk(bid, key, index, piece), expect=[Stream(piece)] if streams and piece else [])
            if streams:
                self.next_chunk[bid] = index + 1
                if piece:
                    self.chunk_streams.append(bid)
        elif kind == "gone":
            keys = tuple(dict.fromkeys((ask.refs[a % len(ask.refs)].key, ask.refs[b % len(ask.refs)].key)))
            fresh = [k for k in keys if (bid, k) not in self.settled]  # (the driver never repeats a key)
            acts = self.step(Gone(bid, keys))
            self.settled.update((bid, k) for k in fresh)
            assert acts[:len(fresh)] == [Forget(k) for k in fresh]  # then the batch ends if nobody is left
            assert bool(acts[len(fresh):]) == all((bid, r.key) in self.settled for r in ask.refs)

    def deliver(self, r: Reply) -> None:
        fresh = r.batch_id not in self.closed and (r.batch_id, r.key) not in self.settled
        assert self.rnd.waits_for(r.batch_id, r.key) == fresh
        acts = self.step(r, expect=None if fresh else [])
        self.last_reply = r
        if fresh:
            self.settled.add((r.batch_id, r.key))
            if self.asks[r.batch_id].traffic:
                self.taken[r.key] = r
            assert bool(acts) == all((r.batch_id, x.key) in self.settled for x in self.asks[r.batch_id].refs)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2**64))
def test_random_rounds_keep_their_promises(seed):
    s, now0, script = random_case(seed)
    d = Drive(s, now0)
    rnd, end = d.rnd, now0 + s.deadline_s
    for dt, *ev in script:
        t = d.now + dt
        d.tick_until(t)
        if rnd.finished:
            break
        d.now = t
        d.event(*ev)
    for _ in range(100):  # nobody else answers: the timers end the round
        d.tick_until(rnd.wake_at() or d.now)
    assert rnd.finished and rnd.wake_at() is None
    assert rnd.step(Reply(d.current().batch_id, d.current().refs[0].key, "ok", "Paris"), d.now) == []

    actions = [a for _, a in d.log]
    dones = [(t, a) for t, a in d.log if isinstance(a, Done)]
    assert len(dones) == 1 and actions[-1] is dones[0][1] and dones[0][0] <= end
    outcome = dones[0][1].outcome
    assert outcome is rnd.outcome and (outcome.result is None) != (outcome.error is None)
    # every batch ends, once, by the round's deadline; judges only when asked for
    assert d.closed == set(d.asks)
    assert all(a.deadline <= rnd.deadline for a in d.asks.values())
    # only a streaming respondent is asked for chunks, and judges never stream
    assert all((a.stream_key is None) != a.prompt.stream and (a.stream_key is None or a.traffic)
               for a in d.asks.values())
    firsts, *later = d.asks.values()
    asked = [r for a in d.asks.values() if a.traffic for r in a.refs]
    judges = [a for a in d.asks.values() if not a.traffic]
    assert len({r.key for r in asked}) == len(asked)  # nobody is asked twice
    if len(firsts.refs) <= s.rules.max_experts:
        assert len(asked) <= s.rules.max_experts
    else:  # (test_first_batch_respects_max_experts)
        assert not [a for a in later if a.traffic]
    assert len(judges) <= 1 and (not judges or s.judges and s.probe is None)
    for a in judges:
        assert a.prompt.temperature == 0 and a.prompt.max_tokens == s.rules.judge_max_tokens
        assert not {r.peer for r in a.refs} & {r.peer for r in asked} and 1 <= len(a.refs) <= s.judges
    # ratings: once each, only respondents asked, never this node, all at the end
    rates = [a.rating for a in actions if isinstance(a, Rate)]
    keys = [(r.respondent, r.expert_id) for r in rates]
    assert len(set(keys)) == len(keys) and set(keys) <= {r.key for r in asked}
    assert all(r.respondent != s.me and 0 <= r.score <= 1 for r in rates)
    for r in rates:
        r.validate()
    final = next(acts for acts in reversed(d.steps) if acts)  # the step that ended the round
    assert final[-1] is dones[0][1] and sum(isinstance(a, Rate) for a in final) == len(rates)
    # the delivered answer is the chosen expert's own
    streamed = "".join(a.text for a in actions if isinstance(a, Stream))
    if outcome.result is not None:
        chosen = outcome.result.provenance.chosen
        (key,) = [r.key for r in asked if xkey(r) == chosen]
        assert outcome.result.text == d.taken[key].text and outcome.result.text.strip()
        assert outcome.result.query_id == firsts.batch_id.hex()
        last_stream = [b for b, a in d.asks.items() if a.stream_key][-1:]
        if s.streaming and set(d.chunk_streams) <= set(last_stream):  # (test_text_streamed_by_a_failed...)
            assert streamed == outcome.result.text or outcome.stream_mismatch
    else:
        assert isinstance(outcome.error, QueryError)
    if not s.streaming:
        assert not streamed and all(a.stream_key is None for a in d.asks.values())
