"""Expert hosting over the scripted backend: busy, cancel, timeout, card."""

from __future__ import annotations

from functools import partial

import pytest
import trio
import trio.testing

from p2pnet.experts.backend import Backend
from p2pnet.experts.expert import HARD_STOP_GRACE, Expert
from p2pnet.experts.scripted import ScriptedBackend
from p2pnet.query import BadQuery, Busy, DeadlineExceeded, QueryError
from p2pnet.wire import ChatMessage, ModelCard, PromptBody

ANSWERS = {"What is the capital of France?": "Paris."}


def prompt(question: str = "What is the capital of France?", max_tokens: int = 64) -> PromptBody:
    return PromptBody((ChatMessage("user", question),), max_tokens)


def qid(n: int) -> bytes:
    return n.to_bytes(16, "big")


async def started(backend: Backend, **kwargs) -> Expert:
    kwargs.setdefault("domains", ("general", "geography"))
    expert = Expert("geo-1", backend, **kwargs)
    await expert.start()
    return expert


async def test_answer_ok():
    expert = await started(ScriptedBackend(ANSWERS))
    answer = await expert.answer(qid(1), prompt(), timeout=10)
    assert (answer.status, answer.text, answer.finish_reason) == ("ok", "Paris.", "stop")
    assert answer.raise_for_status() is answer
    assert expert.load == 0


async def test_system_prompt_is_prepended_unless_given():
    expert = await started(ScriptedBackend(), system_prompt="Be an expert.")
    own = PromptBody((ChatMessage("system", "Mine."), ChatMessage("user", "q")), 8)
    assert [m.role for m in expert.messages_for(prompt())] == ["system", "user"]
    assert expert.messages_for(prompt())[0].content == "Be an expert."
    assert expert.messages_for(own) == own.messages


async def test_busy_at_once_when_full_without_a_queue(autojump_clock):
    expert = await started(ScriptedBackend(ANSWERS, latency=10.0), max_concurrency=2)
    results = {}

    async def ask(n: int):
        results[n] = await expert.answer(qid(n), prompt(), timeout=60)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ask, 1)
        nursery.start_soon(ask, 2)
        await trio.testing.wait_all_tasks_blocked()
        assert expert.load == 2 and expert.card().load == 2
        start = trio.current_time()
        busy = await expert.answer(qid(3), prompt(), timeout=60)
        assert trio.current_time() == start  # answered at once
        assert busy.status == "busy"
        with pytest.raises(Busy):
            busy.raise_for_status()
    assert [results[n].status for n in (1, 2)] == ["ok", "ok"]
    assert (await expert.answer(qid(4), prompt(), timeout=60)).status == "ok"


async def test_a_full_expert_queues_in_order_then_says_busy(autojump_clock):
    expert = await started(ScriptedBackend(ANSWERS, latency=10.0), max_concurrency=1, max_queue=2)
    results, done_at = {}, {}

    async def ask(n: int):
        results[n] = await expert.answer(qid(n), prompt(), timeout=60)
        done_at[n] = trio.current_time()

    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        for n in (1, 2, 3):
            nursery.start_soon(ask, n)
            await trio.testing.wait_all_tasks_blocked()
        assert expert.load == 3 and expert.card().load == 3  # one running, two waiting
        busy = await expert.answer(qid(4), prompt(), timeout=60)
        assert busy.status == "busy" and "2 waiting" in busy.error  # the queue is full: no wait
    assert [results[n].status for n in (1, 2, 3)] == ["ok", "ok", "ok"]
    # first come, first served, one after the other
    assert done_at[1] - start < done_at[2] - start < done_at[3] - start
    assert expert.waited == 2 and expert.load == 0


async def test_a_waiting_query_times_out_or_is_cancelled_and_leaves_the_queue(autojump_clock):
    expert = await started(ScriptedBackend(ANSWERS, latency=30.0), max_concurrency=1, max_queue=2)
    results = {}

    async def ask(n: int, timeout: float):
        results[n] = await expert.answer(qid(n), prompt(), timeout=timeout)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ask, 1, 60)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(ask, 2, 5)   # gives up waiting after 5 s
        nursery.start_soon(ask, 3, 60)  # cancelled while waiting
        await trio.testing.wait_all_tasks_blocked()
        assert expert.load == 3
        assert expert.cancel(qid(3)) is True
        await trio.testing.wait_all_tasks_blocked()
        assert results[3].status == "cancelled"
    assert results[2].status == "timeout" and "waiting" in results[2].error
    assert results[1].status == "ok" and expert.load == 0
    assert (await expert.answer(qid(5), prompt(), timeout=60)).status == "ok"


async def test_cancel_by_query_id(autojump_clock):
    expert = await started(ScriptedBackend(failure="hang"), max_concurrency=2)
    results = {}

    async def ask(n: int):
        results[n] = await expert.answer(qid(n), prompt(), timeout=600)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ask, 1)
        nursery.start_soon(ask, 2)
        await trio.testing.wait_all_tasks_blocked()
        start = trio.current_time()
        assert expert.cancel(qid(1))
        assert not expert.cancel(qid(9))
        await trio.testing.wait_all_tasks_blocked()
        assert results[1].status == "cancelled" and trio.current_time() == start
        assert expert.load == 1
        expert.cancel(qid(2))
    assert results[2].status == "cancelled" and expert.load == 0


