"""The xllamacpp backend: a GGUF model served by llama.cpp's server core, in process.

The xllamacpp ``Server`` is thread-safe and batches concurrent requests over
``n_parallel`` slots sharing one KV cache. Every generation streams: each chunk
goes through a callback that forwards the text, checks the cancel token and the
deadline, and returns True to stop llama.cpp (which then frees the slot).
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

from p2pnet.experts.backend import (
    CANCELLED, DEADLINE, LENGTH, STOP, Backend, CancelToken, GenerationResult, Message, ModelInfo,
    OnToken, confidence_from_logprobs,
)
from p2pnet.experts.errors import ModelError
from p2pnet.experts.gguf import GGUFInfo, inspect_gguf
from p2pnet.query import BadQuery, QueryError

log = logging.getLogger("p2pnet.experts.llama")

BACKEND_NAME = "xllamacpp"


@dataclass(frozen=True)
class LlamaSettings:
    """``gpu_layers``: 0 runs on the CPU, N offloads N layers, -1 all of them.
    ``n_ctx`` is the context one request may use; each of the ``n_parallel``
    slots has a KV cache of that size (SmolLM2-135M: about 23 KB a token, so
    190 MB for 2048 x 4)."""

    n_threads: int = 0  # 0: one per CPU core
    gpu_layers: int = 0
    n_ctx: int = 2048
    n_parallel: int = 1
    verbosity: int = -1  # llama.cpp's log threshold; -1 is silent
    confidence: bool = True
    """Ask llama.cpp for the sampled tokens' log-probabilities, the answer's
    confidence. Off, answers carry none; that saves up to about 6% of
    generation speed on SmolLM2-135M (docs/benchmarks.md)."""

    def __post_init__(self) -> None:
        if self.n_threads < 0 or self.n_ctx < 64 or self.n_parallel < 1 or self.gpu_layers < -1:
            raise ValueError(f"invalid llama settings: {self}")


def gpu_devices() -> list[str]:
    """Names of the GPU devices this xllamacpp build can use (empty on a CPU build)."""
    import xllamacpp

    kinds = {xllamacpp.ggml_backend_dev_type.GGML_BACKEND_DEVICE_TYPE_GPU,
             xllamacpp.ggml_backend_dev_type.GGML_BACKEND_DEVICE_TYPE_IGPU}
    return [f"{d['name']} ({d['description']})" for d in xllamacpp.get_device_info() if d["type"] in kinds]


def effective_gpu_layers(requested: int, devices: Sequence[str]) -> int:
    """The gpu_layers to use: the request if a GPU is there, else 0 with one log line."""
    if requested == 0:
        return 0
    if not devices:
        log.warning("gpu_layers=%d requested but no GPU device is available to xllamacpp "
                    "(CPU-only build or no driver); running on the CPU", requested)
        return 0
    return requested


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


class LlamaBackend(Backend):
    """One GGUF model in an xllamacpp server. ``sha256``, when given, is checked
    before loading; ``model_name`` names the model on cards (default: the
    GGUF's ``general.name``)."""

    name = BACKEND_NAME

    def __init__(self, path: str | os.PathLike, settings: LlamaSettings = LlamaSettings(), *,
                 sha256: Optional[str] = None, model_name: Optional[str] = None) -> None:
        self.path = Path(path)
        self.settings = settings
        self.max_parallel = settings.n_parallel
        self._expected_sha256 = sha256
        self._model_name = model_name
        self._server: Any = None
        self._info: Optional[ModelInfo] = None
        self._gguf: Optional[GGUFInfo] = None
        self._load_lock = threading.Lock()
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._active: set[CancelToken] = set()
        self._closed = False

    # ---------------------------------------------------------------- lifecycle

    def load(self) -> None:
        with self._load_lock:
            self._load()

    def _load(self) -> None:
        with self._lock:
            if self._server is not None:
                return
            if self._closed:
                raise ModelError(f"{self.path}: backend is closed")
        gguf = inspect_gguf(self.path)
        sha = file_sha256(self.path)
        if self._expected_sha256 and sha != self._expected_sha256.lower():
            raise ModelError(f"{self.path}: sha256 {sha} does not match the expected "
                             f"{self._expected_sha256}; the file is corrupt, pull it again")
        gpu_layers = effective_gpu_layers(self.settings.gpu_layers,
                                          gpu_devices() if self.settings.gpu_layers else [])
        server = self._start_server(gguf, gpu_layers)
        with self._lock:
            self._server, self._gguf = server, gguf
            self._info = ModelInfo(
                model=self._model_name or gguf.name, sha256=sha, quantization=gguf.quantization,
                n_ctx=self._n_ctx(gguf), backend=BACKEND_NAME, gpu_layers=gpu_layers)

    def _n_ctx(self, gguf: GGUFInfo) -> int:
        trained = gguf.context_length
        return min(self.settings.n_ctx, trained) if trained else self.settings.n_ctx

    def _start_server(self, gguf: GGUFInfo, gpu_layers: int) -> Any:
        import xllamacpp

        s = self.settings
        threads = s.n_threads or os.cpu_count() or 1
        params = xllamacpp.CommonParams()
        params.model.path = str(self.path)
        # a cache of n_parallel full contexts, split per slot: every request may use
        # n_ctx, and no request can take the room of the others
        params.n_ctx = self._n_ctx(gguf) * s.n_parallel
        params.n_parallel = s.n_parallel
        params.kv_unified = False
        params.n_gpu_layers = gpu_layers
        params.cpuparams.n_threads = threads
        params.cpuparams_batch.n_threads = threads
        params.verbosity = s.verbosity
        params.hostnames = ["127.0.0.1"]  # the core also opens an HTTP port; keep it local
        params.port = 0
        try:
            return xllamacpp.Server(params)
        except Exception as exc:
            raise ModelError(f"{self.path}: llama.cpp could not load the model ({exc})") from None

    def info(self) -> ModelInfo:
        if self._info is None:
            raise ModelError(f"{self.path}: model not loaded")
        return self._info

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for token in self._active:
                token.cancel()
            while self._active:
                self._idle.wait()
            server, self._server = self._server, None
        del server  # the destructor stops llama.cpp's loop thread and frees the model

    # --------------------------------------------------------------- generation

    def generate(
        self,
        messages: Sequence[Message],
        *,
        max_tokens: int,
        temperature: float = 0.0,
        deadline: Optional[float] = None,
        on_token: Optional[OnToken] = None,
        cancel: Optional[CancelToken] = None,
    ) -> GenerationResult:
        token = cancel if cancel is not None else CancelToken()
        request = {
            "messages": [{"role": m.role, "content": m.content} for m in messages],
            "max_tokens": max_tokens,
            "temperature": temperature,
            "stream": True,
            "stream_options": {"include_usage": True},
            # of the sampled tokens only (no alternatives): the answer's confidence
            "logprobs": self.settings.confidence,
            # no reuse of an earlier prompt's KV cache: answers then do not depend on
            # what was asked before, and prompt timings count the whole prompt
            "cache_prompt": False,
        }
        return self._stream(request, token, deadline, on_token)

    @contextmanager
    def _serving(self, token: CancelToken) -> Iterator[Any]:
        """The loaded server, for one generation that close() waits for."""
        with self._lock:
            if self._server is None:
                raise ModelError(f"{self.path}: model not loaded" if not self._closed
                                 else f"{self.path}: backend is closed")
            server = self._server
            self._active.add(token)
        try:
            yield server
        finally:
            with self._lock:
                self._active.discard(token)
                self._idle.notify_all()

    def _stream(self, request: dict, token: CancelToken, deadline: Optional[float],
                on_token: Optional[OnToken]) -> GenerationResult:
        state = _StreamState(token, deadline, on_token)
        with self._serving(token) as server:
            server.handle_chat_completions(request, state.on_chunk)
        return state.result()


class _StreamState:
    """Collects one streamed generation; ``on_chunk`` returns True to stop it."""

    def __init__(self, token: CancelToken, deadline: Optional[float], on_token: Optional[OnToken]):
        self.token, self.deadline, self.on_token = token, deadline, on_token
        self.pieces: list[str] = []
        self.logprobs: list[float] = []
        self.finish_reason: Optional[str] = None
        self.stopped: Optional[str] = None
        self.usage: dict = {}
        self.timings: dict = {}
        self.error: Optional[dict] = None
        self.exc: Optional[BaseException] = None
        self.t_start = time.monotonic()
        self.t_first: Optional[float] = None

    def on_chunk(self, chunk: dict) -> bool:
        try:
            return self._on_chunk(chunk)
        except BaseException as exc:  # xllamacpp swallows callback errors: keep it for later
            self.exc = exc
            return True

    def _on_chunk(self, chunk: dict) -> bool:
        if "error" in chunk:
            self.error = chunk["error"]
            return True
        for choice in chunk.get("choices") or ():
            piece = (choice.get("delta") or {}).get("content")
            if piece:
                if self.t_first is None:
                    self.t_first = time.monotonic()
                self.pieces.append(piece)
                if self.on_token is not None:
                    self.on_token(piece)
            for scored in (choice.get("logprobs") or {}).get("content") or ():
                if isinstance(scored, dict) and isinstance(scored.get("logprob"), (int, float)):
                    self.logprobs.append(float(scored["logprob"]))
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        self.usage = chunk.get("usage") or self.usage
        self.timings = chunk.get("timings") or self.timings
        if self.finish_reason is None:
            if self.token.cancelled:
                self.stopped = CANCELLED
            elif self.deadline is not None and time.monotonic() >= self.deadline:
                self.stopped = DEADLINE
        return self.stopped is not None

    def result(self) -> GenerationResult:
        if self.exc is not None:
            raise self.exc
        if self.error is not None:
            message = str(self.error.get("message", self.error))
            if self.error.get("code") == 400:
                if "context size" in message:  # llama.cpp's "..., try increasing it" names no way to
                    message = (message.replace(", try increasing it", "") + "; shorten the prompt, or host "
                               "the expert with a larger context (ctx=N in its --expert spec)")
                raise BadQuery(message)
            raise QueryError(f"llama.cpp: {message}")
        finish = self.stopped or (STOP if self.finish_reason == STOP else LENGTH)
        if self.stopped is None and self.finish_reason is None:
            finish = STOP  # the stream ended without a reason: treat as complete
        now = time.monotonic()
        t = self.timings
        first = self.t_first or now
        return GenerationResult(
            text="".join(self.pieces),
            finish_reason=finish,
            prompt_tokens=int(self.usage.get("prompt_tokens", t.get("prompt_n", 0))),
            completion_tokens=int(self.usage.get("completion_tokens", len(self.pieces))),
            prompt_ms=float(t.get("prompt_ms", (first - self.t_start) * 1000)),
            gen_ms=float(t.get("predicted_ms", (now - first) * 1000)),
            confidence=confidence_from_logprobs(self.logprobs) if self.logprobs else None,
        )
