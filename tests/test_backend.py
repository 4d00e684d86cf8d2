"""The xllamacpp backend on the real SmolLM2 file (loaded once per module)."""

from __future__ import annotations

import logging
import time

import pytest
import trio

from p2pnet.experts import modelstore
from p2pnet.experts.backend import CancelToken
from p2pnet.experts.llama import LlamaBackend, LlamaSettings, effective_gpu_layers, gpu_devices
from p2pnet.query import BadQuery
from p2pnet.wire import ChatMessage

from .conftest_net import LoopTicker

pytestmark = pytest.mark.slow

SPEC = modelstore.default_registry().get(modelstore.DEFAULT_MODEL)
SYSTEM = ChatMessage("system", "You are a helpful assistant.")
STORY = (ChatMessage("user", "Write a long story about a dragon."),)


@pytest.fixture(scope="module")
def backend(smollm2_path):
    b = LlamaBackend(smollm2_path, LlamaSettings(n_threads=2, n_parallel=2), sha256=SPEC.sha256,
                     model_name=SPEC.name)
    b.load()
    yield b
    b.close()


def test_info(backend):
    info = backend.info()
    assert (info.model, info.sha256, info.quantization) == (SPEC.name, SPEC.sha256, "Q4_1")
    assert (info.n_ctx, info.backend, info.gpu_layers) == (2048, "xllamacpp", 0)


def test_chat_answers_paris(backend):
    question = ChatMessage("user", "What is the capital of France?")
    result = backend.generate([SYSTEM, question], max_tokens=32)
    assert "Paris" in result.text
    assert result.finish_reason == "stop"
    assert result.prompt_tokens > 10 and 0 < result.completion_tokens <= 32
    assert result.prompt_ms > 0 and result.gen_ms > 0


def test_stream_chunks_concatenate_to_text(backend):
    chunks: list[str] = []
    result = backend.generate(STORY, max_tokens=24, on_token=chunks.append)
    assert len(chunks) > 1
    assert "".join(chunks) == result.text
    assert result.finish_reason == "length" and result.completion_tokens == 24


def test_cancel_token_stops_generation_early(backend):
    token = CancelToken()
    chunks: list[str] = []

    def on_token(piece: str) -> None:
        chunks.append(piece)
        if len(chunks) == 3:
            token.cancel()

    result = backend.generate(STORY, max_tokens=500, on_token=on_token, cancel=token)
    assert result.finish_reason == "cancelled"
    assert len(chunks) == 3 and result.text == "".join(chunks)
    # the slot is free again: the next generation runs to its end
    assert backend.generate(STORY, max_tokens=4).completion_tokens == 4


def test_deadline_ends_generation(backend):
    result = backend.generate(STORY, max_tokens=500, deadline=time.monotonic())
    assert result.finish_reason == "deadline"
    assert result.completion_tokens < 500


def test_prompt_longer_than_context_is_a_bad_query(backend):
    with pytest.raises(BadQuery, match="context"):
        backend.generate([ChatMessage("user", "hello " * 3000)], max_tokens=8)


def test_callback_error_is_raised_not_swallowed(backend):
    def on_token(piece: str) -> None:
        raise RuntimeError("consumer failed")

    with pytest.raises(RuntimeError, match="consumer failed"):
        backend.generate(STORY, max_tokens=16, on_token=on_token)


async def test_trio_loop_keeps_running_during_generation(backend):
    """The first token waits (in the worker thread) until the Trio loop has
    ticked three times: that only happens if the loop runs meanwhile."""
    ticker = LoopTicker(3)

    def on_token(piece: str) -> None:
        assert ticker.ticked.wait(timeout=60)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ticker.run)
        result = await backend.agenerate(STORY, max_tokens=8, on_token=on_token)
    assert result.completion_tokens == 8 and ticker.ticks >= 3


async def test_trio_cancellation_stops_the_native_generation(backend):
    token = CancelToken()
    chunks: list[str] = []
    with trio.CancelScope() as scope:
        def on_token(piece: str) -> None:
            chunks.append(piece)
            if len(chunks) == 2:
                trio.from_thread.run_sync(scope.cancel)

        await backend.agenerate(STORY, max_tokens=500, on_token=on_token, cancel=token)
    assert scope.cancelled_caught
    assert token.cancelled  # the thread was told to stop, and was waited for
    assert 2 <= len(chunks) < 500


async def test_concurrent_generations(backend):
    results = []

    async def one(question: str):
        results.append(await backend.agenerate([SYSTEM, ChatMessage("user", question)], max_tokens=16))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(one, "What is the capital of France?")
        nursery.start_soon(one, "Name a color.")
    assert len(results) == 2 and all(r.completion_tokens > 0 for r in results)


def test_measure_speed(backend):
    speed = backend.measure_speed(max_tokens=8)
    assert speed.prompt_tps > 0 and speed.gen_tps > 0


def test_gpu_setting_without_gpu_falls_back_with_one_log_line(caplog):
    with caplog.at_level(logging.WARNING, logger="p2pnet.experts.llama"):
        assert effective_gpu_layers(20, []) == 0
        assert effective_gpu_layers(0, []) == 0
        assert effective_gpu_layers(20, ["CUDA0 (H100)"]) == 20
    assert len(caplog.records) == 1
    assert "gpu_layers=20" in caplog.records[0].getMessage() and "CPU" in caplog.records[0].getMessage()


@pytest.mark.skipif(bool(gpu_devices()), reason="this machine has a GPU")
def test_gpu_layers_on_cpu_machine_load_on_cpu(smollm2_path, caplog):
    b = LlamaBackend(smollm2_path, LlamaSettings(n_threads=2, gpu_layers=-1, n_ctx=256))
    with caplog.at_level(logging.WARNING, logger="p2pnet.experts.llama"):
        b.load()
    try:
        assert b.info().gpu_layers == 0
        assert [r.levelname for r in caplog.records] == ["WARNING"]
        assert b.generate(STORY, max_tokens=2).completion_tokens == 2
    finally:
        b.close()
