"""One query round as a pure state machine: events in, actions out, time as
an input.

A :class:`QueryRound` holds every rule of answering one query with experts
of the network: whom to ask first (the selection policy), how long each may
stay silent (patience), replacing silent, gone or failed respondents,
escalating an unsure single answer when a second expert is worth its price,
breaking ties, peer judging, evaluation, the signals and the ratings. It
never awaits, sleeps, reads a clock or touches the network: the node's
``Coordinator`` (a thin Trio driver) and the simulator run it the same way.

Driving it::

    rnd = QueryRound(setup, now)
    actions = rnd.start(now)
    while not rnd.finished:
        # carry out ``actions``: Ask -> seal and send; Cancel; Close; Forget;
        # Stream; Rate; Done
        event = <the next Reply, Chunk or Gone, or a Tick at rnd.wake_at()>
        actions = rnd.step(event, now)

A round asks experts in *batches*, one at a time; each batch has its own id
(the ``query_id`` on the wire), so a late answer to an earlier batch is
ignored. Every batch ends by the round's deadline, and the round finishes
when its last batch ends.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

from p2pnet import wire
from p2pnet.config import MAX_JUDGES
from p2pnet.experts import patience as waiting, signals
from p2pnet.experts.directory import ExpertRef
from p2pnet.experts.evaluation import Candidate, Evaluation, Evaluator, SignalWeights, by_voice, is_usable, normalize
from p2pnet.experts.patience import LatencyBook
from p2pnet.experts.round_io import (  # noqa: F401 (the round's vocabulary, imported from here)
    Action, Ask, Cancel, Chunk, Close, Done, Event, Forget, Gone, Rate, Reply, Stream, Tick,
)
from p2pnet.experts.selection import Selection, SelectionPolicy, Standing
from p2pnet.experts.verdict import Outcome, Verdict, judge_tally
from p2pnet.query import BadQuery, Escalation, ExpertKey, NoExpertAvailable

Key = tuple  # (peer: bytes, expert_id: str)

MIN_ASK_S = 0.5
"""No further expert is asked with this little (seconds) of the deadline left."""


# ------------------------------------------------------------------- setup

@dataclass(frozen=True)
class RoundRules:
    """The coordinator's settings that shape a round."""

    default_respondents: int = 2
    tiebreak: int = 1  # extra experts asked, one by one, when the answers have no majority
    patience_factor: float = 3.0
    patience_floor_s: float = 5.0
    retry_rounds: int = 2
    max_experts: int = 16  # respondents one round may ask in all (judges apart)
    judge_max_tokens: int = 16
    weights: SignalWeights = SignalWeights()


@dataclass
class RoundSetup:
    """One query's inputs. ``candidates``: the experts serving the query's
    domain (and model); ``judge_pool``: those that may judge (any model).
    ``new_id`` makes batch ids; ``me``: this node's peer id (never rated)."""

    domain: str
    prompt: wire.PromptBody
    candidates: Sequence[ExpertRef]
    deadline_s: float
    policy: SelectionPolicy
    evaluator: Evaluator
    standing: Standing
    rng: random.Random
    new_id: Callable[[], bytes]
    me: bytes = b""
    rules: RoundRules = RoundRules()
    respondents: Optional[int] = None  # the request's own choice
    judges: int = 0
    probe: Optional[signals.Probe] = None
    streaming: bool = False  # the client wants text as it is generated
    judge_pool: Sequence[ExpertRef] = ()
    latency: Optional[LatencyBook] = None  # observed answer times, shared by a driver's rounds


@dataclass
class _Batch:
    id: bytes
    keys: tuple
    started: float
    deadline: float
    patience_at: Optional[float]
    expected: dict = field(default_factory=dict)  # key -> the card's time for this prompt (s)
    extended: bool = False  # waited one more patience for a respondent with better standing
    stream_key: Optional[Key] = None
    next_chunk: int = 0
    streamed: str = ""
    done: bool = False
    timed_out: bool = False
    judging: bool = False


@dataclass
class _Stage:
    name: str = "first"  # first | retry | escalate | tiebreak | judge | finish
    retries: int = 0
    tiebreaks: int = 0
    ask_stream: bool = False
    pending_escalation: Optional[tuple] = None  # (why, confidence) of the escalation asked
    judge_order: tuple = ()
    judges: dict = field(default_factory=dict)  # key -> ExpertRef of each judge asked, in order
    judge_answers: dict = field(default_factory=dict)


