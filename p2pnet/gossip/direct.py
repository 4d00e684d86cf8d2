"""Direct streams of a :class:`~p2pnet.gossip.network.GossipNetwork`.

Two libp2p protocols, each one signed request and one signed reply per
stream (framing in rpc.py):

- ``/p2pnet/rpc/1.0.0``: request/response (answers, answer chunks, blocks,
  the directory, shutdown flushes); any kind with a handler except those of
  the query protocol.
- ``/p2pnet/query/1.0.0``: a coordinator's sealed Query and its Cancel, sent
  straight to the chosen respondents instead of gossiped to every node
  (issue 21, item 1). Only those two kinds are taken on it; any other is the
  sender's fault.

Both are checked at the edge exactly as gossip is: the frame's size, the
envelope's form, schema and signature, that its signer is the peer at the
other end of the stream, replay and staleness (the same
:class:`wire.ReplayGuard` as gossip). A refused message is counted
(``stats.dropped`` and ``stats.direct``) and struck against the peer, never a
crash. Each protocol has its own bounded number of streams served at once;
past it a request gets ``busy``.

:class:`DirectQueries` sends queries and cancels: one Query per respondent
holding only the prompt sealed to it (a respondent learns nobody else's), from
a bounded queue drained by a few workers. A respondent that is not connected
is dialled at the addresses it announced (counted); one to which no stream
can be opened (unreachable, or it does not serve the protocol) gets its part
by gossip on the queries topic (every node relays that topic, so the
fallback reaches a respondent through nodes without experts; a query then
costs every node again, as before, but only for the respondents that could
not be reached directly). A timeout or a busy reply is not gossiped (see
``_deliver``); a query whose stream broke or whose taking was never
acknowledged is tried again directly (0.5 s, 1 s, 2 s later, while its
deadline is ahead and it was not cancelled), since nothing else would tell
the round that its respondent never got it. A Cancel goes the same way.

Why direct streams rather than per-domain query topics: the coordinator has
already chosen its k respondents and sealed the prompt to each, so a query
needs exactly k deliveries; a domain topic would still deliver every query to
every expert of the domain (and mesh maintenance for each domain topic on
each of them), and a coordinator would have to join or fan out to each
domain it asks. Answers keep coming back as before, on their own rpc stream
from the respondent: the query stream is closed as soon as the respondent
has taken the query, so no stream is held open for the length of a
generation. When that rpc fails, the responder's fallback (publishing on the
answers topic, which every node takes) is turned into one more direct try to
the coordinator whose Query came here, dialling it if need be
(``send_answer_nowait``), retried with backoff (0.25 s doubling, 5 tries,
about 8 s in all: a relayed coordinator whose relay just died is reachable
again through its other relay within a second); if every try fails the
answer is lost and counted (``answer_lost``), not flooded. Only an answer to a query this node did not
take over a stream or the queries topic is still gossiped.
"""

from __future__ import annotations

import logging
from collections import Counter, OrderedDict
from typing import Optional

import trio

from p2pnet import wire
from p2pnet.gossip import rpc, topics
from p2pnet.gossip.errors import OutboxFull, RpcFailed

log = logging.getLogger("p2pnet.gossip")

QUERY_KINDS = frozenset({wire.Query.KIND, wire.Cancel.KIND})
FALLBACK_CODES = frozenset({"unreachable", "unsupported"})
"""Direct failures after which a query goes by gossip: no stream could be opened."""
ANSWER_RETRY_CODES = frozenset({"unreachable", "stream"})  # an answer's try that is worth another
QUERY_RETRY_CODES = frozenset({"timeout", "stream", "closed"})
"""A query's direct try that is worth another: the stream opened but broke, or
the respondent never said it took the query (a relay that died with the query
in it, a respondent stalled for a while). A respondent takes a query once
(the responder keeps the ids it took), so a second copy is harmless."""


def _remember(book: OrderedDict, key, value, limit: int) -> None:
    """``book[key] = value``, the oldest entries dropped past ``limit``."""
    book[key] = value
    while len(book) > limit:
        book.popitem(last=False)


def protocol_takes(protocol: str, kind: str) -> bool:
    """Whether a request of ``kind`` belongs on ``protocol``."""
    if protocol == topics.QUERY_PROTOCOL:
        return kind in QUERY_KINDS
    return kind not in QUERY_KINDS


