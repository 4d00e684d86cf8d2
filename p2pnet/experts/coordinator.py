"""The coordinator: any node answers its own user's queries with experts
hosted across the network.

For one query it selects k respondents (a pluggable SelectionPolicy), seals
the prompt to each of them (NaCl box: relays see only ciphertext), publishes
the Query on GossipSub, collects signed answers until it has k or the deadline
passes, cancels the stragglers, picks one answer (a pluggable Evaluator) and
returns it with its provenance. A respondent that disconnects while asked is
"gone" at once, and one still silent after its patience (a few times its own
card's time for a full-length answer) is "slow"; both are replaced by other
experts while the deadline allows. Every query leaves signed Rating records in a
durable local queue for the ledger.

It implements p2pnet.api.types.QueryService.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import random
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Callable, Optional

import trio

from p2pnet import sealing, wire
from p2pnet.config import MAX_JUDGES
from p2pnet.api.types import ChatRequest, ChatResult
from p2pnet.experts.directory import Directory, ExpertRef
from p2pnet.experts.errors import BadQuery, DeadlineExceeded, NoExpertAvailable, UnknownModel
from p2pnet.experts import signals
from p2pnet.experts.evaluation import (
    FEEDBACK, AgreementEvaluator, Candidate, Evaluator, SignalWeights, by_voice, is_usable, normalize,
)
from p2pnet.experts.streaming import answer_streaming
from p2pnet.experts.selection import SelectionPolicy, Standing, UcbCostPolicy, no_standing
from p2pnet.gossip import topics
from p2pnet.gossip.errors import OutboxFull

log = logging.getLogger("p2pnet.experts.coordinator")

AUTO_MODEL = "p2pnet"
"""Model id meaning "any expert for the domain"."""


@dataclass
class _Pending:
    """A query in flight: who was asked and what came back."""

    query_id: bytes
    started: float
    asked: dict  # (peer, expert_id) -> ExpertRef
    answers: dict = field(default_factory=dict)  # (peer, expert_id) -> Candidate
    hashes: dict = field(default_factory=dict)   # (peer, expert_id) -> (answer_hash, tokens...)
    done: trio.Event = field(default_factory=trio.Event)
    stream_key: Optional[tuple] = None  # the one respondent whose text streams as it is generated
    on_delta: Optional[Callable] = None
    streamed: str = ""
    next_chunk: int = 0
    watched: tuple = ()  # remote respondents connected when asked: their connection is watched
    declined: Optional[str] = None  # why an unsure single answer got no second expert

    async def deliver(self, text: str) -> None:
        """Pass streamed text on to the client; a client gone away stops the stream."""
        if self.on_delta is None or not text:
            return
        self.streamed += text
        try:
            await self.on_delta(text)
        except Exception:
            self.on_delta = None

    def add(self, key, candidate: Candidate, extra: dict) -> None:
        if key in self.asked and key not in self.answers:
            self.answers[key] = candidate
            self.hashes[key] = extra
            if len(self.answers) == len(self.asked):
                self.done.set()


class Coordinator:
    def __init__(self, node, *, local_experts=(), policy: Optional[SelectionPolicy] = None,
                 evaluator: Optional[Evaluator] = None, standing: Standing = no_standing,
                 ratings=None, submit_rating: Optional[Callable[[bytes], None]] = None,
                 default_respondents: int = 2, default_deadline_s: float = 60.0,
                 default_max_tokens: int = 256, max_pending: int = 256,
                 rng: Optional[random.Random] = None, clock=time.time,
                 weights: SignalWeights = SignalWeights(), default_judges: int = 0,
                 judge_max_tokens: int = 16, feedback_capacity: int = 1024, tiebreak: int = 1,
                 patience_factor: float = 3.0, patience_floor_s: float = 5.0, watch_s: float = 1.0) -> None:
        self.node = node
        self.local = {e.expert_id: e for e in local_experts}
        self.policy = policy or UcbCostPolicy()
        self.evaluator = evaluator or AgreementEvaluator()
        self.standing = standing
        self.ratings = ratings
        self.submit_rating = submit_rating
        self.default_respondents = default_respondents
        self.default_deadline_s = default_deadline_s
        self.default_max_tokens = default_max_tokens
        self.max_pending = max_pending
        self.rng = rng or random.Random(int.from_bytes(os.urandom(8), "big"))
        self.clock = clock
        self.weights = weights
        self.default_judges = default_judges
        self.judge_max_tokens = judge_max_tokens
        self.tiebreak = tiebreak  # extra experts asked, one by one, when the answers have no majority
        self.patience_factor, self.patience_floor_s = patience_factor, patience_floor_s  # see _patience
        self.watch_s = watch_s  # how often a query in flight checks that its respondents are connected
        self.feedback_book = signals.FeedbackBook(feedback_capacity)
        self.directory = Directory()
        self._pending: dict[bytes, _Pending] = {}
        self.queries = 0
        self.failed = 0
        self.forgotten = 0  # respondents no longer connected, their cards forgotten
        self.slow = 0  # respondents given up on after their patience
        self.gone = 0  # respondents that disconnected while asked
        self.chunks_received = 0
        self._recent: deque = deque(maxlen=200)  # respondents of recent queries, for traffic shares
        node.network.on(topics.ANNOUNCE, self._on_announce)
        node.network.on(topics.ANSWERS, self._on_answer_gossip)
        node.network.on_request(wire.Answer.KIND, self._on_answer_direct)
        node.network.on_request(wire.AnswerChunk.KIND, self._on_chunk)

    # ------------------------------------------------------------- inputs

    async def _on_announce(self, env: wire.Envelope) -> None:
        self.directory.update(env.sender, env.message.cards, self.clock())

    async def _on_answer_gossip(self, env: wire.Envelope) -> None:
        self._take_answer(env)

    async def _on_answer_direct(self, env: wire.Envelope) -> wire.Message:
        self._take_answer(env)
        return wire.Ack()

    async def _on_chunk(self, env: wire.Envelope) -> wire.Message:
        chunk: wire.AnswerChunk = env.message
        pending = self._pending.get(chunk.query_id)
        if (pending is not None and pending.stream_key == (env.sender, chunk.expert_id)
                and chunk.index == pending.next_chunk and pending.stream_key not in pending.answers):
            try:
                text = sealing.open_box(self.node.identity, env.sender, chunk.box).decode()
            except (sealing.SealError, UnicodeDecodeError):
                return wire.RpcError("bad_request", "unreadable chunk")
            pending.next_chunk += 1
            self.chunks_received += 1
            await pending.deliver(text)
        return wire.Ack()

    def _take_answer(self, env: wire.Envelope) -> None:
        ans: wire.Answer = env.message
        pending = self._pending.get(ans.query_id)
        key = (env.sender, ans.expert_id)
        if pending is None or key not in pending.asked:
            return  # late, or not ours: nothing to do
        latency = int((self.clock() - pending.started) * 1000)
        status, text, finish, confidence = ans.status, "", ans.status, None
        try:
            body = wire.AnswerBody.unpack(sealing.open_box(self.node.identity, env.sender, ans.box))
            text, finish, confidence = body.text, body.finish_reason, body.confidence
            if ans.status == "ok" and hashlib.sha256(text.encode()).digest() != ans.answer_hash:
                raise wire.WireError(wire.SCHEMA, "answer_hash does not match the text")
        except (sealing.SealError, wire.WireError) as exc:
            log.warning("invalid answer from %s: %s", env.sender_str[:16], exc)
            status, text = "invalid", ""
        pending.add(key, Candidate(env.sender_str, ans.expert_id, status, text, latency,
                                   ans.completion_tokens, finish, confidence if status == "ok" else None),
                    {"answer_hash": ans.answer_hash, "prompt_tokens": ans.prompt_tokens,
                     "gen_ms": ans.gen_ms, "error": ans.error})

    # --------------------------------------------------------- QueryService

    def _refresh_local(self) -> None:
        if self.local:
            self.directory.update(self.node.network.peer_id, [e.card() for e in self.local.values()], self.clock())

    def list_models(self) -> list[dict]:
        self._refresh_local()
        now = self.clock()
        out = [{"id": AUTO_MODEL, "object": "model", "owned_by": "p2pnet", "created": 0,
                "experts": len(self.directory.all(now)), "description": "any expert, chosen per query"}]
        for model, refs in sorted(self.directory.models(now).items()):
            out.append({
                "id": model, "object": "model", "owned_by": "p2pnet", "created": 0,
                "experts": len(refs),
                "domains": sorted({d for r in refs for d in r.card.domains}),
                "min_price_per_1k": min(r.card.price_per_1k for r in refs),
            })
        return out

    async def chat(self, req: ChatRequest, on_delta=None, *, probe: Optional[signals.Probe] = None) -> ChatResult:
        """Answer ``req``. ``probe`` (the validator's Prober) grades each answer
        against a known answer instead of by agreement; on the wire a probe is
        an ordinary query."""
        if len(self._pending) >= self.max_pending:
            from p2pnet.experts.errors import Busy

            raise Busy(f"{self.max_pending} queries in flight on this node; try again shortly")
        now = self.clock()
        model = self.requested_model(req)
        domain = (req.domain or "general").lower()
        candidates = self.directory.candidates(now, domain, model)
        if not candidates:
            raise NoExpertAvailable(f"no expert is available for domain {domain!r}")
        k = self.policy.respondents(candidates, domain, self.standing, req.respondents) or self.default_respondents
        if not 1 <= k <= 16:
            raise BadQuery("respondents must be between 1 and 16")
        deadline_s = req.deadline_s or self.default_deadline_s
        prompt = wire.PromptBody(
            messages=tuple(wire.ChatMessage(r, c) for r, c in req.messages),
            max_tokens=req.max_tokens or self.default_max_tokens,
            temperature=float(req.temperature or 0.0),
        )
        try:
            prompt.validate()
        except wire.WireError as exc:
            raise BadQuery(str(exc)) from None
        # at temperature 0 copies of one model would give one answer: unless the request
        # set its respondents, ask one expert per model
        selection = self.policy.select(candidates, k, domain, self.standing, self.rng,
                                       adapt=not req.respondents, probe=probe is not None,
                                       distinct_models=prompt.temperature == 0 and not req.respondents)
        judges = 0 if probe is not None else (req.judges if req.judges is not None else self.default_judges)
        if not 0 <= judges <= MAX_JUDGES:
            raise BadQuery(f"judges must be between 0 and {MAX_JUDGES}")
        query_id = os.urandom(16)
        self._recent.append(tuple(ref.peer_str for ref in selection.chosen))
        pending = _Pending(query_id, now, {ref.key: ref for ref in selection.chosen})
        if on_delta is not None and len(selection.chosen) == 1 and not selection.unsure:
            # one respondent: its text can stream as it is generated (not when its answer
            # may be checked: the client must not see text that a second opinion may overrule)
            pending.stream_key, pending.on_delta = selection.chosen[0].key, on_delta
            prompt = dataclasses.replace(prompt, stream=True)
        self.queries += 1
        timed_out = await self._collect(pending, prompt, domain, deadline_s,
                                        patience=self._patience(selection.chosen, prompt, deadline_s))
        timed_out = await self._retry_failed(pending, candidates, domain, prompt, deadline_s, timed_out)
        escalated = None
        if probe is None and not judges and not req.respondents:
            timed_out, escalated = await self._escalate(pending, candidates, domain, prompt, deadline_s,
                                                        timed_out, selection.unsure)
        tiebreakers = [] if probe is not None or judges else await self._break_tie(
            pending, candidates, domain, prompt, deadline_s, timed_out)
        return await self._finish(pending, selection, prompt, domain, timed_out, on_delta, req,
                                  probe=probe, judges=judges, tiebreakers=tiebreakers, escalated=escalated)

    async def _escalate(self, pending: _Pending, candidates, domain: str, prompt: wire.PromptBody,
                        deadline_s: float, timed_out: bool, unsure: bool) -> tuple[bool, Optional[dict]]:
        """One more expert for a single answer that may be wrong: its own
        confidence is below the policy's ``escalate_below``, or the policy is
        not sure of its expert (``unsure``) and it reports no confidence. Not
        for an answer already streamed to the client. Returns (whether the
        deadline passed, the provenance of the escalation or None)."""
        below = self.policy.escalate_below
        if timed_out or below <= 0 or len(pending.asked) != 1 or pending.streamed:
            return timed_out, None
        ((key, answer),) = pending.answers.items()
        if not is_usable(answer):
            if not unsure:
                return timed_out, None
            why = f"its expert is not reliable yet and its answer is unusable ({answer.status})"
        elif answer.confidence is None:
            if not unsure:
                return timed_out, None
            why = "its expert is not reliable yet and reports no confidence"
        elif answer.confidence < below:
            why = f"its confidence {answer.confidence:.2f} is below {below:.2f}"
        else:
            return timed_out, None
        refs = None
        if is_usable(answer):  # is a check worth its price? (an unusable answer is simply replaced)
            first = pending.asked[key]
            rest = self._others(pending, candidates, domain, prompt, True)
            ref, note = self.policy.second_opinion(first, answer.confidence, rest, domain, self.standing, self.rng)
            if ref is None:
                copies = sum(1 for r in candidates if r.key != key and first.card.sha256
                             and r.card.sha256 == first.card.sha256)
                if not rest and copies and prompt.temperature == 0:
                    note += (f" ({copies} more {'is a copy' if copies == 1 else 'are copies'} of its model, "
                             "which would repeat its answer at temperature 0)")
                pending.declined = f"{why}, but no second expert is asked: {note}"
                return timed_out, None
            refs = (ref,)
            if note:
                why = f"{why}; {note}"
        asked = await self._ask_more(pending, candidates, domain, prompt, deadline_s, 1, stream=False,
                                     new_voice=True, refs=refs)
        if asked is None:
            return timed_out, None
        timed_out, chosen = asked
        return timed_out, {"reason": why, "confidence": answer.confidence, "below": below,
                           "to": [{"peer_id": ref.peer_str, "expert_id": ref.card.expert_id} for ref in chosen]}

    async def _retry_failed(self, pending: _Pending, candidates, domain: str, prompt: wire.PromptBody,
                            deadline_s: float, timed_out: bool, max_rounds: int = 2) -> bool:
        """When no answer is usable and respondents failed in a way another
        expert need not share (busy, an error, an invalid or blank answer,
        slow or gone), ask as many others (not asked yet, chosen by the same
        policy) while the deadline allows; not when one refused the prompt
        itself. With one expert per model at temperature 0, this is what a
        copy is for. Their answers join ``pending``; returns whether the
        deadline passed."""
        for _ in range(max_rounds):
            answers = list(pending.answers.values())
            failed = sum(1 for c in answers if c.status in ("busy", "error", "invalid", "slow", "gone")
                         or (c.status == "ok" and not is_usable(c)))
            if (timed_out or not failed or any(is_usable(c) for c in answers)
                    or any(c.status == "rejected" for c in answers)):
                break
            asked = await self._ask_more(pending, candidates, domain, prompt, deadline_s, failed)
            if asked is None:
                break
            timed_out, _ = asked
        return timed_out

    async def _break_tie(self, pending: _Pending, candidates, domain: str, prompt: wire.PromptBody,
                         deadline_s: float, timed_out: bool) -> list:
        """When the usable answers have no majority (two that differ), ask up to
        ``tiebreak`` more experts, one at a time, chosen by the same policy among
        those not asked yet, while the deadline allows. Returns the refs asked."""
        extra: list = []
        for _ in range(self.tiebreak):
            if timed_out or not self._evaluate(pending, list(pending.asked), prompt).undecided:
                break
            # no streaming: the client must not see text that the majority may overrule
            asked = await self._ask_more(pending, candidates, domain, prompt, deadline_s, 1, stream=False,
                                         new_voice=True)
            if asked is None:
                break
            timed_out, chosen = asked
            extra += chosen
        return extra

    def _others(self, pending: _Pending, candidates, domain: str, prompt: wire.PromptBody,
                new_voice: bool) -> list:
        """The candidates the policy would use anyway (never one it has shut
        out) that are not asked yet. With ``new_voice``, at temperature 0, not
        a copy of a model already asked: it would repeat that model's answer."""
        rest = [r for r in candidates if r.key not in pending.asked]
        if new_voice and prompt.temperature == 0:
            models = {ref.card.sha256 for ref in pending.asked.values() if ref.card.sha256}
            rest = [r for r in rest if r.card.sha256 not in models]
        return self.policy.eligible(rest, domain, self.standing)

    async def _ask_more(self, pending: _Pending, candidates, domain: str, prompt: wire.PromptBody,
                        deadline_s: float, n: int, stream: bool = True, new_voice: bool = False,
                        refs: Optional[tuple] = None) -> Optional[tuple[bool, tuple]]:
        """Ask ``refs``, or else ``n`` more of :meth:`_others` chosen by the
        policy, if at least half a second of the deadline is left; their
        answers join ``pending`` (one of them streams if ``stream`` and it is
        the only one). Returns (whether the deadline passed, the refs asked),
        or None if nobody was asked."""
        left = pending.started + deadline_s - self.clock()
        if left <= 0.5:
            return None
        chosen = refs
        if chosen is None:
            rest = self._others(pending, candidates, domain, prompt, new_voice)
            chosen = rest and self.policy.select(rest, n, domain, self.standing, self.rng,
                                                 distinct_models=new_voice and prompt.temperature == 0).chosen
        if not chosen:
            return None
        more = _Pending(os.urandom(16), self.clock(), {ref.key: ref for ref in chosen})
        if stream and pending.on_delta is not None and len(chosen) == 1:
            more.stream_key, more.on_delta = chosen[0].key, pending.on_delta
        self._recent.append(tuple(ref.peer_str for ref in chosen))
        timed_out = await self._collect(more, prompt, domain, left, patience=self._patience(chosen, prompt, left))
        pending.asked.update(more.asked)
        pending.answers.update(more.answers)
        pending.hashes.update(more.hashes)
        if more.stream_key is not None:
            pending.stream_key, pending.streamed = more.stream_key, more.streamed
        return timed_out, chosen

    async def _collect(self, pending: _Pending, prompt: wire.PromptBody, domain: str, deadline_s: float,
                       patience: Optional[float] = None) -> bool:
        """Ask everyone in ``pending``; True if the deadline passed first.
        Meanwhile a respondent that disconnects is "gone"; one still silent
        after ``patience`` seconds (if less than the deadline) is "slow"."""
        self._pending[pending.query_id] = pending
        try:
            async with trio.open_nursery() as nursery:
                self._dispatch(nursery, pending, prompt, domain, pending.started + deadline_s)
                if pending.watched:
                    nursery.start_soon(self._watch, pending)
                start = trio.current_time()
                if patience is not None and patience < deadline_s:
                    with trio.move_on_at(start + patience):
                        await pending.done.wait()
                    if not pending.done.is_set():
                        self._give_up_on_slow(pending)
                with trio.move_on_at(start + deadline_s):
                    await pending.done.wait()
                nursery.cancel_scope.cancel()
            timed_out = not pending.done.is_set()
            if timed_out:
                self._cancel_remote(pending)
        finally:
            del self._pending[pending.query_id]
        return timed_out

    def _patience(self, refs, prompt: wire.PromptBody, deadline_s: float) -> float:
        """How long a respondent may stay silent before it counts as slow:
        ``patience_factor`` times the time its card announces for a
        full-length answer (prompt and ``max_tokens``, times one more than its
        announced load), the slowest respondent's, at least
        ``patience_floor_s`` and at most half the deadline, so that another
        expert still has the other half."""
        prompt_tokens = 8 + sum(len(m.content) for m in prompt.messages) / 4  # about 4 characters a token
        expected = max(((prompt_tokens / max(ref.card.prompt_tps, 1e-3)
                         + prompt.max_tokens / max(ref.card.gen_tps, 1e-3)) * (1 + max(0, ref.card.load))
                        for ref in refs), default=0.0)
        return min(deadline_s / 2, max(self.patience_floor_s, self.patience_factor * expected))

    def _give_up_on_slow(self, pending: _Pending) -> None:
        """Past its patience: a respondent that sent nothing (a streaming one
        that sent text is alive, and is waited for) is "slow". Its query is
        cancelled where it still runs, and a late answer is ignored."""
        slow = [key for key in pending.asked if key not in pending.answers
                and not (key == pending.stream_key and pending.next_chunk)]
        if not slow:
            return
        if any(key[0] != self.node.network.peer_id for key in slow):
            self._send_cancel(pending)
            self._forget_unconnected(slow)
        self.slow += len(slow)
        self._mark(pending, slow, "slow")

    async def _watch(self, pending: _Pending) -> None:
        """Every ``watch_s``: a watched respondent that has not answered and is
        no longer connected is gone (a node that died or left). Its cards are
        forgotten until it announces again, and the query stops waiting for it."""
        while True:
            await trio.sleep(self.watch_s)
            waiting = [key for key in pending.watched if key not in pending.answers]
            if not waiting:
                return
            connected = set(self.node.network.peers())
            gone = [key for key in waiting if key[0] not in connected]
            if gone:
                self.gone += len(gone)
                for key in gone:
                    self._forget(key)
                self._mark(pending, gone, "gone")

    def _send_cancel(self, pending: _Pending) -> None:
        """Cancel ``pending`` wherever it still runs (best effort)."""
        try:
            self.node.network.publish_nowait(topics.QUERIES, wire.Cancel(pending.query_id))
        except OutboxFull:
            pass

    def _mark(self, pending: _Pending, keys, status: str) -> None:
        latency = int((self.clock() - pending.started) * 1000)
        for key in keys:
            ref = pending.asked[key]
            pending.add(key, Candidate(ref.peer_str, ref.card.expert_id, status, latency_ms=latency), {})

    def _forget(self, key) -> None:
        if self.directory.get(*key) is not None:
            self.directory.forget(key[0])
            self.forgotten += 1

    def _forget_unconnected(self, keys) -> None:
        """Silent remote respondents that are no longer connected are likely
        gone (a node that died keeps its cards until they expire): forget
        their cards, so later queries do not wait on them."""
        connected = set(self.node.network.peers())
        for key in keys:
            if key[0] != self.node.network.peer_id and key[0] not in connected:
                self._forget(key)

    def _dispatch(self, nursery, pending: _Pending, prompt: wire.PromptBody, domain: str,
                  deadline: float) -> None:
        me = self.node.network.peer_id
        remote = [ref for ref in pending.asked.values() if ref.peer != me]
        if remote:
            connected = set(self.node.network.peers())
            pending.watched = tuple(ref.key for ref in remote if ref.peer in connected)
        for ref in pending.asked.values():
            if ref.peer == me:
                nursery.start_soon(self._ask_local, pending, ref, prompt, deadline)
        if remote:
            plain = prompt.pack()
            query = wire.Query(
                query_id=pending.query_id, domain=domain, deadline_ms=int(deadline * 1000),
                prompts=tuple(wire.SealedPrompt(ref.peer, ref.card.expert_id,
                                                sealing.seal(self.node.identity, ref.peer, plain))
                              for ref in remote),
            )
            try:
                self.node.network.publish_nowait(topics.QUERIES, query)
            except OutboxFull:
                for ref in remote:
                    pending.add(ref.key, Candidate(ref.peer_str, ref.card.expert_id, "busy"), {})

    async def _ask_local(self, pending: _Pending, ref: ExpertRef, prompt, deadline: float) -> None:
        expert = self.local[ref.card.expert_id]
        timeout = max(0.1, deadline - self.clock())
        if pending.stream_key == ref.key:
            result = await answer_streaming(expert, pending.query_id, prompt, timeout=timeout,
                                            sink=pending.deliver)
        else:
            result = await expert.answer(pending.query_id, prompt, timeout=timeout)
        latency = int((self.clock() - pending.started) * 1000)
        pending.add(ref.key, Candidate(ref.peer_str, ref.card.expert_id, result.status, result.text,
                                       latency, result.completion_tokens, result.finish_reason, result.confidence),
                    {"answer_hash": hashlib.sha256(result.text.encode()).digest(),
                     "prompt_tokens": result.prompt_tokens, "gen_ms": int(result.gen_ms + result.prompt_ms),
                     "error": result.error})

    def _cancel_remote(self, pending: _Pending) -> None:
        """At the deadline: cancel the query where it still runs, forget silent
        respondents that are no longer connected, and mark who did not answer."""
        me = self.node.network.peer_id
        silent = [k for k in pending.asked if k not in pending.answers]
        if any(k[0] != me for k in silent):
            self._send_cancel(pending)
            self._forget_unconnected(silent)
        self._mark(pending, silent, "timeout")

    async def _finish(self, pending: _Pending, selection, prompt, domain, timed_out, on_delta,
                      req: ChatRequest, *, probe=None, judges: int = 0, tiebreakers=(),
                      escalated: Optional[dict] = None) -> ChatResult:
        keys = list(pending.asked)
        cands = [pending.answers[k] for k in keys]
        evaluation = self._evaluate(pending, keys, prompt)
        judging = await self._judge(prompt, domain, keys, cands, judges, req) if judges else None
        undecided = evaluation.undecided and probe is None and not judging
        evaluation, rated, per_signal = signals.apply_signals(
            cands, evaluation, self.weights, probe=probe, judge_scores=judging and judging["scores"])
        if undecided:
            evaluation = self._by_standing(evaluation, keys, cands, domain)
        query_hash = hashlib.sha256(pending.query_id + prompt.pack()).digest()
        self._record_ratings(query_hash, keys, cands, rated, domain, pending)
        if evaluation.chosen is not None and probe is None:
            key = keys[evaluation.chosen]
            self.feedback_book.remember(pending.query_id.hex(), signals.FeedbackTarget(
                respondent=key[0], expert_id=key[1], answer_hash=pending.hashes[key].get("answer_hash", b""),
                domain=domain[:64], query_hash=query_hash))
        provenance = {
            "query_id": pending.query_id.hex(),
            "domain": domain,
            "selection": {"policy": self.policy.name, "reason": selection.reason,
                          "scores": [list(s) for s in selection.scores[:16]]},
            "tiebreakers": [{"peer_id": ref.peer_str, "expert_id": ref.card.expert_id} for ref in tiebreakers],
            "escalated": escalated,
            "escalation_declined": pending.declined,
            "respondents": [
                {"peer_id": c.peer, "expert_id": c.expert_id, "status": c.status,
                 "latency_ms": c.latency_ms, "completion_tokens": c.completion_tokens,
                 "prompt_tokens": pending.hashes[k].get("prompt_tokens", 0),
                 "gen_ms": pending.hashes[k].get("gen_ms", 0),
                 "score": evaluation.scores[i], "error": pending.hashes[k].get("error", ""),
                 "confidence": c.confidence,
                 "signal": rated[i][1] if rated[i] else None, "signals": per_signal[i]}
                for i, (k, c) in enumerate(zip(keys, cands))
            ],
            "chosen": None if evaluation.chosen is None else {
                "peer_id": cands[evaluation.chosen].peer, "expert_id": cands[evaluation.chosen].expert_id},
            "reason": evaluation.reason,
        }
        if judging is not None:
            provenance["judges"] = judging["judges"]
        if evaluation.chosen is None:
            self.failed += 1
            statuses = sorted({c.status for c in cands})
            refusals = [pending.hashes[k].get("error", "") for k, c in zip(keys, cands) if c.status == "rejected"]
            if refusals and not timed_out:  # the prompt is at fault: asking again will not help
                raise BadQuery(f"{len(refusals)} of {len(cands)} experts cannot answer this prompt: "
                               f"{refusals[0] or 'no reason given'}")
            if timed_out or "timeout" in statuses or "slow" in statuses:
                raise DeadlineExceeded(f"no answer before the deadline (respondents: {', '.join(statuses)})")
            raise NoExpertAvailable(f"no usable answer (respondents: {', '.join(statuses)})")
        best = cands[evaluation.chosen]
        if on_delta is not None:
            streamed_here = pending.stream_key == keys[evaluation.chosen] and best.text.startswith(pending.streamed)
            rest = best.text[len(pending.streamed):] if streamed_here else best.text
            if pending.streamed and not streamed_here:
                log.warning("streamed text of query %s differs from the chosen answer", pending.query_id.hex())
            for piece in _pieces(rest):
                await on_delta(piece)
        finish = "length" if best.finish_reason == "length" else "stop"
        return ChatResult(
            text=best.text, finish_reason=finish,
            prompt_tokens=pending.hashes[keys[evaluation.chosen]].get("prompt_tokens", 0),
            completion_tokens=best.completion_tokens,
            query_id=pending.query_id.hex(), provenance=provenance,
        )

    def _evaluate(self, pending: _Pending, keys: list, prompt: wire.PromptBody):
        """The evaluator's verdict on the answers to ``keys``, copies counted
        once: at temperature 0, usable answers with the same text from experts
        that announce the same model file (sha256) are one voice."""
        cands = [pending.answers[k] for k in keys]
        if prompt.temperature != 0:
            return self.evaluator.evaluate(cands)
        voices = [(pending.asked[k].card.sha256, normalize(c.text)) if is_usable(c) and pending.asked[k].card.sha256
                  else None for k, c in zip(keys, cands)]
        return by_voice(self.evaluator, cands, voices)

    def _by_standing(self, evaluation, keys, cands, domain: str):
        """No majority, even after a tie-break: deliver the answer of the
        expert the ledger rates best in ``domain`` (ties: the evaluator's
        choice). Only the delivered answer changes; the ratings stay those of
        the undecided vote, so standing never rates itself."""
        usable = [i for i, c in enumerate(cands) if is_usable(c)]
        if not usable:
            return evaluation
        mean = {i: self.standing(keys[i][0], domain)[0] for i in usable}
        pick = max(usable, key=lambda i: (mean[i], i == evaluation.chosen))
        if pick == evaluation.chosen:
            return evaluation
        return dataclasses.replace(evaluation, chosen=pick, reason=(
            f"no majority among {len(usable)} answers: the expert with the best standing in "
            f"{domain!r} ({mean[pick]:.2f})"))

    def requested_model(self, req: ChatRequest) -> Optional[str]:
        """The model ``req`` names, None for any; UnknownModel if no expert
        known to this node (its own included) serves it."""
        self._refresh_local()
        model = None if req.model in (AUTO_MODEL, "auto", "") else req.model
        if model is not None and model not in self.directory.models(self.clock()):
            raise UnknownModel(f"no expert in the network serves model {req.model!r} "
                               f"(GET /v1/models lists them)")
        return model

    def _record_ratings(self, query_hash, keys, cands, rated, domain, pending) -> None:
        for key, cand, scored in zip(keys, cands, rated):
            if scored is None or key[0] == self.node.network.peer_id:
                continue  # no evidence, or our own expert: no self-rating
            self._record(wire.Rating(
                query_hash=query_hash, respondent=key[0], expert_id=cand.expert_id, domain=domain[:64],
                answer_hash=pending.hashes[key].get("answer_hash", b"") if cand.status == "ok" else b"",
                score=float(scored[0]), signal=scored[1],
            ))

    def _record(self, rating: wire.Rating) -> None:
        envelope = self.node.signer.seal(rating)
        if self.ratings is not None:
            self.ratings.put(envelope)
        if self.submit_rating is not None:
            self.submit_rating(envelope)

    async def _judge(self, prompt: wire.PromptBody, domain: str, keys, cands, n: int, req: ChatRequest) -> dict:
        """Ask up to ``n`` experts that wrote none of the answers to pick the
        best usable one, authors hidden and order shuffled; each vote weighs
        the judge's standing. {"scores": {index: share} or None, "judges": [...]}."""
        usable = [i for i, c in enumerate(cands) if is_usable(c)]
        authors = {k[0] for k in keys}
        pool = [r for r in self.directory.candidates(self.clock(), domain, None) if r.peer not in authors]
        if len(usable) < 2 or not pool:
            return {"scores": None, "judges": []}
        # the judge prompt runs at temperature 0: copies of one model would cast one vote twice
        chosen = self.policy.select(pool, n, domain, self.standing, self.rng, distinct_models=True).chosen
        order = self.rng.sample(usable, len(usable))
        question = next((m.content for m in reversed(prompt.messages) if m.role == "user"), "")
        body = wire.PromptBody(messages=tuple(wire.ChatMessage(r, c) for r, c in signals.judge_prompt(
            question, [cands[i].text for i in order])), max_tokens=self.judge_max_tokens, temperature=0.0)
        pending = _Pending(os.urandom(16), self.clock(), {ref.key: ref for ref in chosen})
        await self._collect(pending, body, domain, req.deadline_s or self.default_deadline_s)
        picks, report = [], []
        for ref in chosen:
            answer = pending.answers[ref.key]
            pick = signals.parse_pick(answer.text, len(order)) if answer.status == "ok" else None
            weight = signals.judge_weight(*self.standing(ref.peer, domain))
            picks.append((None if pick is None else order[pick], weight))
            report.append({"peer_id": ref.peer_str, "expert_id": ref.card.expert_id, "status": answer.status,
                           "weight": weight, "pick": None if pick is None else
                           {"peer_id": cands[order[pick]].peer, "expert_id": cands[order[pick]].expert_id}})
        return {"scores": signals.tally(picks, usable), "judges": report}

    def feedback(self, query_id: str, accept: bool) -> dict:
        """A user's verdict on the answer chosen for ``query_id``: one rating
        (signal "feedback", 1.0 or 0.0) for its respondent. UnknownQuery (404)
        for an unknown or expired id, FeedbackRepeated (409) the second time."""
        target = self.feedback_book.take(query_id)
        own = target.respondent == self.node.network.peer_id
        recorded = not own and self.weights.feedback > 0
        if recorded:
            self._record(wire.Rating(
                query_hash=target.query_hash, respondent=target.respondent, expert_id=target.expert_id,
                domain=target.domain, answer_hash=target.answer_hash, score=1.0 if accept else 0.0,
                signal=FEEDBACK))
        out = {"query_id": query_id, "accept": bool(accept), "recorded": recorded,
               "respondent": wire.peer_id_str(target.respondent), "expert_id": target.expert_id}
        if not recorded:
            out["reason"] = ("the answer came from this node's own expert, and no node rates itself" if own
                             else "the feedback signal's weight is 0")
        elif self.submit_rating is None:
            out["note"] = ("this node keeps no ledger (it runs without a genesis file): the rating waits "
                           "in its queue until the node runs with one")
        return out

    def traffic(self) -> dict:
        """Each respondent's share of the respondent slots of recent queries."""
        slots = Counter(peer for chosen in self._recent for peer in chosen)
        total = sum(slots.values())
        return {"queries": len(self._recent),
                "share": {peer: round(n / total, 4) for peer, n in slots.most_common()} if total else {}}

    def status(self) -> dict:
        return {"queries": self.queries, "queries_failed": self.failed, "queries_in_flight": len(self._pending),
                "respondents_forgotten": self.forgotten, "respondents_slow": self.slow,
                "respondents_gone": self.gone,
                "ratings_pending": len(self.ratings) if self.ratings is not None else 0,
                "known_experts": len(self.directory.all(self.clock()))}


def _pieces(text: str, size: int = 16):
    """Split text into stream chunks at word boundaries."""
    start = 0
    while start < len(text):
        end = min(len(text), start + size)
        while end < len(text) and not text[end].isspace() and end - start < 64:
            end += 1
        yield text[start:end]
        start = end
