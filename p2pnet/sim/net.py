"""A simulated network: one transport object per peer, all in one Trio run.

A :class:`SimTransport` offers what the coordinator and responder use of
``node.network`` (``on``, ``on_request``, ``publish_nowait``,
``send_query_nowait``, ``send_cancel_nowait``, ``request``, ``peers``,
``peer_id``). Messages are really signed (``wire.Signer``) and
checked (``wire.open_envelope``, once per message rather than once per
receiver). Instead of flooding GossipSub, a Query is routed to the peers it is
sealed to, a Cancel to the same peers, a gossiped Answer to the query's
coordinator, and an Announce to the peer keeping the shared directory
(what it would cost in the node's topic layout is counted apart:
:class:`AnnounceLayout`).
Deliveries take ``latency * (1 +- jitter)`` and are lost with probability
``loss``; a lost direct request fails after a round trip (a reset stream).
"""

from __future__ import annotations

import random
from collections import Counter, OrderedDict, defaultdict
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Optional

import trio

from p2pnet import wire
from p2pnet.gossip import topics
from p2pnet.gossip.errors import RpcFailed
from p2pnet.gossip.shards import announce_topics

Handler = Callable[[wire.Envelope], Awaitable[object]]
MAX_ROUTES = 100_000


@dataclass
class NetStats:
    delivered: int = 0
    lost: int = 0
    unrouted: int = 0
    requests: int = 0
    requests_failed: int = 0
    # accounting only (bench/deliveries.py): deliveries by message kind, gossip
    # and direct requests apart, and what the announcements routed would have
    # cost in the node's topic layout (AnnounceLayout)
    delivered_by_kind: Counter = field(default_factory=Counter)
    requests_by_kind: Counter = field(default_factory=Counter)
    announce_layout: int = 0


class AnnounceLayout:
    """Who takes an announcement in the node's topic layout
    (p2pnet.gossip.shards): a validator's goes on the global announce topic,
    one delivery at every other peer; an expert's on the shard of each of its
    domains, one delivery at each other expert of that domain and, with
    ``idle_s`` > 0 (the node's ``shard_idle_s``, off by default), at each
    coordinator that asked there in the last ``idle_s``. A peer offering only
    its addresses gossips none. The experts' domains are learnt from the
    announcements routed (or told, ``expert``), the asks from the queries."""

    def __init__(self, idle_s: float = 0.0) -> None:
        self.idle_s = idle_s
        self.experts: dict = defaultdict(set)  # domain -> peers whose cards serve it
        self.asks: dict = defaultdict(dict)  # domain -> {coordinator peer: last ask}

    def expert(self, peer: bytes, domains) -> None:
        for d in domains:
            self.experts[d].add(peer)

    def ask(self, peer: bytes, domain: str, now: float) -> None:
        if domain:
            self.asks[domain][peer] = now

    def takers(self, domain: str, now: float) -> set:
        asking = {p for p, at in self.asks.get(domain, {}).items() if at + self.idle_s > now}
        return self.experts.get(domain, set()) | asking

    def receivers(self, sender: bytes, message: wire.Announce, now: float, everyone=()) -> set:
        """The peers that take ``sender``'s announcement ``message``: one
        message on all its topics, once at each peer that takes any of them
        (``everyone``: the peers, all of whom take the global topic)."""
        wanted = announce_topics(message)
        takers = set(everyone) if topics.ANNOUNCE in wanted else set()
        takers = takers.union(*(self.takers(topics.shard_domain(t), now) for t in wanted if t != topics.ANNOUNCE))
        return takers - {sender}

    def deliveries(self, sender: bytes, message: wire.Announce, now: float, peers: int) -> int:
        """How many deliveries ``message`` costs among ``peers`` peers."""
        if topics.ANNOUNCE in announce_topics(message):
            return peers - 1
        return len(self.receivers(sender, message, now))