async def test_timeout_returns_partial_text(autojump_clock):
    expert = await started(ScriptedBackend({"q": "one two three four"}, token_latency=1.0))
    start = trio.current_time()
    answer = await expert.answer(qid(1), prompt("q"), timeout=2.5)
    assert (answer.status, answer.text, answer.finish_reason) == ("timeout", "one two three", "deadline")
    assert trio.current_time() - start == pytest.approx(2.5)
    with pytest.raises(DeadlineExceeded):
        answer.raise_for_status()


class _Deaf(ScriptedBackend):
    """Ignores the timeout it is given: the expert's hard stop must end it."""

    async def agenerate(self, messages, *, timeout=None, **kwargs):
        return await super().agenerate(messages, timeout=None, **kwargs)


async def test_hard_stop_when_backend_ignores_deadline(autojump_clock):
    expert = await started(_Deaf(failure="hang"))
    start = trio.current_time()
    answer = await expert.answer(qid(1), prompt(), timeout=5)
    assert answer.status == "timeout"
    assert trio.current_time() - start == pytest.approx(5 + HARD_STOP_GRACE)
    assert expert.load == 0


async def test_caller_cancellation_propagates_and_frees_the_slot(autojump_clock):
    expert = await started(ScriptedBackend(failure="hang"))
    with trio.move_on_after(3) as scope:
        await expert.answer(qid(1), prompt(), timeout=60)
    assert scope.cancelled_caught and expert.load == 0


@pytest.mark.parametrize("failure, status", [("error", "error"), ("busy", "busy"), ("die", "error")])
async def test_backend_failures_become_statuses(failure, status):
    expert = await started(ScriptedBackend(ANSWERS, failure=failure))
    answer = await expert.answer(qid(1), prompt(), timeout=10)
    assert answer.status == status and answer.error
    assert expert.load == 0
    with pytest.raises(QueryError):
        answer.raise_for_status()


async def test_duplicate_running_query_id_is_an_error(autojump_clock):
    expert = await started(ScriptedBackend(failure="hang"), max_concurrency=4)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(expert.answer, qid(1), prompt(), timeout=600))
        await trio.testing.wait_all_tasks_blocked()
        assert (await expert.answer(qid(1), prompt(), timeout=5)).status == "error"
        expert.cancel(qid(1))


class _Threaded(ScriptedBackend):
    """The scripted script run through Backend's worker-thread path."""

    agenerate = Backend.agenerate


async def test_cancel_by_query_id_through_a_worker_thread():
    expert = await started(_Threaded(failure="hang"))
    results = []

    async def ask():
        results.append(await expert.answer(qid(1), prompt(), timeout=600))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ask)
        await trio.testing.wait_all_tasks_blocked()
        assert expert.load == 1
        expert.cancel(qid(1))
    assert results[0].status == "cancelled" and expert.load == 0


@pytest.mark.parametrize("error, status", [
    (BadQuery("request (9026 tokens) exceeds the available context size (2048 tokens)"), "rejected"),
    (Busy("the model server is busy"), "busy"),
    (QueryError("llama.cpp: failed"), "error"),
])
async def test_backend_errors_from_a_worker_thread_become_statuses(error, status, caplog):
    """A thread-based backend's error reaches Expert.answer as itself (not
    wrapped in an exception group by the nursery that watches for
    cancellation), so it gets its status and no 'generation failed' traceback."""

    class Failing(_Threaded):
        def generate(self, *args, **kwargs):
            raise error

    expert = await started(Failing(ANSWERS))
    answer = await expert.answer(qid(1), prompt(), timeout=10)
    assert (answer.status, answer.error) == (status, str(error))
    assert not [r for r in caplog.records if "generation failed" in r.getMessage()]
    assert expert.load == 0


async def test_card():
    backend = ScriptedBackend(model="scripted-geo")
    expert = await started(backend, price_per_1k=0.25, max_concurrency=3)
    card = expert.card()
    assert isinstance(card, ModelCard)
    card.validate()
    assert (card.expert_id, card.model, card.sha256) == ("geo-1", "scripted-geo", backend.info().sha256)
    assert (card.domains, card.price_per_1k, card.max_concurrency, card.load) == (
        ("general", "geography"), 0.25, 3, 0)
    assert (card.prompt_tps, card.gen_tps, card.backend, card.gpu_layers) == (1000.0, 100.0, "scripted", 0)
    assert expert.card(load=2).load == 2
    assert ModelCard.unpack(card.pack()) == card


async def test_answer_before_start_is_refused():
    expert = Expert("x", ScriptedBackend(), domains=("general",))
    with pytest.raises(Exception, match="not started"):
        await expert.answer(qid(1), prompt(), timeout=1)


def test_constructor_checks():
    with pytest.raises(ValueError):
        Expert("", ScriptedBackend(), domains=("general",))
    with pytest.raises(ValueError):
        Expert("x", ScriptedBackend(), domains=(), max_concurrency=1)
    with pytest.raises(ValueError):
        Expert("x", ScriptedBackend(), domains=("g",), max_concurrency=0)