def split_query(query: wire.Query) -> list[tuple[bytes, wire.Query]]:
    """One Query per respondent, each holding only the prompts sealed to it."""
    by_peer: "OrderedDict[bytes, list]" = OrderedDict()
    for sealed in query.prompts:
        by_peer.setdefault(sealed.recipient, []).append(sealed)
    return [(peer, wire.Query(query_id=query.query_id, domain=query.domain, deadline_ms=query.deadline_ms,
                              prompts=tuple(prompts)))
            for peer, prompts in by_peer.items()]


class EarlyCancels:
    """Cancels remembered by (coordinator, query id), at most ``limit``, each
    for ``keep_s``. A Query and its Cancel travel on separate streams (and
    either may go by gossip), so a Cancel can overtake its Query: the Query
    that comes after its own Cancel is then dropped instead of served.
    Pure: time is passed in."""

    def __init__(self, limit: int = 1024, keep_s: float = 60.0) -> None:
        self.limit = limit
        self.keep_s = keep_s
        self._seen: "OrderedDict[tuple, float]" = OrderedDict()  # key -> when it was cancelled

    def note(self, coordinator: bytes, query_id: bytes, now: float) -> None:
        key = (coordinator, query_id)
        self._seen.pop(key, None)
        self._seen[key] = now
        while len(self._seen) > self.limit:
            self._seen.popitem(last=False)

    def cancelled(self, coordinator: bytes, query_id: bytes, now: float) -> bool:
        """Whether ``query_id`` from ``coordinator`` was cancelled less than ``keep_s`` ago."""
        while self._seen:
            key, at = next(iter(self._seen.items()))
            if now - at < self.keep_s:
                break
            del self._seen[key]
        at = self._seen.get((coordinator, query_id))
        return at is not None and now - at < self.keep_s

    def __len__(self) -> int:
        return len(self._seen)


