"""The coordinator: any node answers its own user's queries with experts
hosted across the network.

The rules of a query (whom to ask, patience, replacing silent or failed
respondents, escalation, tie-breaks, judging, evaluation, ratings) live in a
pure state machine, ``query_round.QueryRound``. This module is its Trio
driver: it feeds the round what arrives (answers, chunks, disconnections,
timer ticks) and carries out what the round asks for. It seals the prompt to
each respondent (NaCl box: relays see only ciphertext) and hands the Query to
the network, which sends each respondent its own part over a direct stream
(gossip on the queries topic as the fallback; cancels go the same way), runs
this node's own experts, streams text to the client, writes the signed
ratings to the durable local queue off the event loop, and forgets experts
that disconnected. The simulator runs this same driver and
round over its simulated network.

It implements p2pnet.query.QueryService.
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
from p2pnet.experts import domains, signals
from p2pnet.experts.directory import Directory, ExpertRef
from p2pnet.experts.evaluation import FEEDBACK, AgreementEvaluator, Evaluator, SignalWeights
from p2pnet.experts.patience import LatencyBook
from p2pnet.experts.query_round import (
    Ask, Cancel, Chunk, Close, Forget, Gone, QueryRound, Rate, Reply, RoundRules, RoundSetup, Stream, Tick,
)
from p2pnet.experts.selection import SelectionPolicy, Standing, UcbCostPolicy, no_standing
from p2pnet.experts.streaming import answer_streaming
from p2pnet.gossip import topics
from p2pnet.gossip.errors import OutboxFull
from p2pnet.query import AUTO_MODEL, Busy, ChatRequest, ChatResult, UnknownModel

log = logging.getLogger("p2pnet.experts.coordinator")

__all__ = ["AUTO_MODEL", "Coordinator"]

STREAM_BACKLOG = 64
"""Text pieces waiting for a slow client before a streaming respondent's
chunks wait too (back-pressure on its stream)."""


@dataclass(eq=False)
class _Run:
    """One query being driven: its round and what waits to be carried out."""

    round: QueryRound
    on_delta: Optional[Callable]
    nursery: Optional[trio.Nursery] = None
    todo: deque = field(default_factory=deque)
    wake: trio.Event = field(default_factory=trio.Event)
    drained: trio.Event = field(default_factory=trio.Event)
    scopes: dict = field(default_factory=dict)  # open batch id -> CancelScopes of its local work

    def open_scope(self, batch_id: bytes) -> Optional[trio.CancelScope]:
        """A cancel scope for work on ``batch_id``, cancelled when the batch
        closes; None if it already has."""
        scopes = self.scopes.get(batch_id)
        if scopes is None:
            return None
        scope = trio.CancelScope()
        scopes.append(scope)
        return scope

    async def deliver(self, text: str) -> None:
        """Pass streamed text on to the client; a client gone away stops the stream."""
        if self.on_delta is None or not text:
            return
        try:
            await self.on_delta(text)
        except Exception:
            self.on_delta = None


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
        self.default_deadline_s = default_deadline_s
        self.default_max_tokens = default_max_tokens
        self.max_pending = max_pending
        self.rng = rng or random.Random(int.from_bytes(os.urandom(8), "big"))
        self.clock = clock
        self.weights = weights
        self.default_judges = default_judges
        self.rules = RoundRules(default_respondents=default_respondents, tiebreak=tiebreak,
                                patience_factor=patience_factor, patience_floor_s=patience_floor_s,
                                judge_max_tokens=judge_max_tokens, weights=weights)
        self.watch_s = watch_s  # how often a query in flight checks that its respondents are connected
        self.feedback_book = signals.FeedbackBook(feedback_capacity)
        self.latency = LatencyBook()  # what respondents' answers took against their cards, learned across queries
        self.directory = Directory()
        self._runs: set = set()
        self._batches: dict[bytes, _Run] = {}  # batch id (query id on the wire) -> its run
        self.queries = 0
        self.failed = 0
        self.forgotten = 0  # respondents no longer connected, their cards forgotten
        self.slow = 0  # respondents given up on after their patience
        self.gone = 0  # respondents that disconnected while asked
        self.discovered = 0  # announcements fetched on asking because no expert was known
        self.discovered_dht = 0  # of those, from peers the DHT's provider records named
        self.discover_timeout_s = 5.0
        self.chunks_received = 0
        self._recent: deque = deque(maxlen=200)  # respondents of recent queries, for traffic shares
        node.network.on(topics.ANNOUNCE, self._on_announce)
        node.network.on(topics.ANSWERS, self._on_answer_gossip)
        node.network.on_request(wire.Answer.KIND, self._on_answer_direct)
        node.network.on_request(wire.AnswerChunk.KIND, self._on_chunk)

    @property
    def default_respondents(self) -> int:
        return self.rules.default_respondents

    @default_respondents.setter
    def default_respondents(self, k: int) -> None:
        self.rules = dataclasses.replace(self.rules, default_respondents=k)

    @property
    def tiebreak(self) -> int:
        return self.rules.tiebreak

    @tiebreak.setter
    def tiebreak(self, n: int) -> None:
        self.rules = dataclasses.replace(self.rules, tiebreak=n)

    # ------------------------------------------------------------- inputs

    async def _on_announce(self, env: wire.Envelope) -> None:
        self.directory.take_announce(env, self.clock())

    async def _on_answer_gossip(self, env: wire.Envelope) -> None:
        self._take_answer(env)

    async def _on_answer_direct(self, env: wire.Envelope) -> wire.Message:
        self._take_answer(env)
        return wire.Ack()

    async def _on_chunk(self, env: wire.Envelope) -> wire.Message:
        chunk: wire.AnswerChunk = env.message
        run = self._batches.get(chunk.query_id)
        key = (env.sender, chunk.expert_id)
        if run is None or not run.round.streams(chunk.query_id, key, chunk.index):
            return wire.Ack()
        try:
            text = sealing.open_box(self.node.identity, env.sender, chunk.box).decode()
        except (sealing.SealError, UnicodeDecodeError):
            return wire.RpcError("bad_request", "unreadable chunk")
        while len(run.todo) >= STREAM_BACKLOG and not run.round.finished:
            await run.drained.wait()  # a slow client: the respondent's stream waits for it
        if any(isinstance(a, Stream) for a in self._feed(run, Chunk(chunk.query_id, key, chunk.index, text))):
            self.chunks_received += 1
        return wire.Ack()

    def _take_answer(self, env: wire.Envelope) -> None:
        ans: wire.Answer = env.message
        run = self._batches.get(ans.query_id)
        key = (env.sender, ans.expert_id)
        if run is None or not run.round.waits_for(ans.query_id, key):
            return  # late, or not ours: nothing to do
        status, text, finish, confidence, passages = ans.status, "", ans.status, None, ()
        try:
            body = wire.AnswerBody.unpack(sealing.open_box(self.node.identity, env.sender, ans.box))
            text, finish, confidence, passages = body.text, body.finish_reason, body.confidence, body.passages
            if ans.status == "ok" and hashlib.sha256(text.encode()).digest() != ans.answer_hash:
                raise wire.WireError(wire.SCHEMA, "answer_hash does not match the text")
        except (sealing.SealError, wire.WireError) as exc:
            log.warning("invalid answer from %s: %s", env.sender_str[:16], exc)
            status, text = "invalid", ""
        self._feed(run, Reply(ans.query_id, key, status, text, ans.completion_tokens, finish, confidence,
                              ans.answer_hash, ans.prompt_tokens, ans.gen_ms, ans.error, passages))

    def _feed(self, run: _Run, event) -> list:
        """Step ``run``'s round with ``event``; its driver loop carries out the actions."""
        actions = run.round.step(event, self.clock())
        if actions:
            run.todo.extend(actions)
            run.wake.set()
        return actions

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

    def _route(self, req: ChatRequest, now: float):
        """The one place a query's domain is resolved: the request's, or
        inferred from the question and the term summaries the experts known
        at ``now`` announce (the prompt stays here)."""
        return domains.resolve(req.domain, domains.last_user_text(req.messages),
                               (r.card for r in self.directory.all(now)))

    async def _discover(self, domain: str, budget_s: float, limit: int = 3) -> int:
        """No expert for ``domain`` is known here (its announcements have not
        reached this node yet, or it joined a moment ago), within ``budget_s``:
        with the DHT on, ask which peers provide the domain
        (p2pnet.gossip.providers), dial up to ``limit`` of them and fetch
        their directories of that domain; if that finds nothing, fetch the
        whole directory of up to 2 connected peers. Returns how many
        announcements were taken."""
        net = self.node.network
        if budget_s <= 0 or not hasattr(net, "fetch_directory"):
            return 0
        taken = 0
        providers = getattr(net, "providers", None)
        with trio.move_on_after(budget_s):
            found = await providers.find_domain(domain, count=limit * 2) if providers is not None and domain else []
            for p in [p for p in found if p.peer != net.peer_id][:limit]:
                try:
                    if p.peer not in net.peers() and not await net.connector.dial_addrs(p.peer, p.addrs):
                        continue
                    got = await net.fetch_directory(p.peer, timeout_s=budget_s, domain=domain)
                    taken += got
                    self.discovered_dht += got
                except Exception as exc:  # a provider that left or refuses: try the next
                    log.info("discovering %r experts at %s: %s", domain, wire.peer_id_str(p.peer)[:16], exc)
            for peer in ([] if taken else self.rng.sample(list(net.peers()), min(2, len(net.peers())))):
                try:
                    taken += await net.fetch_directory(peer, timeout_s=budget_s)
                except Exception as exc:
                    log.info("directory from %s: %s", wire.peer_id_str(peer)[:16], exc)
        if taken:
            self.discovered += taken
            log.info("no expert for %r was known: took %d announcement(s) found on asking", domain, taken)
        return taken

    def _join_shards(self, domain: str, candidates) -> None:
        """Take the announce shard of the domain asked in (and of "general"
        when its experts stand in), so the load the candidates announce
        stays live here (p2pnet.gossip.shards)."""
        ask = getattr(self.node.network, "ask_domain", None)
        if ask is None or not domain:
            return
        ask(domain)
        if candidates and not any(domain in r.card.domains for r in candidates):
            ask("general")

    async def chat(self, req: ChatRequest, on_delta=None, *, probe: Optional[signals.Probe] = None) -> ChatResult:
        """Answer ``req``. ``probe`` (the validator's Prober) grades each answer
        against a known answer instead of by agreement; on the wire a probe is
        an ordinary query."""
        if len(self._runs) >= self.max_pending:
            raise Busy(f"{self.max_pending} queries in flight on this node; try again shortly")
        now = self.clock()
        model = self.requested_model(req)
        route = self._route(req, now)
        domain = route.domain
        judges = 0 if probe is not None else (req.judges if req.judges is not None else self.default_judges)
        prompt = wire.PromptBody(
            messages=tuple(wire.ChatMessage(r, c) for r, c in req.messages),
            max_tokens=req.max_tokens or self.default_max_tokens,
            temperature=float(req.temperature or 0.0),
        )
        candidates = self.directory.candidates(now, domain, model)
        if not candidates and probe is None:
            deadline = req.deadline_s or self.default_deadline_s
            if await self._discover(domain, min(self.discover_timeout_s, deadline / 4)):
                now = self.clock()  # what was found may change the inferred domain too
                route = self._route(req, now)
                domain = route.domain
                candidates = self.directory.candidates(now, domain, model)
        self._join_shards(domain, candidates)
        rnd = QueryRound(RoundSetup(
            domain=domain, prompt=prompt, candidates=candidates,
            deadline_s=req.deadline_s or self.default_deadline_s, policy=self.policy, evaluator=self.evaluator,
            standing=self.standing, rng=self.rng, new_id=lambda: os.urandom(16), me=self.node.network.peer_id,
            rules=self.rules, respondents=req.respondents, judges=judges or 0, probe=probe,
            streaming=on_delta is not None, latency=self.latency,
            judge_pool=self.directory.candidates(now, domain, None) if judges else ()), now)
        run = _Run(rnd, on_delta)
        self.queries += 1
        self._runs.add(run)
        try:
            async with trio.open_nursery() as nursery:
                run.nursery = nursery
                run.todo.extend(rnd.start(now))
                await self._drive(run)
                nursery.cancel_scope.cancel()
        finally:
            self._runs.discard(run)
            for batch_id in [b for b, r in self._batches.items() if r is run]:
                del self._batches[batch_id]
        outcome = rnd.outcome
        if outcome.stream_mismatch:
            log.warning("streamed text of query %s differs from the chosen answer", rnd.query_id.hex())
        if outcome.error is not None:
            self.failed += 1
            raise outcome.error
        if outcome.feedback is not None:
            self.feedback_book.remember(rnd.query_id.hex(), outcome.feedback)
        result = outcome.result
        if route.inferred:
            result = dataclasses.replace(result, provenance=dataclasses.replace(
                result.provenance, routing=route.to_json()))
        nat = getattr(self.node.network, "nat", None)
        if nat is not None:  # the path to each respondent: direct, hole-punched or relayed
            result = dataclasses.replace(result, provenance=dataclasses.replace(
                result.provenance, paths=nat.paths(r.peer_id for r in result.provenance.respondents)))
        return result

    async def _drive(self, run: _Run) -> None:
        """Carry out the round's actions, and tick it at the times it asks for, until it is done."""
        rnd = run.round
        while True:
            while run.todo:
                await self._do(run, run.todo.popleft())
            run.drained.set()
            run.drained = trio.Event()
            if rnd.finished:
                return
            run.wake = trio.Event()
            wake = rnd.wake_at()
            with trio.move_on_at(trio.current_time() + max(0.0, wake - self.clock())) as timer:
                await run.wake.wait()
            if timer.cancelled_caught:
                self._feed(run, Tick())

    async def _do(self, run: _Run, action) -> None:
        me = self.node.network.peer_id
        if isinstance(action, Stream):
            await run.deliver(action.text)
        elif isinstance(action, Ask):
            self._ask(run, action)
        elif isinstance(action, Cancel):
            if action.why == "slow":
                self.slow += len(action.keys)
            if any(key[0] != me for key in action.keys):
                try:
                    self.node.network.send_cancel_nowait(action.batch_id)
                except OutboxFull:
                    pass  # best effort: the respondent's own deadline ends it
                self._forget_unconnected(action.keys)
        elif isinstance(action, Close):
            self._batches.pop(action.batch_id, None)
            for scope in run.scopes.pop(action.batch_id, ()):
                scope.cancel()
        elif isinstance(action, Forget):
            self.gone += 1
            self._forget(action.key)
        elif isinstance(action, Rate):
            await self._record(action.rating)

    def _ask(self, run: _Run, ask: Ask) -> None:
        """Send ``ask``'s prompt, sealed, to its remote respondents and start this node's own."""
        me = self.node.network.peer_id
        self._batches[ask.batch_id] = run
        if ask.traffic:
            self._recent.append(tuple(ref.peer_str for ref in ask.refs))
        run.scopes[ask.batch_id] = []
        remote = [ref for ref in ask.refs if ref.peer != me]
        for ref in ask.refs:
            if ref.peer == me:
                run.nursery.start_soon(self._ask_local, run, ask, ref)
        if not remote:
            return
        connected = set(self.node.network.peers())
        watched = tuple(ref.key for ref in remote if ref.peer in connected)
        if watched:
            run.nursery.start_soon(self._watch, run, ask.batch_id, watched)
        plain = ask.prompt.pack()
        query = wire.Query(
            query_id=ask.batch_id, domain=run.round.s.domain, deadline_ms=int(ask.deadline * 1000),
            prompts=tuple(wire.SealedPrompt(ref.peer, ref.card.expert_id,
                                            sealing.seal(self.node.identity, ref.peer, plain)) for ref in remote),
        )
        try:
            self.node.network.send_query_nowait(query)
        except OutboxFull:
            for ref in remote:
                self._feed(run, Reply(ask.batch_id, ref.key, "busy"))

    async def _ask_local(self, run: _Run, ask: Ask, ref: ExpertRef) -> None:
        expert = self.local[ref.card.expert_id]
        scope = run.open_scope(ask.batch_id)
        if scope is None:
            return
        with scope:
            timeout = max(0.1, ask.deadline - self.clock())
            if ask.stream_key == ref.key:
                index = 0

                async def sink(text: str) -> None:
                    nonlocal index
                    self._feed(run, Chunk(ask.batch_id, ref.key, index, text))
                    index += 1

                result = await answer_streaming(expert, ask.batch_id, ask.prompt, timeout=timeout, sink=sink)
            else:
                result = await expert.answer(ask.batch_id, ask.prompt, timeout=timeout)
            self._feed(run, Reply(ask.batch_id, ref.key, result.status, result.text, result.completion_tokens,
                                  result.finish_reason, result.confidence,
                                  hashlib.sha256(result.text.encode()).digest(), result.prompt_tokens,
                                  int(result.gen_ms + result.prompt_ms), result.error, result.passages))

    async def _watch(self, run: _Run, batch_id: bytes, watched: tuple) -> None:
        """Every ``watch_s``: a watched respondent that has not answered and is
        no longer connected is gone (a node that died or left); the round
        stops waiting for it."""
        scope = run.open_scope(batch_id)
        if scope is None:
            return
        with scope:
            while True:
                await trio.sleep(self.watch_s)
                waiting = set(run.round.silent())
                waiting = [key for key in watched if key in waiting]
                if not waiting:
                    return
                connected = set(self.node.network.peers())
                gone = tuple(key for key in waiting if key[0] not in connected)
                if gone:
                    self._feed(run, Gone(batch_id, gone))

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

    def requested_model(self, req: ChatRequest) -> Optional[str]:
        """The model ``req`` names, None for any; UnknownModel if no expert
        known to this node (its own included) serves it."""
        self._refresh_local()
        model = None if req.model in (AUTO_MODEL, "auto", "") else req.model
        if model is not None and model not in self.directory.models(self.clock()):
            raise UnknownModel(f"no expert in the network serves model {req.model!r} "
                               f"(GET /v1/models lists them)")
        return model

    async def _record(self, rating: wire.Rating) -> None:
        """Sign ``rating``; store it in the durable queue (an LMDB write, off
        the event loop) and hand it to the ledger."""
        envelope = self.node.signer.seal(rating)
        if self.ratings is not None:
            await trio.to_thread.run_sync(self.ratings.put, envelope)
        if self.submit_rating is not None:
            self.submit_rating(envelope)

    def _record_now(self, rating: wire.Rating) -> None:
        """:meth:`_record` for a caller outside the event loop's hot path (one user's feedback)."""
        envelope = self.node.signer.seal(rating)
        if self.ratings is not None:
            self.ratings.put(envelope)
        if self.submit_rating is not None:
            self.submit_rating(envelope)

    def feedback(self, query_id: str, accept: bool) -> dict:
        """A user's verdict on the answer chosen for ``query_id``: one rating
        (signal "feedback", 1.0 or 0.0) for its respondent. UnknownQuery (404)
        for an unknown or expired id, FeedbackRepeated (409) the second time."""
        target = self.feedback_book.take(query_id)
        own = target.respondent == self.node.network.peer_id
        recorded = not own and self.weights.feedback > 0
        if recorded:
            self._record_now(wire.Rating(
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
        pacer = getattr(self.policy, "pacer", None)  # a budget: the price of accuracy it has moved to
        budget = {"budget": pacer.state()} if pacer is not None else {}
        return {**budget, "queries": self.queries, "queries_failed": self.failed, "queries_in_flight": len(self._runs),
                "respondents_forgotten": self.forgotten, "respondents_slow": self.slow,
                "respondents_gone": self.gone, "experts_discovered": self.discovered,
                "experts_discovered_dht": self.discovered_dht,
                "ratings_pending": len(self.ratings) if self.ratings is not None else 0,
                "known_experts": len(self.directory.all(self.clock()))}

