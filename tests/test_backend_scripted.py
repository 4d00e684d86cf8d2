"""The scripted backend: deterministic answers, accuracy, latency, failures."""

from __future__ import annotations

import pytest
import trio

from p2pnet.experts.backend import CancelToken
from p2pnet.experts.errors import ScriptedFailure
from p2pnet.experts.scripted import ScriptedBackend
from p2pnet.query import Busy
from p2pnet.wire import ChatMessage


def ask(question: str) -> list[ChatMessage]:
    return [ChatMessage("system", "Be brief."), ChatMessage("user", question)]


ANSWERS = {"What is the capital of France?": "Paris is the capital of France."}


def test_fixed_answer_and_rule():
    b = ScriptedBackend(ANSWERS, rule=lambda q: q.upper())
    assert b.generate(ask("  what is THE capital of france? "), max_tokens=64).text == ANSWERS[
        "What is the capital of France?"]
    result = b.generate(ask("echo me"), max_tokens=64)
    assert (result.text, result.finish_reason, result.completion_tokens) == ("ECHO ME", "stop", 2)


def test_max_tokens_cuts_the_answer():
    result = ScriptedBackend(ANSWERS).generate(ask("What is the capital of France?"), max_tokens=2)
    assert (result.text, result.finish_reason) == ("Paris is", "length")


def test_accuracy_is_seeded_and_order_independent():
    questions = [f"question {i}" for i in range(400)]
    first = ScriptedBackend(rule=lambda q: "right", accuracy=0.7, seed=5)
    again = ScriptedBackend(rule=lambda q: "right", accuracy=0.7, seed=5)
    other = ScriptedBackend(rule=lambda q: "right", accuracy=0.7, seed=6)
    a = [first.generate(ask(q), max_tokens=8).text for q in questions]
    b = [again.generate(ask(q), max_tokens=8).text for q in reversed(questions)][::-1]
    c = [other.generate(ask(q), max_tokens=8).text for q in questions]
    assert a == b and a != c
    assert 0.6 < a.count("right") / len(a) < 0.8


def test_stream_chunks_concatenate():
    chunks: list[str] = []
    result = ScriptedBackend(ANSWERS).generate(ask("What is the capital of France?"), max_tokens=64,
                                               on_token=chunks.append)
    assert "".join(chunks) == result.text and len(chunks) == 6


def test_sync_latency_uses_the_injected_sleep():
    slept: list[float] = []
    b = ScriptedBackend(ANSWERS, latency=0.5, token_latency=0.1, sleep=slept.append)
    b.generate(ask("What is the capital of France?"), max_tokens=64)
    assert sum(slept) == pytest.approx(0.5 + 5 * 0.1)


def test_sync_hang_ends_on_cancel():
    token = CancelToken()
    calls = 0

    def sleep(seconds: float) -> None:
        nonlocal calls
        calls += 1
        if calls == 100:
            token.cancel()

    result = ScriptedBackend(failure="hang", sleep=sleep).generate(ask("x"), max_tokens=8, cancel=token)
    assert (result.finish_reason, result.text) == ("cancelled", "")


@pytest.mark.parametrize("failure, error", [("error", ScriptedFailure), ("busy", Busy), ("die", ScriptedFailure)])
def test_failures_raise(failure, error):
    b = ScriptedBackend(ANSWERS, failure=failure, sleep=lambda s: None)
    seen: list[str] = []
    with pytest.raises(error):
        b.generate(ask("What is the capital of France?"), max_tokens=64, on_token=seen.append)
    if failure == "die":
        assert "".join(seen) == "Paris is the"


async def test_async_latency_is_virtual(autojump_clock):
    b = ScriptedBackend(ANSWERS, latency=30.0, token_latency=1.0)
    start = trio.current_time()
    result = await b.agenerate(ask("What is the capital of France?"), max_tokens=64)
    assert result.text == ANSWERS["What is the capital of France?"]
    assert trio.current_time() - start == pytest.approx(35.0)
    assert result.gen_ms == pytest.approx(35_000)


async def test_async_hang_until_timeout(autojump_clock):
    b = ScriptedBackend(failure="hang")
    start = trio.current_time()
    result = await b.agenerate(ask("x"), max_tokens=8, timeout=12.0)
    assert result.finish_reason == "deadline"
    assert trio.current_time() - start == pytest.approx(12.0)


async def test_async_timeout_keeps_partial_text(autojump_clock):
    b = ScriptedBackend(ANSWERS, token_latency=1.0)
    result = await b.agenerate(ask("What is the capital of France?"), max_tokens=64, timeout=2.5)
    assert (result.finish_reason, result.text) == ("deadline", "Paris is the")


async def test_async_hang_cancelled_by_trio(autojump_clock):
    b = ScriptedBackend(failure="hang")
    with trio.move_on_after(5.0) as scope:
        await b.agenerate(ask("x"), max_tokens=8)
    assert scope.cancelled_caught


def test_info_is_stable():
    assert ScriptedBackend(model="m", seed=1).info() == ScriptedBackend(model="m", seed=1).info()
    assert ScriptedBackend(model="m", seed=1).info().backend == "scripted"


def test_the_sha256_covers_the_script_and_what_its_rules_close_over():
    """Two scripted experts announce one model file only when they answer alike."""
    def picks(city):
        return lambda prompt: city

    def sha(**kw):
        return ScriptedBackend(model="m", seed=1, **kw).info().sha256

    assert sha(rule=picks("Paris")) == sha(rule=picks("Paris"))
    assert sha(rule=picks("Paris")) != sha(rule=picks("Lyon"))
    assert sha(answers={"q": "a"}) != sha(answers={"q": "b"})
    assert sha(wrong="x") != sha(wrong="y") and sha(accuracy=0.5) != sha(accuracy=0.6)


def test_a_calibrated_confidence_separates_right_from_wrong_as_asked():
    """The simulator's model of an expert's confidence: right answers score
    above wrong ones with probability ``auc``; a liar's says nothing."""
    from p2pnet.experts.scripted import calibrated_confidence, claimed_confidence

    conf = calibrated_confidence(0.8, seed=3)
    right = [conf(f"q{i}", True) for i in range(600)]
    wrong = [conf(f"w{i}", False) for i in range(600)]
    auc = sum((r > w) + 0.5 * (r == w) for r in right for w in wrong) / (len(right) * len(wrong))
    assert 0.77 < auc < 0.83
    assert all(0.0 <= c <= 1.0 for c in right + wrong) and conf("q1", True) == right[1]
    assert claimed_confidence(0.95)("anything", False) == 0.95
    backend = ScriptedBackend({"2+2?": "4"}, accuracy=0.5, seed=1, confidence=conf)
    result = backend.generate([ChatMessage("user", "2+2?")], max_tokens=8)
    assert result.confidence == conf("2+2?", backend.is_correct("2+2?"))
    assert ScriptedBackend({"2+2?": "4"}).generate([ChatMessage("user", "2+2?")], max_tokens=8).confidence is None
    with pytest.raises(ValueError):
        calibrated_confidence(0.4)
