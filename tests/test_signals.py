"""Evaluation signals as pure functions: closed-form agreement, signal
weights, probe grading, judge prompts and their parsing, vote weighting, the
feedback book, and how the signals combine into one rating per answer."""

import random

import pytest

from p2pnet.api.openai_schema import query_error_http
from p2pnet.experts import signals
from p2pnet.experts.evaluation import (
    AgreementEvaluator, Candidate, Evaluation, SignalWeights, agreement, by_voice, combine, short_answer,
)
from p2pnet.query import FeedbackRepeated, UnknownQuery


@pytest.mark.parametrize("text, short", [
    ("Paris.", "paris"), ("The answer is 4.", "4"), ("2 + 2 = 4", "4"),
    ("The answer to this classic math problem is 4.", "4"), ("It is 1,000.", "1000"), ("4.50", "4.5"),
    ("The capital of France is Paris, a city on the Seine.", None), ("", None),
])
def test_short_answer(text, short):
    assert short_answer(text) == short


def test_agreement_is_exact_on_closed_form_answers():
    assert agreement("Paris.", "The capital of France is Paris, a lovely city on the Seine.") == 1.0
    assert agreement("Lyon", "The capital of France is Paris, a lovely city on the Seine.") == 0.0
    assert agreement("The answer is 4.", "2+2 = 4") == 1.0
    assert agreement("4", "14") == 0.0
    free = agreement("The capital of France is Paris.", "Lyon is the capital of France.")
    assert 0.0 < free < 1.0  # free text: token-set similarity


def test_agreement_evaluator_uses_short_answers():
    cands = [Candidate("p1", "e", "ok", "4"), Candidate("p2", "e", "ok", "The answer is 4."),
             Candidate("p3", "e", "ok", "It is 5."), Candidate("p4", "e", "timeout")]
    ev = AgreementEvaluator().evaluate(cands)
    assert ev.scores == (1.0, 1.0, 0.0, 0.0)  # the majority scores 1, the odd one out 0
    assert ev.chosen in (0, 1) and not ev.undecided


def test_agreement_evaluator_without_a_majority_is_undecided():
    ev = AgreementEvaluator()
    two = ev.evaluate([Candidate("p1", "e", "ok", "4", latency_ms=30), Candidate("p2", "e", "ok", "5", latency_ms=10)])
    assert two.undecided and two.scores == (0.0, 0.0) and two.chosen == 1  # a tie: fastest, both unproven
    three = ev.evaluate([Candidate(f"p{i}", "e", "ok", str(i)) for i in range(3)])
    assert three.undecided and three.scores == (0.0, 0.0, 0.0)
    even = ev.evaluate([Candidate("p1", "e", "ok", "4"), Candidate("p2", "e", "ok", "4"),
                        Candidate("p3", "e", "ok", "5"), Candidate("p4", "e", "ok", "5")])
    assert even.undecided and even.scores == (0.3333,) * 4  # 2 against 2 is no majority
    # the tie broken by a third opinion: the majority scores 1, the other 0
    broken = ev.evaluate([Candidate("p1", "e", "ok", "4"), Candidate("p2", "e", "ok", "5"),
                          Candidate("p3", "e", "ok", "The answer is 5.")])
    assert not broken.undecided and broken.scores == (0.0, 1.0, 1.0) and broken.chosen in (1, 2)
    one = ev.evaluate([Candidate("p1", "e", "ok", "4"), Candidate("p2", "e", "busy")])
    assert not one.undecided and one.scores == (None, None) and one.chosen == 0


def test_copies_of_one_answer_count_once():
    ev = AgreementEvaluator()
    cands = [Candidate("p1", "e", "ok", "32", latency_ms=20), Candidate("p2", "e", "ok", "32", latency_ms=10),
             Candidate("p3", "e", "ok", "42", latency_ms=30), Candidate("p4", "e", "timeout")]
    # counted as four answers, the copies are a majority that rates "42" wrong
    assert ev.evaluate(cands).scores == (1.0, 1.0, 0.0, 0.0)
    # as one voice, "32" against "42" is a tie: both unproven, the failure still 0
    voiced = by_voice(ev, cands, [("m", "32"), ("m", "32"), ("n", "42"), None])
    assert voiced.undecided and voiced.scores == (0.0, 0.0, 0.0, 0.0)
    assert voiced.chosen == 1 and "1 copy of the same model's same answer counted once" in voiced.reason
    # a third, independent answer decides; every copy gets its voice's score
    decided = by_voice(ev, cands + [Candidate("p5", "e", "ok", "It is 42.")],
                       [("m", "32"), ("m", "32"), ("n", "42"), None, None])
    assert not decided.undecided and decided.scores == (0.0, 0.0, 1.0, 0.0, 1.0) and decided.chosen in (2, 4)
    # copies alone are one answer: delivered, not rated
    alone = by_voice(ev, cands[:2], [("m", "32"), ("m", "32")])
    assert alone.scores == (None, None) and alone.chosen == 1 and not alone.undecided
    # no copies: the evaluator's own verdict, unchanged
    assert by_voice(ev, cands, [None] * 4) == ev.evaluate(cands)