class QueryRound:
    def __init__(self, setup: RoundSetup, now: float) -> None:
        s, rules = setup, setup.rules
        if not s.candidates:
            raise NoExpertAvailable(f"no expert is available for domain {s.domain!r}")
        self.s, self.rules = s, rules
        self.k = s.policy.respondents(s.candidates, s.domain, s.standing, s.respondents) or rules.default_respondents
        if not 1 <= self.k <= 16:
            raise BadQuery("respondents must be between 1 and 16")
        try:
            s.prompt.validate()
        except wire.WireError as exc:
            raise BadQuery(str(exc)) from None
        if not 0 <= s.judges <= MAX_JUDGES:
            raise BadQuery(f"judges must be between 0 and {MAX_JUDGES}")
        self.started = now
        self.deadline = now + s.deadline_s
        self.prompt = s.prompt
        self.asked: dict = {}      # key -> ExpertRef, every batch but the judges'
        self.answers: dict = {}    # key -> Candidate
        self.meta: dict = {}       # key -> Reply (hash, tokens, error)
        self.batch: Optional[_Batch] = None
        self.stage = _Stage()
        self.query_id = b""
        self.selection: Optional[Selection] = None
        self.tiebreakers: list = []
        self.escalated: Optional[Escalation] = None
        self.declined: Optional[str] = None
        self.streamed = ""  # text passed to the client by the current stream
        self.stream_key: Optional[Key] = None
        self.timed_out = False
        self.finished = False
        self.outcome: Optional[Outcome] = None

    # -------------------------------------------------------------- driving

    def start(self, now: float) -> list:
        """Choose the first respondents and ask them."""
        s = self.s
        # at temperature 0 copies of one model would give one answer: unless the request
        # set its respondents, ask one expert per model
        self.selection = s.policy.select(s.candidates, self.k, s.domain, s.standing, s.rng,
                                         adapt=not s.respondents, probe=s.probe is not None,
                                         distinct_models=self.prompt.temperature == 0 and not s.respondents)
        chosen = self.selection.chosen[:self.rules.max_experts]
        stream = s.streaming and len(chosen) == 1 and not self.selection.unsure
        # one respondent: its text can stream as it is generated (not when its answer
        # may be checked: the client must not see text that a second opinion may overrule)
        if stream:
            self.prompt = dataclasses.replace(self.prompt, stream=True)
        self.stage.ask_stream = stream
        actions = self._ask(chosen, now, stream, self.s.deadline_s)
        self.query_id = self.batch.id
        return actions

    def wake_at(self) -> Optional[float]:
        """When the round next needs a :class:`Tick` (round time), None when finished."""
        b = self.batch
        if self.finished or b is None:
            return None
        if b.patience_at is not None:
            return min(b.patience_at, b.deadline)
        return b.deadline

    def silent(self) -> list:
        """The current batch's respondents that have not answered yet."""
        b = self.batch
        return [] if b is None or b.done else [k for k in b.keys if k not in self._answers_of(b)]

    def waits_for(self, batch_id: bytes, key: Key) -> bool:
        """Whether an answer from ``key`` to ``batch_id`` would be taken now."""
        b = self.batch
        return b is not None and b.id == batch_id and key in b.keys and key not in self._answers_of(b)

    def streams(self, batch_id: bytes, key: Key, index: int) -> bool:
        """Whether chunk ``index`` from ``key`` to ``batch_id`` would be streamed now."""
        b = self.batch
        return self.waits_for(batch_id, key) and key == b.stream_key and index == b.next_chunk

    def step(self, event: Event, now: float) -> list:
        b = self.batch
        if self.finished or b is None:
            return []
        out: list = []
        if isinstance(event, Reply):
            if event.batch_id == b.id and event.key in b.keys and event.key not in self._answers_of(b):
                self._take(b, event, now)
        elif isinstance(event, Chunk):
            if (event.batch_id == b.id and event.key == b.stream_key and event.index == b.next_chunk
                    and event.key not in self._answers_of(b)):
                b.next_chunk += 1
                if event.text:
                    b.streamed += event.text
                    self.streamed = b.streamed
                    out.append(Stream(event.text))
        elif isinstance(event, Gone):
            if event.batch_id == b.id:
                gone = tuple(k for k in dict.fromkeys(event.keys) if k in b.keys and k not in self._answers_of(b))
                out += [Forget(k) for k in gone]
                self._mark(b, gone, "gone", now)
        if b.patience_at is not None and now >= b.patience_at and not b.done and now < b.deadline:
            at, b.patience_at = b.patience_at, None
            out += self._give_up_on_slow(b, now, at)
        if not b.done and now >= b.deadline:
            b.timed_out = True
            silent = tuple(k for k in b.keys if k not in self._answers_of(b))
            out.append(Cancel(b.id, silent, "timeout"))
            self._mark(b, silent, "timeout", now)
        if b.done:
            out.append(Close(b.id))
            self.timed_out = self.timed_out or b.timed_out
            out += self._next(now)
        return out

    # -------------------------------------------------------------- batches

    def _answers_of(self, b: _Batch) -> dict:
        return self.stage.judge_answers if b.judging else self.answers

    def _take(self, b: _Batch, r: Reply, now: float) -> None:
        ref = self.stage.judges[r.key] if b.judging else self.asked[r.key]
        cand = Candidate(ref.peer_str, ref.card.expert_id, r.status, r.text, int((now - b.started) * 1000),
                         r.completion_tokens, r.finish_reason, r.confidence if r.status == "ok" else None)
        self._answers_of(b)[r.key] = cand
        if not b.judging:
            self.meta[r.key] = r
        book = self.s.latency
        if book is not None and r.key in b.expected:
            if r.status == "ok":
                book.observe(r.key, now - b.started, b.expected[r.key])
            elif r.status in ("slow", "timeout"):
                book.gave_up(r.key, now - b.started, b.expected[r.key])
        if all(k in self._answers_of(b) for k in b.keys):
            b.done = True

    def _mark(self, b: _Batch, keys, status: str, now: float) -> None:
        for key in keys:
            self._take(b, Reply(b.id, key, status), now)

    def _give_up_on_slow(self, b: _Batch, now: float, at: float) -> list:
        """Past its patience (due ``at``): a respondent that sent nothing (a
        streaming one that sent text is alive, and is waited for) is "slow",
        unless its standing is better than that of every expert with a
        usable answer (``patience.still_wanted``): the batch then waits one
        more patience before giving up on anyone, if that leaves another
        expert a patience before the deadline (a tie-break or a replacement
        still fits; with 10 s and a patience of 5 s, no wait). A
        slow one's query is cancelled where it still runs, and a late answer
        is ignored. Nobody is given up on while nobody could take their place
        (:meth:`_replaceable`): the batch then waits to the deadline."""
        silent = [k for k in b.keys if k not in self._answers_of(b) and not (k == b.stream_key and b.next_chunk)]
        usable = [k for k, c in self.answers.items() if is_usable(c)]
        if silent and not b.judging and not self._replaceable(usable):
            b.patience_at = None  # giving up would end the round with nothing: wait to the deadline
            return []
        wanted = set() if b.judging or b.extended else waiting.still_wanted(
            silent, usable, self.s.domain, self.s.standing)
        # one more patience, if another expert would still have as long after it
        until = min(at + (at - b.started), b.deadline - (at - b.started))
        if wanted and until > at:
            b.extended, b.patience_at = True, until
        else:
            wanted = set()
        slow = tuple(k for k in silent if k not in wanted)
        if not slow:
            return []
        self._mark(b, slow, "slow", now)
        return [Cancel(b.id, slow, "slow")]

    def _replaceable(self, usable: list) -> bool:
        """Whether giving up on a silent respondent may gain anything: a usable
        answer is in hand already (``usable``: the keys of those), or the
        round's budget allows another expert that the policy would send
        traffic to (whether one is then asked is up to the stage: a retry, an
        escalation). With neither, the slow expert is the only answer left,
        and :meth:`_give_up_on_slow` waits for it until the deadline."""
        return bool(usable) or (len(self.asked) < self.rules.max_experts and bool(self._others(False)))

    def _ask(self, refs, now: float, stream: bool, deadline_s: float) -> list:
        """A new batch asking ``refs`` until the round's deadline."""
        rules = self.rules
        patience = waiting.patience(refs, self.prompt, deadline_s, rules.patience_factor, rules.patience_floor_s,
                                    self.s.latency)
        b = _Batch(self.s.new_id(), tuple(r.key for r in refs), now, self.deadline,
                   now + patience if patience < deadline_s else None,
                   {r.key: waiting.card_seconds(r.card, self.prompt) for r in refs})
        self.asked.update((r.key, r) for r in refs)
        # one respondent streams, unless the client already saw text from another (that text
        # cannot be taken back: the answer then comes whole at the end, see Verdict)
        if stream and len(refs) == 1 and not self.streamed:
            b.stream_key = self.stream_key = refs[0].key
        self.batch = b
        prompt = self.prompt if self.prompt.stream == (b.stream_key is not None) else dataclasses.replace(
            self.prompt, stream=b.stream_key is not None)  # only a streaming respondent sends chunks
        return [Ask(b.id, tuple(refs), prompt, b.deadline, b.stream_key)]

    def _others(self, new_voice: bool) -> list:
        """The candidates the policy would use anyway (never one it has shut
        out) that are not asked yet. With ``new_voice``, at temperature 0, not
        a copy of a model already asked: it would repeat that model's answer."""
        s = self.s
        rest = [r for r in s.candidates if r.key not in self.asked]
        if new_voice and self.prompt.temperature == 0:
            models = {ref.card.voice for ref in self.asked.values() if ref.card.voice}
            rest = [r for r in rest if r.card.voice not in models]
        return s.policy.eligible(rest, s.domain, s.standing)

    def _ask_more(self, now: float, n: int, stream: bool = True, new_voice: bool = False,
                  refs: Optional[tuple] = None) -> Optional[list]:
        """Ask ``refs``, or else ``n`` more of :meth:`_others` chosen by the
        policy, if at least MIN_ASK_S of the deadline is left and the round's
        budget allows; the actions, or None if nobody was asked."""
        s = self.s
        left = self.deadline - now
        budget = self.rules.max_experts - len(self.asked)
        n = min(n, budget)
        if left <= MIN_ASK_S or n <= 0:
            return None
        chosen = refs
        if chosen is None:
            rest = self._others(new_voice)
            chosen = rest and s.policy.select(rest, n, s.domain, s.standing, s.rng,
                                              distinct_models=new_voice and self.prompt.temperature == 0).chosen
        if not chosen:
            return None
        # (a policy may add one more to explore a newcomer; never past the budget)
        return self._ask(tuple(chosen)[:budget], now, stream and self.stage.ask_stream, left)

    # --------------------------------------------------------------- stages

    def _next(self, now: float) -> list:
        """The current batch is over: ask more experts, or finish."""
        st = self.stage
        if st.name == "judge":
            return self._finish(now)
        if st.name == "escalate" and st.pending_escalation is not None:
            why, confidence = st.pending_escalation
            self.escalated = Escalation(why, confidence, self.s.policy.escalate_below, tuple(
                ExpertKey(self.asked[k].peer_str, k[1]) for k in self.batch.keys))
            st.pending_escalation = None
            st.name = "tiebreak"
        elif st.name == "tiebreak" and st.tiebreaks:
            self.tiebreakers += [self.asked[k] for k in self.batch.keys]
        if st.name in ("first", "retry"):
            st.name = "retry"
            if st.retries < self.rules.retry_rounds:
                st.retries += 1
                asked = self._retry(now)
                if asked:
                    return asked
            st.name = "escalate"
            if self.s.probe is None and not self.s.judges and not self.s.respondents:
                asked = self._escalate(now)
                if asked:
                    return asked
            st.name = "tiebreak"
        if st.name == "tiebreak":
            if self.s.probe is None and not self.s.judges and st.tiebreaks < self.rules.tiebreak:
                st.tiebreaks += 1
                asked = self._break_tie(now)
                if asked:
                    return asked
            st.name = "judge"
            if self.s.judges:
                asked = self._ask_judges(now)
                if asked:
                    return asked
        return self._finish(now)

    def _retry(self, now: float) -> Optional[list]:
        """When no answer is usable and respondents failed in a way another
        expert need not share (busy, an error, an invalid or blank answer,
        slow or gone), ask as many others (not asked yet, chosen by the same
        policy) while the deadline allows; not when one refused the prompt
        itself. With one expert per model at temperature 0, this is what a
        copy is for."""
        answers = list(self.answers.values())
        failed = sum(1 for c in answers if c.status in ("busy", "error", "invalid", "slow", "gone")
                     or (c.status == "ok" and not is_usable(c)))
        if (self.timed_out or not failed or any(is_usable(c) for c in answers)
                or any(c.status == "rejected" for c in answers)):
            return None
        return self._ask_more(now, failed)

    def _escalate(self, now: float) -> Optional[list]:
        """One more expert for a single answer that may be wrong: its own
        confidence is below the policy's ``escalate_below``, or the policy is
        not sure of its expert and it reports no confidence. Not for an
        answer already streamed to the client."""
        s, below = self.s, self.s.policy.escalate_below
        if self.timed_out or below <= 0 or len(self.asked) != 1 or self.streamed:
            return None
        unsure = self.selection.unsure
        ((key, answer),) = self.answers.items()
        if not is_usable(answer):
            if not unsure:
                return None
            why = f"its expert is not reliable yet and its answer is unusable ({answer.status})"
        elif answer.confidence is None:
            if not unsure:
                return None
            why = "its expert is not reliable yet and reports no confidence"
        elif answer.confidence < below:
            why = f"its confidence {answer.confidence:.2f} is below {below:.2f}"
        else:
            return None
        refs = None
        if is_usable(answer):  # is a check worth its price? (an unusable answer is simply replaced)
            first = self.asked[key]
            rest = self._others(True)
            ref, note = s.policy.second_opinion(first, answer.confidence, rest, s.domain, s.standing, s.rng)
            if ref is None:
                copies = sum(1 for r in s.candidates if r.key != key and first.card.voice
                             and r.card.voice == first.card.voice)
                if not rest and copies and self.prompt.temperature == 0:
                    note += (f" ({copies} more {'is a copy' if copies == 1 else 'are copies'} of its model, "
                             "which would repeat its answer at temperature 0)")
                self.declined = f"{why}, but no second expert is asked: {note}"
                return None
            refs = (ref,)
            if note:
                why = f"{why}; {note}"
        asked = self._ask_more(now, 1, stream=False, new_voice=True, refs=refs)
        if asked:
            self.stage.pending_escalation = (why, answer.confidence)
        return asked

    def _break_tie(self, now: float) -> Optional[list]:
        """When the usable answers have no majority (two that differ), ask one
        more expert (up to ``tiebreak`` in all, one at a time) chosen by the
        same policy among those not asked yet, while the deadline allows."""
        if self.timed_out or not self.evaluate().undecided:
            return None
        # no streaming: the client must not see text that the majority may overrule
        return self._ask_more(now, 1, stream=False, new_voice=True)

    def _ask_judges(self, now: float) -> Optional[list]:
        """Ask up to ``judges`` experts that wrote none of the answers to pick
        the best usable one, authors hidden and order shuffled, within what
        is left of the deadline."""
        s, st = self.s, self.stage
        keys = list(self.asked)
        cands = [self.answers[k] for k in keys]
        usable = [i for i, c in enumerate(cands) if is_usable(c)]
        authors = {k[0] for k in keys}
        pool = [r for r in s.judge_pool if r.peer not in authors]
        left = self.deadline - now
        if len(usable) < 2 or not pool or left <= MIN_ASK_S:
            return None
        # the judge prompt runs at temperature 0: copies of one model would cast one vote twice
        chosen = s.policy.select(pool, s.judges, s.domain, s.standing, s.rng, distinct_models=True).chosen
        if not chosen:
            return None
        st.judge_order = tuple(s.rng.sample(usable, len(usable)))
        st.judges = {r.key: r for r in chosen}
        question = next((m.content for m in reversed(self.prompt.messages) if m.role == "user"), "")
        body = wire.PromptBody(messages=tuple(wire.ChatMessage(r, c) for r, c in signals.judge_prompt(
            question, [cands[i].text for i in st.judge_order])), max_tokens=self.rules.judge_max_tokens,
            temperature=0.0)
        b = _Batch(s.new_id(), tuple(r.key for r in chosen), now, self.deadline, None, judging=True)
        self.batch = b
        return [Ask(b.id, tuple(chosen), body, b.deadline, traffic=False)]

    # ------------------------------------------------------------ the end

    def evaluate(self) -> Evaluation:
        """The evaluator's verdict on every answer so far, copies counted
        once: at temperature 0, usable answers with the same text from experts
        that announce the same model file and knowledge (``ModelCard.voice``)
        are one voice."""
        cands = [self.answers[k] for k in self.asked]
        if self.prompt.temperature != 0:
            return self.s.evaluator.evaluate(cands)
        return by_voice(self.s.evaluator, cands, self.voices())

    def voices(self) -> list:
        """Per respondent asked: its voice (the same for copies of one model,
        with one knowledge, that gave the same text at temperature 0), None
        when it is a voice of its own."""
        if self.prompt.temperature != 0:
            return [None] * len(self.asked)
        return [(ref.card.voice, normalize(self.answers[k].text)) if is_usable(self.answers[k]) and ref.card.voice
                else None for k, ref in self.asked.items()]

    def _finish(self, now: float) -> list:
        s, st = self.s, self.stage
        judging = None
        if s.judges:
            cands = [self.answers[k] for k in self.asked]
            judging = judge_tally(tuple(st.judges.values()), st.judge_answers, st.judge_order, cands, s.domain, s.standing)
        verdict = Verdict(self, judging)
        outcome = verdict.outcome()
        self.finished, self.batch, self.outcome = True, None, outcome
        # what the query spent, judges included, for a policy that keeps a budget
        s.policy.paid(sum(ref.card.price_per_1k for ref in (*self.asked.values(), *st.judges.values())),
                      probe=s.probe is not None)
        out: list = [Rate(r) for r in verdict.ratings]
        out += [Stream(piece) for piece in verdict.rest_to_stream()]
        out.append(Done(outcome))
        return out