class Streams:
    """The direct-stream side of GossipNetwork (a mixin: it uses the
    network's host, signer, guard, stats and handlers)."""

    def _overtaken(self, env: wire.Envelope) -> bool:
        """Note a Cancel; True for a Query whose Cancel came first (dropped, counted)."""
        msg = env.message
        now = self.clock()
        if isinstance(msg, wire.Cancel):
            self.early_cancels.note(env.sender, msg.query_id, now)
        elif isinstance(msg, wire.Query):
            if self.early_cancels.cancelled(env.sender, msg.query_id, now):
                self.stats.direct["query_after_its_cancel"] += 1
                return True
            self.direct.note_asker(msg.query_id, env.sender)
        return False

    async def request(self, peer: bytes, message: wire.Message, timeout_s: Optional[float] = None,
                      max_reply_bytes: Optional[int] = None,
                      protocol: str = topics.RPC_PROTOCOL) -> wire.Message:
        """Send ``message`` to ``peer`` over a direct stream; return its reply."""
        self._rpc_busy[peer] += 1
        try:
            return await self._request(peer, message, timeout_s, max_reply_bytes or self.params.max_message_bytes,
                                       protocol)
        finally:
            self._rpc_busy[peer] -= 1
            if not self._rpc_busy[peer]:
                del self._rpc_busy[peer]

    async def _request(self, peer: bytes, message: wire.Message, timeout_s: Optional[float],
                       max_reply_bytes: int, protocol: str) -> wire.Message:
        from libp2p.custom_types import TProtocol
        from libp2p.peer.id import ID

        if peer == self.peer_id:
            raise RpcFailed("cannot request from self", "self")
        with trio.fail_after(timeout_s or self.rpc_timeout_s):
            try:
                stream = await self.host.new_stream(ID(peer), [TProtocol(protocol)])
            except trio.TooSlowError:
                raise
            except Exception as exc:
                raise RpcFailed(f"cannot open a stream to {wire.peer_id_str(peer)[:16]}: {exc}", "unreachable") from None
            try:
                await rpc.write_frame(stream, self.signer.seal(message))
                data = await rpc.read_frame(stream, max_reply_bytes)
            except RpcFailed:
                raise
            except Exception as exc:
                raise RpcFailed(f"stream to {wire.peer_id_str(peer)[:16]} failed: {exc}", "stream") from None
            finally:
                await rpc.close_quietly(stream)
        try:
            env = wire.open_envelope(data, max_reply_bytes)
        except wire.WireError as exc:
            raise RpcFailed(f"invalid reply: {exc}", exc.reason) from None
        if env.sender != peer:
            raise RpcFailed("reply signed by another peer", wire.BAD_SIGNATURE)
        if isinstance(env.message, wire.RpcError):
            raise RpcFailed(f"peer refused: {env.message.code}: {env.message.message}", env.message.code)
        return env.message

    def _stream_handlers(self) -> dict:
        """protocol id -> the handler py-libp2p calls with each new stream."""
        async def rpc_stream(stream) -> None:
            await self._serve_stream(stream, topics.RPC_PROTOCOL, self._rpc_slots)

        async def query_stream(stream) -> None:
            await self._serve_stream(stream, topics.QUERY_PROTOCOL, self._query_slots)

        return {topics.RPC_PROTOCOL: rpc_stream, topics.QUERY_PROTOCOL: query_stream}

    def _refuse_direct(self, label: str, peer: bytes, reason: str, detail: str) -> None:
        self.stats.direct[f"{label}_dropped_{reason}"] += 1
        self._strike(peer, reason, f"{label} stream: {detail}", self.clock())

    async def _serve_stream(self, stream, protocol: str, slots: trio.Semaphore) -> None:
        peer = stream.muxed_conn.peer_id.to_bytes()
        label = "query" if protocol == topics.QUERY_PROTOCOL else "rpc"
        self._rpc_busy[peer] += 1
        try:
            if slots.value == 0:
                self.stats.direct[f"{label}_busy"] += 1
                await self._reply(stream, wire.RpcError("busy", "too many requests in flight"))
                return
            async with slots:
                with trio.fail_after(self.rpc_timeout_s):
                    try:
                        data = await rpc.read_frame(stream, self.params.max_message_bytes)
                    except RpcFailed as exc:
                        if exc.code == "oversized":
                            self._refuse_direct(label, peer, wire.OVERSIZED, str(exc))
                            await self._reply(stream, wire.RpcError("bad_request", str(exc)))
                            return
                        raise
                    try:
                        env = wire.open_envelope(data, self.params.max_message_bytes)
                        if env.sender != peer:
                            raise wire.WireError(wire.BAD_SIGNATURE, "request signed by another peer")
                        if label == "query" and not protocol_takes(protocol, env.kind):
                            raise wire.WireError(wire.SCHEMA, f"{env.kind} does not belong on {protocol}")
                        self.guard.check(env, int(self.clock() * 1000))
                    except wire.WireError as exc:
                        self._refuse_direct(label, peer, exc.reason, str(exc))
                        await self._reply(stream, wire.RpcError("bad_request", str(exc)))
                        return
                    handler = self._rpc_handlers.get(env.kind) if protocol_takes(protocol, env.kind) else None
                    if handler is None:
                        await self._reply(stream, wire.RpcError("unsupported", f"no handler for {env.kind}"))
                        return
                    self.stats.direct[f"{label}_in"] += 1
                    if label == "query" and self._overtaken(env):
                        await self._reply(stream, wire.Ack("cancelled"))
                        return
                    try:
                        reply = await handler(env)
                    except Exception as exc:
                        log.exception("rpc handler for %s failed", env.kind)
                        reply = wire.RpcError("internal", type(exc).__name__)
                    await self._reply(stream, reply)
        except (trio.TooSlowError, RpcFailed) as exc:
            self.stats.direct[f"{label}_stream_dropped"] += 1
            log.info("%s stream from %s dropped: %s", label, wire.peer_id_str(peer)[:20], exc or "timeout")
        except Exception as exc:
            self.stats.direct[f"{label}_stream_dropped"] += 1
            log.info("%s stream from %s failed: %s", label, wire.peer_id_str(peer)[:20], exc)
        finally:
            self._rpc_busy[peer] -= 1
            if not self._rpc_busy[peer]:
                del self._rpc_busy[peer]
            await rpc.close_quietly(stream)

    async def _reply(self, stream, message: wire.Message) -> None:
        await rpc.write_frame(stream, self.signer.seal(message))