class SimNetwork:
    """The medium. ``nursery`` runs the deliveries; ``rng`` draws latency and loss."""

    def __init__(self, nursery: trio.Nursery, rng: random.Random, *, latency_s: float = 0.05,
                 jitter: float = 0.2, loss: float = 0.0) -> None:
        self.nursery, self.rng = nursery, rng
        self.latency_s, self.jitter, self.loss = latency_s, jitter, loss
        self.transports: dict[bytes, SimTransport] = {}
        self.announce_sink: Optional[bytes] = None
        self.stats = NetStats()
        self.layout = AnnounceLayout()
        self._routes: "OrderedDict[bytes, tuple[bytes, frozenset]]" = OrderedDict()

    def attach(self, peer_id: bytes, signer: wire.Signer) -> "SimTransport":
        transport = SimTransport(self, peer_id, signer)
        self.transports[peer_id] = transport
        return transport

    def detach(self, peer_id: bytes) -> None:
        self.transports.pop(peer_id, None)

    def delay(self) -> float:
        return self.latency_s * (1.0 + self.jitter * (2.0 * self.rng.random() - 1.0))

    def lost(self) -> bool:
        if self.loss and self.rng.random() < self.loss:
            self.stats.lost += 1
            return True
        return False

    # ---------------------------------------------------------------- gossip

    def route(self, sender: bytes, topic: str, env: wire.Envelope) -> None:
        msg = env.message
        if topics.is_announce(topic):
            targets = frozenset((self.announce_sink,)) if self.announce_sink else frozenset()
            self.layout.expert(sender, {d for c in msg.cards for d in c.domains})
            self.stats.announce_layout += self.layout.deliveries(sender, msg, trio.current_time(),
                                                                 len(self.transports))
        elif isinstance(msg, wire.Query):
            targets = frozenset(p.recipient for p in msg.prompts)
            self.layout.ask(sender, msg.domain, trio.current_time())
            self._routes[msg.query_id] = (sender, targets)
            while len(self._routes) > MAX_ROUTES:
                self._routes.popitem(last=False)
        elif isinstance(msg, wire.Cancel):
            targets = self._routes.get(msg.query_id, (b"", frozenset()))[1]
        elif isinstance(msg, wire.Answer):
            coordinator = self._routes.get(msg.query_id, (b"", ()))[0]
            targets = frozenset((coordinator,)) if coordinator else frozenset()
        else:
            targets = frozenset()
        if not targets:
            self.stats.unrouted += 1
        for peer in sorted(targets):
            if peer == sender or peer not in self.transports:
                continue
            if self.lost():
                continue
            self.nursery.start_soon(self._deliver_later, peer, topic, env, self.delay())

    async def _deliver_later(self, peer: bytes, topic: str, env: wire.Envelope, delay: float) -> None:
        await trio.sleep(delay)
        transport = self.transports.get(peer)
        if transport is not None:
            self.stats.delivered += 1
            self.stats.delivered_by_kind[env.kind] += 1
            await transport.deliver(topic, env)

    # --------------------------------------------------------------- requests

    async def request(self, sender: bytes, peer: bytes, env: wire.Envelope, timeout_s: float) -> wire.Message:
        self.stats.requests += 1
        self.stats.requests_by_kind[env.kind] += 1
        out, back = self.delay(), self.delay()
        target = self.transports.get(peer)
        if target is None or self.lost():
            await trio.sleep(min(timeout_s, out + back))
            self.stats.requests_failed += 1
            raise RpcFailed("stream reset (simulated loss)" if target else "peer unknown", "failed")
        with trio.fail_after(timeout_s):
            await trio.sleep(out)
            handler = target.request_handlers.get(env.kind)
            if handler is None:
                self.stats.requests_failed += 1
                raise RpcFailed(f"{env.kind} not supported", "unsupported")
            reply = await handler(env)
            await trio.sleep(back)
        return reply


@dataclass
class SimTransport:
    """One peer's view of the simulated network (the ``node.network`` interface)."""

    net: SimNetwork
    peer_id: bytes
    signer: wire.Signer
    handlers: dict = field(default_factory=dict)
    request_handlers: dict = field(default_factory=dict)

    def on(self, topic: str, handler: Handler, *, subscribe: bool = True) -> None:
        self.handlers.setdefault(topic, []).append(handler)

    def on_request(self, kind: str, handler: Handler) -> None:
        self.request_handlers[kind] = handler

    def peers(self) -> list[bytes]:
        return sorted(p for p in self.net.transports if p != self.peer_id)

    def _envelope(self, msg: wire.Message) -> wire.Envelope:
        return wire.open_envelope(self.signer.seal(msg))

    def publish_nowait(self, topic: str, msg: wire.Message) -> bytes:
        env = self._envelope(msg)
        self.net.route(self.peer_id, topic, env)
        return env.message_id()

    def send_query_nowait(self, query: wire.Query) -> None:
        """The real network sends each respondent its part directly; here, as
        before, the Query is routed to the peers it is sealed to."""
        self.publish_nowait(topics.QUERIES, query)

    def send_cancel_nowait(self, query_id: bytes) -> None:
        self.publish_nowait(topics.QUERIES, wire.Cancel(query_id))

    async def request(self, peer: bytes, msg: wire.Message, timeout_s: float = 10.0) -> wire.Message:
        return await self.net.request(self.peer_id, peer, self._envelope(msg), timeout_s)

    async def deliver(self, topic: str, env: wire.Envelope) -> None:
        for handler in self.handlers.get(topic, ()):
            await handler(env)
