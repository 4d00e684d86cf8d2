"""A deterministic backend with fixed answers, for tests and the simulator only.

Never used as a fallback for a real model. Whether an answer is right is
decided by an RNG seeded with ``(seed, question)``, so the same question gets
the same answer whatever the order or concurrency of calls. Latency is virtual
under Trio's MockClock when called through ``agenerate`` (it sleeps with
``trio.sleep``); the blocking ``generate`` sleeps with an injected function.
"""

from __future__ import annotations

import hashlib
import random
import time
from dataclasses import dataclass
from statistics import NormalDist
from typing import Callable, Iterator, Mapping, Optional, Sequence

import trio

from p2pnet.experts.backend import (
    CANCELLED, DEADLINE, STOP, LENGTH, Backend, CancelToken, GenerationResult, Message, ModelInfo,
    OnToken, Speed,
)
from p2pnet.experts.errors import ScriptedFailure
from p2pnet.query import Busy

# failure behaviours
OK, ERROR, HANG, BUSY, DIE = "ok", "error", "hang", "busy", "die"
FAILURES = (OK, ERROR, HANG, BUSY, DIE)

# The confidence of the default model's answers (bench/cascade.py, SmolLM2-135M,
# closed-form questions): roughly normal with this spread, around this mean
# for wrong answers and higher for right ones (least-squares fit of the shares
# below thresholds 0.6 and 0.7, right and wrong, at the measured AUC 0.78).
CONFIDENCE_WRONG_MEAN = 0.63
CONFIDENCE_SPREAD = 0.14

Confidence = Callable[[str, bool], float]
"""(question, whether the answer is right) -> the confidence reported with it."""


def calibrated_confidence(auc: float, seed: int = 0) -> Confidence:
    """A confidence that tells right answers from wrong ones with probability
    ``auc`` (the chance a right answer's confidence is above a wrong one's):
    normal scores on the default model's scale, fixed per (seed, question)."""
    if not 0.5 <= auc < 1.0:
        raise ValueError("auc must lie in [0.5, 1)")
    shift = 2 ** 0.5 * NormalDist().inv_cdf(auc) * CONFIDENCE_SPREAD

    def confidence(question: str, right: bool) -> float:
        noise = random.Random(f"confidence:{seed}:{_norm(question)}").gauss(0.0, CONFIDENCE_SPREAD)
        return round(min(1.0, max(0.0, CONFIDENCE_WRONG_MEAN + (shift if right else 0.0) + noise)), 4)
    return confidence


def claimed_confidence(value: float) -> Confidence:
    """A confidence that says nothing: ``value`` whatever the answer (a liar's)."""
    return lambda question, right: value


@dataclass(frozen=True)
class _Plan:
    prompt_tokens: int
    pieces: tuple[str, ...]
    failure: str
    cut: bool  # max_tokens cut the answer short
    confidence: Optional[float] = None


def _fingerprint(f) -> object:
    """What a rule or wrong answer contributes to the script's sha256: a string
    as it is; a function by its qualified name and the values it closes over
    (two rules made by one factory with different arguments answer apart)."""
    if f is None or isinstance(f, str):
        return f
    cells = tuple(repr(c.cell_contents) for c in getattr(f, "__closure__", None) or ())
    return (getattr(f, "__module__", None), getattr(f, "__qualname__", repr(f)), cells)