class DirectQueries:
    """Queries and cancels straight to their respondents, gossip as the fallback.

    ``send_query_nowait`` and ``send_cancel_nowait`` only queue (OutboxFull
    when the queue has no room for all of a query's parts); ``workers`` tasks
    deliver. Counters are in ``net.stats.direct``."""

    ANSWER_RETRY_S = (0.25, 0.5, 1.0, 2.0, 4.0)  # the pauses before an answer's later tries
    QUERY_RETRY_S = (0.5, 1.0, 2.0)  # the pauses before a query's later tries (QUERY_RETRY_CODES)
    MAX_RETRYING = 64  # messages waiting for a later try at once; past it one is given up and counted

    def __init__(self, net, *, queue_size: int = 512, workers: int = 16, timeout_s: float = 5.0,
                 dial_timeout_s: float = 5.0, remember: int = 4096) -> None:
        self.net = net
        self._nursery: Optional[trio.Nursery] = None
        self._retrying = 0
        self.workers = workers
        self.timeout_s = timeout_s
        self.dial_timeout_s = dial_timeout_s
        self.remember = remember
        self.queue_size = queue_size
        self._send, self._recv = trio.open_memory_channel(queue_size)
        self._sent_to: "OrderedDict[bytes, tuple]" = OrderedDict()  # query id -> respondents
        self._askers: "OrderedDict[bytes, bytes]" = OrderedDict()  # query id taken here -> its coordinator
        self._cancelled: "OrderedDict[bytes, None]" = OrderedDict()  # query ids cancelled here: not tried again

    @property
    def counts(self) -> Counter:
        return self.net.stats.direct

    def _room(self) -> int:
        return self.queue_size - self._send.statistics().current_buffer_used

    def send_query_nowait(self, query: wire.Query) -> None:
        parts = split_query(query)
        if self.net.stopping:
            raise OutboxFull("node is shutting down")
        if self._room() < len(parts):
            self.net.stats.drop("direct_queue_full")
            raise OutboxFull(f"direct query queue full ({self.queue_size})")
        _remember(self._sent_to, query.query_id, tuple(peer for peer, _ in parts), self.remember)
        for peer, part in parts:
            self._send.send_nowait(("query", peer, part))

    def send_cancel_nowait(self, query_id: bytes) -> None:
        """Cancel ``query_id`` at each respondent it was sent to (none if unknown here)."""
        peers = self._sent_to.get(query_id, ())
        _remember(self._cancelled, query_id, None, self.remember)
        if self._room() < len(peers):
            self.net.stats.drop("direct_queue_full")
            raise OutboxFull(f"direct query queue full ({self.queue_size})")
        for peer in peers:
            self._send.send_nowait(("cancel", peer, wire.Cancel(query_id)))

    def note_asker(self, query_id: bytes, coordinator: bytes) -> None:
        _remember(self._askers, query_id, coordinator, self.remember)

    def send_answer_nowait(self, answer: wire.Answer) -> bool:
        """An Answer whose direct request failed (the responder's fallback):
        sent again over a direct stream to the coordinator whose Query came
        here, dialling it if need be, and never gossiped (the answers topic
        would deliver it to every node). False if no Query of that id came
        here (the caller gossips it); OutboxFull when the queue is full."""
        coordinator = self._askers.get(answer.query_id)
        if coordinator is None:
            return False
        try:
            self._send.send_nowait(("answer", coordinator, answer))
        except trio.WouldBlock:
            self.net.stats.drop("direct_queue_full")
            raise OutboxFull(f"direct query queue full ({self.queue_size})") from None
        return True

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for _ in range(self.workers):
                nursery.start_soon(self._worker)

    async def _worker(self) -> None:
        async for what, peer, message in self._recv:
            await self._try(what, peer, message, 0)

    async def _try(self, what: str, peer: bytes, message: wire.Message, tries: int) -> None:
        """One try; a failed answer or query is tried again later (off the
        workers) while tries remain and, for a query, while it is still wanted."""
        if await self._deliver(what, peer, message):
            return
        pauses = self.ANSWER_RETRY_S if what == "answer" else self.QUERY_RETRY_S
        if (tries >= len(pauses) or self.net.stopping or self._nursery is None
                or self._retrying >= self.MAX_RETRYING or not self._wanted(message, pauses[tries])):
            self.counts["answer_lost" if what == "answer" else f"{what}_failed"] += 1
            return
        self.counts[f"{what}_retried"] += 1
        self._retrying += 1
        self._nursery.start_soon(self._retry, what, peer, message, tries, pauses[tries])

    def _wanted(self, message: wire.Message, pause: float) -> bool:
        """A query is worth another try after ``pause`` if it was not cancelled
        and its deadline is later than that; an answer always is."""
        if not isinstance(message, wire.Query):
            return True
        return (message.query_id not in self._cancelled
                and self.net.clock() + pause < message.deadline_ms / 1000)

    async def _retry(self, what: str, peer: bytes, message: wire.Message, tries: int, pause: float) -> None:
        try:
            await trio.sleep(pause)
        finally:
            self._retrying -= 1
        if not self._wanted(message, 0.0):
            self.counts["query_failed"] += 1  # cancelled (or past its deadline) while it waited
            return
        await self._try(what, peer, message, tries + 1)

    async def _deliver(self, what: str, peer: bytes, message: wire.Message) -> bool:
        """Over a direct stream; by gossip only if no stream could be opened
        (unreachable, or the peer does not take queries on one). A timeout or
        a busy peer is not gossiped: the query may have arrived, and flooding
        every node with it would feed an overload (the round replaces a
        silent respondent after its patience). False: worth another try (an
        answer whose stream could not be opened or broke; a query whose
        stream broke or was never acknowledged)."""
        name = wire.peer_id_str(peer)[:20]
        protocol = topics.RPC_PROTOCOL if what == "answer" else topics.QUERY_PROTOCOL
        if await self._reach(peer):
            try:
                await self.net.request(peer, message, timeout_s=self.timeout_s, protocol=protocol)
                self.counts[f"{what}_sent"] += 1
                return True
            except (RpcFailed, trio.TooSlowError) as exc:
                code = getattr(exc, "code", "timeout")
                self.net.loglimit.info(f"direct_{what}", "direct %s to %s failed: %s", what, name, exc or code)
                if what == "answer":
                    # a refusal or a timeout is final (the coordinator answered, or may hold it);
                    # a stream that could not be opened or broke is tried again
                    if code not in ANSWER_RETRY_CODES:
                        self.counts["answer_failed"] += 1
                        return True
                    return False
                if what == "query" and code in QUERY_RETRY_CODES:
                    return False
                if code not in FALLBACK_CODES:
                    self.counts[f"{what}_failed"] += 1
                    return True
                self.counts[f"{what}_refused"] += 1
        if what == "answer":  # the coordinator cannot be reached now: tried again, or lost and counted
            return False
        try:
            self.net.publish_nowait(topics.QUERIES, message)
            self.counts[f"{what}_gossiped"] += 1
        except OutboxFull:
            self.counts[f"{what}_lost"] += 1
        return True

    async def _reach(self, peer: bytes) -> bool:
        """Connected to ``peer``, dialling it at its announced addresses if need be."""
        from libp2p.peer.id import ID
        from libp2p.peer.peerinfo import PeerInfo
        import multiaddr

        net = self.net
        if peer in set(net.peers()):
            return True
        if peer == net.peer_id or net._is_banned(peer):
            return False
        addrs = net.book.addrs(peer)
        nat_service = getattr(net, "nat", None)
        if not addrs and (nat_service is None or not nat_service.relayed_addrs.get(peer)):
            self.counts["no_address"] += 1
            return False
        self.counts["dials"] += 1
        try:
            with trio.move_on_after(self.dial_timeout_s) as scope:
                if nat_service is not None:
                    # its direct addresses first, then through a relay to a peer behind NAT
                    if not await nat_service.connect(peer, addrs, timeout_s=self.dial_timeout_s):
                        raise ConnectionError("no direct or relayed address answered")
                else:
                    await net.host.connect(PeerInfo(ID(peer), [multiaddr.Multiaddr(a) for a in addrs]))
        except Exception as exc:
            self.counts["dials_failed"] += 1
            net.loglimit.info("direct_dial", "cannot dial %s: %s", wire.peer_id_str(peer)[:20], exc)
            return False
        if scope.cancelled_caught:
            self.counts["dials_failed"] += 1
            return False
        return True