def test_signal_weights_combine():
    w = SignalWeights(agreement=1.0, judge=3.0)
    assert combine({"agreement": 1.0, "judge": 0.0}, w) == (0.25, "judge+agreement")
    assert combine({"agreement": 0.6}, w) == (0.6, "agreement")
    assert combine({"probe": 0.0, "agreement": 1.0, "judge": 1.0}, w) == (0.0, "probe")
    assert combine({"judge": 1.0}, SignalWeights(judge=0.0)) is None
    assert SignalWeights.from_mapping({"judge": 4}) == SignalWeights(judge=4.0)
    with pytest.raises(ValueError):
        SignalWeights(agreement=-1.0)
    with pytest.raises(ValueError):
        SignalWeights.from_mapping({"vibes": 1.0})


def test_probe_grading_is_exact():
    probe = signals.Probe("What is the capital of France?", "Paris")
    assert probe.grade("The capital of France is Paris.") == 1.0
    assert probe.grade("paris") == 1.0
    assert probe.grade("Lyon is the capital of France.") == 0.0
    assert probe.grade("Parisian food is good.") == 0.0
    four = signals.Probe("What is 2+2?", "4")
    assert four.grade("2 + 2 = 4") == 1.0 and four.grade("It is 14.") == 0.0


def test_probe_set_draws_known_and_generated_questions():
    probes = signals.ProbeSet.builtin()
    rng = random.Random(3)
    drawn = [probes.draw(rng) for _ in range(40)]
    assert any(p in probes.probes for p in drawn) and any(p not in probes.probes for p in drawn)
    for p in drawn:
        if p not in probes.probes:  # "What is a + b?"
            a, b = (int(x) for x in p.question[len("What is "):-1].split(" + "))
            assert p.answer == str(a + b)


@pytest.mark.parametrize("reply, pick", [
    ("B", 1), ("B.", 1), ("**B**", 1), ("(C)", 2), ("Answer B", 1), ("Answer: B", 1),
    ("The best answer is B because it names Paris.", 1), ("Answer A is wrong; the best is B.", 1),
    ("The best answer is **A**.", 0), ("I pick a short one: C", 2),
    ("A and B are both fine.", None), ("D", None), ("b", None), ("", None), ("I cannot decide.", None),
])
def test_parse_pick(reply, pick):
    assert signals.parse_pick(reply, 3) == pick


def test_judge_prompt_hides_authors_and_labels_answers():
    msgs = signals.judge_prompt("What is 2+2?", ["4", "five"])
    assert msgs[0][0] == "system" and msgs[1][0] == "user"
    assert "Answer A:\n4" in msgs[1][1] and "Answer B:\nfive" in msgs[1][1]
    with pytest.raises(ValueError):
        signals.judge_prompt("q", ["only one"])


def test_votes_are_weighted_by_standing():
    strong, weak, newcomer = signals.judge_weight(0.9, 100), signals.judge_weight(0.1, 100), signals.judge_weight(0.5, 0)
    assert strong > newcomer > weak > 0
    scores = signals.tally([(3, strong), (5, weak), (None, newcomer)], [3, 5])
    assert scores == {3: round(strong / (strong + weak), 4), 5: round(weak / (strong + weak), 4)}
    assert signals.tally([(None, 1.0)], [0, 1]) is None


def test_apply_signals_judges_can_overturn_agreement():
    cands = [Candidate("p1", "e", "ok", "Lyon.", latency_ms=1), Candidate("p2", "e", "ok", "Paris.", latency_ms=9),
             Candidate("p3", "e", "error")]
    ev = Evaluation(0, (0.0, 0.0, 0.0), "agreement")
    out, rated, per = signals.apply_signals(cands, ev, SignalWeights(), judge_scores={0: 0.2, 1: 0.8})
    assert out.chosen == 1
    assert rated[1] == (round(2 * 0.8 / 3, 4), "judge+agreement") and rated[2] == (0.0, "failure")
    assert per[1] == {"agreement": 0.0, "judge": 0.8}