class ScriptedBackend(Backend):
    """Answers the last user message.

    ``answers`` maps a question (matched after strip + casefold) to its right
    answer; ``rule(question)`` answers the others (else ``default``). With
    probability ``1 - accuracy`` the answer is ``wrong`` (a string or a function
    of the question) instead. ``latency`` seconds pass before the first token and
    ``token_latency`` between tokens (words). ``failure``: "ok", "error" (raise),
    "hang" (until cancelled or the deadline), "busy" (raise Busy), "die" (raise
    after half the answer). ``confidence`` (see :func:`calibrated_confidence`)
    gives each result a confidence, as the llama.cpp backend's log-probabilities
    do; without it results carry none."""

    name = "scripted"

    def __init__(
        self,
        answers: Mapping[str, str] = {},
        *,
        rule: Optional[Callable[[str], str]] = None,
        default: str = "I don't know.",
        wrong: str | Callable[[str], str] = "I am not sure, maybe it is Atlantis.",
        accuracy: float = 1.0,
        seed: int = 0,
        latency: float = 0.0,
        token_latency: float = 0.0,
        failure: str = OK,
        sleep: Callable[[float], None] = time.sleep,
        model: str = "scripted",
        n_ctx: int = 2048,
        max_parallel: int = 8,
        speed: Speed = Speed(prompt_tps=1000.0, gen_tps=100.0),
        confidence: Optional[Confidence] = None,
    ) -> None:
        if not 0.0 <= accuracy <= 1.0:
            raise ValueError("accuracy must lie in [0, 1]")
        if failure not in FAILURES:
            raise ValueError(f"failure must be one of {FAILURES}, not {failure!r}")
        self._answers = {_norm(q): a for q, a in answers.items()}
        self._rule, self._default, self._wrong = rule, default, wrong
        self.accuracy, self.seed, self.failure = accuracy, seed, failure
        self.latency, self.token_latency = latency, token_latency
        self._sleep = sleep
        self._speed = speed
        self.confidence = confidence
        self.max_parallel = max_parallel
        # the "model file" is the script: two backends announce the same sha256
        # only if they answer alike (copies, which the coordinator counts once)
        script = repr((sorted(self._answers.items()), default, accuracy, _fingerprint(rule), _fingerprint(wrong)))
        digest = hashlib.sha256(f"scripted:{model}:{seed}:{script}".encode()).hexdigest()
        self._info = ModelInfo(model=model, sha256=digest, quantization="none", n_ctx=n_ctx,
                               backend=self.name, gpu_layers=0)
        self.calls = 0

    # ----------------------------------------------------------- the script

    def correct_answer(self, question: str) -> str:
        q = _norm(question)
        if q in self._answers:
            return self._answers[q]
        return self._rule(question) if self._rule is not None else self._default

    def is_correct(self, question: str) -> bool:
        """Whether this backend answers ``question`` rightly (fixed per seed)."""
        if self.accuracy >= 1.0:
            return True
        rng = random.Random(f"{self.seed}:{_norm(question)}")
        return rng.random() < self.accuracy

    def answer_text(self, question: str) -> str:
        return self._answer(question)[0]

    def _answer(self, question: str) -> tuple[str, Optional[float]]:
        """(the answer, its confidence or None)."""
        right = self.is_correct(question)
        if right:
            text = self.correct_answer(question)
        else:
            text = self._wrong(question) if callable(self._wrong) else self._wrong
        return text, (None if self.confidence is None else self.confidence(question, right))

    def _plan(self, messages: Sequence[Message], max_tokens: int) -> _Plan:
        self.calls += 1
        if self.failure == BUSY:
            raise Busy("scripted backend is busy")
        if self.failure == ERROR:
            raise ScriptedFailure("scripted backend failed")
        question = next((m.content for m in reversed(messages) if m.role == "user"), "")
        text, confidence = self._answer(question)
        words = text.split(" ")
        pieces = tuple(w if i == 0 else " " + w for i, w in enumerate(words))
        prompt_tokens = sum(len(m.content.split()) for m in messages)
        return _Plan(prompt_tokens, pieces[:max_tokens], self.failure, len(pieces) > max_tokens, confidence)

    def _steps(self, plan: _Plan) -> Iterator[tuple[float, Optional[str]]]:
        """(seconds to wait, piece to emit) pairs; a None piece ends the answer.
        Raises at the step where the script fails."""
        yield self.latency, None
        if plan.failure == HANG:
            while True:
                yield 3600.0, None
        emit = plan.pieces[: len(plan.pieces) // 2] if plan.failure == DIE else plan.pieces
        for i, piece in enumerate(emit):
            yield (self.token_latency if i else 0.0), piece
        if plan.failure == DIE:
            raise ScriptedFailure("scripted backend died mid-answer")

    def _result(self, plan: _Plan, pieces: list[str], finish: str, ms: float) -> GenerationResult:
        if finish == STOP and plan.cut:
            finish = LENGTH
        return GenerationResult("".join(pieces), finish, plan.prompt_tokens, len(pieces), 0.0, ms,
                                confidence=plan.confidence if finish in (STOP, LENGTH) else None)

    # -------------------------------------------------------- Backend interface

    def load(self) -> None:
        pass

    def info(self) -> ModelInfo:
        return self._info

    def close(self) -> None:
        pass

    def measure_speed(self, max_tokens: int = 32) -> Speed:
        return self._speed

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
        plan = self._plan(messages, max_tokens)
        pieces: list[str] = []
        waited = 0.0
        for delay, piece in self._steps(plan):
            while delay > 0:  # sleep in slices so cancel and deadline are noticed
                if cancel is not None and cancel.cancelled:
                    return self._result(plan, pieces, CANCELLED, waited * 1000)
                if deadline is not None and time.monotonic() >= deadline:
                    return self._result(plan, pieces, DEADLINE, waited * 1000)
                step = min(delay, 0.01)
                self._sleep(step)
                delay -= step
                waited += step
            if piece is not None:
                pieces.append(piece)
                if on_token is not None:
                    on_token(piece)
        return self._result(plan, pieces, STOP, waited * 1000)

    async def agenerate(
        self,
        messages: Sequence[Message],
        *,
        max_tokens: int,
        temperature: float = 0.0,
        timeout: Optional[float] = None,
        on_token: Optional[OnToken] = None,
        cancel: Optional[CancelToken] = None,
    ) -> GenerationResult:
        """Runs in the Trio task itself: latency is ``trio.sleep`` (virtual
        under MockClock); a Trio cancellation propagates."""
        plan = self._plan(messages, max_tokens)
        pieces: list[str] = []
        start = trio.current_time()
        finish = DEADLINE
        with trio.move_on_after(float("inf") if timeout is None else timeout):
            for delay, piece in self._steps(plan):
                await trio.sleep(delay)
                if cancel is not None and cancel.cancelled:
                    finish = CANCELLED
                    break
                if piece is not None:
                    pieces.append(piece)
                    if on_token is not None:
                        on_token(piece)
            else:
                finish = STOP
        return self._result(plan, pieces, finish, (trio.current_time() - start) * 1000)


def _norm(question: str) -> str:
    return " ".join(question.split()).casefold()
