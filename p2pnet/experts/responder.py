"""The expert side of a query: take sealed prompts addressed to this node's
experts, answer them within the deadline, and send back signed, sealed answers.

Queries and cancels come over direct streams (``/p2pnet/query/1.0.0``,
checked at the edge like gossip: see p2pnet/gossip/direct.py) or, as the
coordinator's fallback, by gossip on the queries topic. A query that arrives
twice (its direct stream timed out after it got here, and the coordinator
gossiped it) is served once.

Answers go straight to the coordinator over a direct stream; if that fails
they are published on the answers topic (still sealed to the coordinator)."""

from __future__ import annotations

import hashlib
import logging
import time
from collections import OrderedDict

import trio

from p2pnet import sealing, wire
from p2pnet.experts.expert import ExpertAnswer
from p2pnet.experts.streaming import answer_streaming
from p2pnet.gossip import topics
from p2pnet.gossip.errors import OutboxFull, RpcFailed

log = logging.getLogger("p2pnet.experts.responder")

DEADLINE_MARGIN_S = 0.25  # leave time for the answer to travel back


class Responder:
    def __init__(self, node, experts, nursery, *, max_inflight: int = 64, clock=time.time) -> None:
        self.node = node
        self.experts = {e.expert_id: e for e in experts}
        self.nursery = nursery
        self.clock = clock
        self.inflight = 0
        self.max_inflight = max_inflight
        self.served = 0
        self.refused_busy = 0
        self._coordinator_of: "OrderedDict[bytes, bytes]" = OrderedDict()  # query id -> coordinator
        self._taken: "OrderedDict[tuple, None]" = OrderedDict()  # (coordinator, query id, expert id) served
        self.duplicates = 0
        node.network.on(topics.QUERIES, self._on_message)
        node.network.on_request(wire.Query.KIND, self._on_direct)
        node.network.on_request(wire.Cancel.KIND, self._on_direct)

    # node service hooks
    def announce_extra(self) -> dict:
        return {"cards": tuple(e.card() for e in self.experts.values())}

    def status(self) -> dict:
        return {
            "experts": [_card_json(e.card()) for e in self.experts.values()],
            "answers_served": self.served,
            "answers_busy": self.refused_busy,
            "queries_duplicate": self.duplicates,
        }

    async def _on_direct(self, env: wire.Envelope) -> wire.Message:
        await self._on_message(env)
        return wire.Ack()

    @staticmethod
    def _remember(book: OrderedDict, key) -> None:
        book[key] = None
        while len(book) > 4096:
            book.popitem(last=False)

    async def _on_message(self, env: wire.Envelope) -> None:
        msg = env.message
        if isinstance(msg, wire.Cancel):
            if self._coordinator_of.get(msg.query_id) == env.sender:
                for expert in self.experts.values():
                    expert.cancel(msg.query_id)
            return
        if not isinstance(msg, wire.Query):
            return
        me = self.node.network.peer_id
        for sealed in msg.prompts:
            if sealed.recipient != me:
                continue
            if (env.sender, msg.query_id, sealed.expert_id) in self._taken:
                self.duplicates += 1
                continue
            self._remember(self._taken, (env.sender, msg.query_id, sealed.expert_id))
            if self.inflight >= self.max_inflight:
                self.refused_busy += 1
                self.nursery.start_soon(self._send, env.sender, msg.query_id, sealed.expert_id,
                                        ExpertAnswer("busy", error="node is busy"))
                continue
            self._coordinator_of[msg.query_id] = env.sender
            while len(self._coordinator_of) > 4096:
                self._coordinator_of.popitem(last=False)
            self.inflight += 1
            self.nursery.start_soon(self._serve, env.sender, msg, sealed)

    async def _serve(self, coordinator: bytes, query: wire.Query, sealed: wire.SealedPrompt) -> None:
        try:
            expert = self.experts.get(sealed.expert_id)
            if expert is None:
                result = ExpertAnswer("error", error=f"no expert {sealed.expert_id!r} here")
            else:
                try:
                    prompt = wire.PromptBody.unpack(sealing.open_box(self.node.identity, coordinator, sealed.box))
                except (sealing.SealError, wire.WireError) as exc:
                    result = ExpertAnswer("error", error=f"bad prompt: {exc}")
                else:
                    timeout = query.deadline_ms / 1000 - self.clock() - DEADLINE_MARGIN_S
                    if timeout <= 0:
                        result = ExpertAnswer("timeout", error="deadline passed before start")
                    elif prompt.stream:
                        result = await self._answer_streaming(coordinator, query, sealed, expert, prompt, timeout)
                    else:
                        result = await expert.answer(query.query_id, prompt, timeout=timeout)
            if result.status == "busy":
                self.refused_busy += 1
            elif result.status == "ok":
                self.served += 1
            await self._send(coordinator, query.query_id, sealed.expert_id, result)
        finally:
            self.inflight -= 1

    async def _answer_streaming(self, coordinator, query, sealed, expert, prompt, timeout) -> ExpertAnswer:
        """Answer while forwarding the text as it is generated (AnswerChunks,
        in order, over direct streams); the chunks are a preview, the signed
        Answer that follows is what counts."""
        index = 0
        broken = False

        async def send_chunk(text: str) -> None:
            nonlocal index, broken
            if broken:
                return  # keep draining; the final Answer still goes out
            chunk = wire.AnswerChunk(query.query_id, sealed.expert_id, index,
                                     sealing.seal(self.node.identity, coordinator, text.encode()))
            index += 1
            try:
                await self.node.network.request(coordinator, chunk, timeout_s=10)
            except (RpcFailed, trio.TooSlowError) as exc:
                log.info("streaming to %s stopped: %s", wire.peer_id_str(coordinator)[:16], exc)
                broken = True

        return await answer_streaming(expert, query.query_id, prompt, timeout=timeout, sink=send_chunk)

    async def _send(self, coordinator: bytes, query_id: bytes, expert_id: str, result: ExpertAnswer) -> None:
        body = wire.AnswerBody(text=result.text, finish_reason=result.finish_reason or result.status,
                               confidence=result.confidence,
                               passages=result.passages[:wire.AnswerBody.MAX_PASSAGES])
        answer = wire.Answer(
            query_id=query_id,
            expert_id=expert_id,
            status=result.status,
            box=sealing.seal(self.node.identity, coordinator, body.pack()),
            answer_hash=hashlib.sha256(result.text.encode()).digest(),
            prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens,
            gen_ms=int(result.gen_ms + result.prompt_ms),
            error=result.error[:500],
        )
        try:
            await self.node.network.request(coordinator, answer, timeout_s=10)
            return
        except (RpcFailed, trio.TooSlowError) as exc:
            log.info("direct answer to %s failed (%s); publishing it", wire.peer_id_str(coordinator)[:16], exc)
        try:
            self.node.network.publish_nowait(topics.ANSWERS, answer)
        except OutboxFull:
            log.warning("answer for %s dropped: outbox full", query_id.hex())


def _card_json(card: wire.ModelCard) -> dict:
    return {
        "expert_id": card.expert_id, "model": card.model, "sha256": card.sha256,
        "quantization": card.quantization, "n_ctx": card.n_ctx, "domains": list(card.domains),
        "prompt_tps": round(card.prompt_tps, 1), "gen_tps": round(card.gen_tps, 1),
        "price_per_1k": card.price_per_1k, "load": card.load, "max_concurrency": card.max_concurrency,
        "backend": card.backend, "gpu_layers": card.gpu_layers,
        **({"knowledge": card.knowledge, "knowledge_passages": card.knowledge_passages,
            "knowledge_sha256": card.knowledge_sha256} if card.knowledge else {}),
    }