def test_apply_signals_probe_grades_alone():
    probe = signals.Probe("What is the capital of France?", "Paris")
    cands = [Candidate("p1", "e", "ok", "Lyon."), Candidate("p2", "e", "ok", "It is Paris."),
             Candidate("p3", "e", "busy")]
    out, rated, _ = signals.apply_signals(cands, Evaluation(0, (0.0, 0.0, None), "x"), SignalWeights(), probe=probe)
    assert rated == [(0.0, "probe"), (1.0, "probe"), None] and out.chosen == 1


def test_feedback_book_is_bounded_and_takes_one_verdict():
    book = signals.FeedbackBook(capacity=2)
    target = signals.FeedbackTarget(b"r", "e", b"", "general", b"q" * 32)
    for qid in ("a", "b", "c"):
        book.remember(qid, target)
    assert len(book) == 2
    with pytest.raises(UnknownQuery):
        book.take("a")  # the oldest was forgotten
    assert book.take("b") == target
    with pytest.raises(FeedbackRepeated):
        book.take("b")
    assert query_error_http(UnknownQuery)[0] == 404 and query_error_http(FeedbackRepeated)[0] == 409


def test_signal_settings_from_config():
    class Cfg:
        validator = True

    assert signals.signal_settings(Cfg()).probe_interval_s == signals.DEFAULT_PROBE_INTERVAL_S
    Cfg.validator, Cfg.judges, Cfg.signal_weights = False, 2, {"judge": 5}
    s = signals.signal_settings(Cfg())
    assert (s.probe_interval_s, s.judges, s.weights.judge) == (0.0, 2, 5.0)


async def test_prober_asks_like_a_user_at_its_rate(nursery, autojump_clock):
    import trio

    from p2pnet.query import ChatRequest, NoExpertAvailable

    class FakeCoordinator:
        def __init__(self):
            self.calls = []

        async def chat(self, req, on_delta=None, *, probe=None):
            self.calls.append((trio.current_time(), req, probe))
            if len(self.calls) % 2:
                raise NoExpertAvailable("nobody")
            return "answered"

    co = FakeCoordinator()
    prober = signals.Prober(co, interval_s=10.0, rng=random.Random(7))
    await nursery.start(prober.run)
    await trio.sleep(100.0)
    times = [t for t, _, _ in co.calls]
    assert 100 / 15 <= len(times) <= 100 / 5 + 1
    assert all(5.0 <= b - a <= 15.0 for a, b in zip([0.0] + times, times))
    for _, req, probe in co.calls:
        assert req == ChatRequest("p2pnet", (("user", probe.question),), domain=probe.domain)
    assert prober.status() == {"probes_sent": len(times), "probes_failed": (len(times) + 1) // 2}


def test_probes_draw_only_domains_that_an_announced_expert_serves():
    """A probe of a domain nobody serves fails at once and measures nothing:
    with ``served`` given the draw keeps to the domains it names (all of them
    when a "general" expert is announced, since it answers any domain, or
    when nothing overlaps); the same seed draws the same probes."""
    probes = signals.ProbeSet.builtin()
    assert probes.domains() == ["general", "geography"]
    for served, expected in (({"geography", "chemistry"}, {"geography"}), ({"general"}, {"general", "geography"}),
                             ({"chemistry"}, {"general", "geography"}), (None, {"general", "geography"}),
                             ({"geography", "general"}, {"general", "geography"})):
        drawn = [probes.draw(random.Random(s), served).domain for s in range(200)]
        assert set(drawn) == expected, served
    assert ([probes.draw(random.Random(3), {"geography"}).question for _ in range(5)]
            == [probes.draw(random.Random(3), {"geography"}).question for _ in range(5)])
    assert signals.servable(["a", "b", "c"], frozenset({"c", "a", "z"})) == ["a", "c"]


async def test_the_prober_reads_the_served_domains_from_the_directory(nursery, autojump_clock):
    from types import SimpleNamespace

    class FakeCoordinator:
        def __init__(self, domains):
            self.calls = []
            card = SimpleNamespace(domains=domains)
            self.directory = SimpleNamespace(all=lambda now: [SimpleNamespace(card=card)] if domains else [])

        def clock(self):
            return 0.0

        async def chat(self, req, on_delta=None, *, probe=None):
            self.calls.append(probe)
            return "answered"

    geo = FakeCoordinator(("geography",))
    prober = signals.Prober(geo, rng=random.Random(2))
    for _ in range(40):
        await prober.probe_once()
    assert {p.domain for p in geo.calls} == {"geography"}
    assert signals.announced_domains(geo) == frozenset({"geography"})
    assert signals.announced_domains(object()) is None  # no directory: every domain
    told = FakeCoordinator(())
    prober = signals.Prober(told, rng=random.Random(2), served=lambda: ["units"])
    for _ in range(40):
        await prober.probe_once()
    assert {p.domain for p in told.calls} == {"units"}
