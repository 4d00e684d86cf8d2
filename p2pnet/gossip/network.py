"""The node's network service: a libp2p host, GossipSub topics carrying signed
envelopes, direct streams (direct.py: request/response, and queries sent
straight to their respondents), and peer exchange.

A node subscribes only to the topics something on it handles (and to
validators' announcements, its announce shards and queries): queries go to
their respondents directly, the queries topic is only their fallback; consensus and ratings reach only the
nodes that keep the ledger.

Inbound gossip is checked by a GossipSub topic validator *before* it is
relayed: envelope size, form, schema, signature, that the envelope's sender is
the GossipSub publisher, that the message type belongs on the topic, replay and
staleness. No verdict is cached (see guard.py): every refused copy is counted
against the peer that sent it, with one rate-limited log line. Bad content is
the forwarder's fault (honest peers validate before relaying); a stale or
re-published envelope is its origin's. A peer with too many strikes is banned
for a while: disconnected, never dialled, its connections refused at once.

Outbound messages go through three bounded lanes drained by a single
publisher task: consensus first and unpaced, then queries, answers, ratings
and announcements, then plain broadcasts; all but consensus at most
``user_rate_per_s`` (a token bucket). py-libp2p drops silently past 32 queued
RPCs per peer, so the publisher waits while any peer's queue is more than
half full, and paces user publishes.
``publish_nowait`` raises :class:`OutboxFull` when a lane is full.

Shutdown does not lose acknowledged messages: the outbox and the per-peer
queues are drained, then every peer is asked over a direct stream (``Flush``)
to confirm it has validated our last gossip message, before the host stops.
A peer's reply means the bytes left the sockets: stopping can no longer reset
a connection with our messages still unread in it.

Peers are found and kept by :class:`~p2pnet.gossip.connector.Connector`
(peer exchange, bootstrap and remembered peers, never giving up; between a
low and a high watermark of connections) and remembered across restarts in
the data dir (peerbook.py).

Announcements (where a node listens, what it hosts) go out when they change,
at most once per ``announce_min_gap_s``, and otherwise every
``announce_interval_s``; each says how long it stays true (``ttl_s``). The
newest unexpired one of each peer is kept as received, signed, and a node
that joins asks one peer for them all (``DirectoryRequest``) instead of
waiting out a refresh period; each is checked as if it came by gossip. Only
validators (on the announce topic) and experts (on their domains' shards,
shards.py) gossip theirs; a node offering only its addresses spreads its
announcement by directory exchanges with one peer at a time (announcer.py).
Hosts of a domain or a model can also be found in the DHT (providers.py,
with ``--dht``). A Cancel that overtakes its Query is
remembered, and the Query dropped (direct.py ``EarlyCancels``).
"""

from __future__ import annotations

import logging
import random
import time
from collections import Counter, OrderedDict, defaultdict
from pathlib import Path
from typing import Awaitable, Callable, Iterable, Optional

import multiaddr
import trio

from p2pnet import wire
from p2pnet.gossip import topics
from p2pnet.gossip.topics import TOPIC_KINDS, kinds_of
from p2pnet.gossip.connector import Connector
from p2pnet.gossip.errors import GossipError, OutboxFull, RpcFailed
from p2pnet.gossip.guard import BanGate
from p2pnet.gossip.host import GossipParams, build_stack, message_id
from p2pnet.gossip.peerbook import PeerBook, remember_listen, sticky_listen
from p2pnet.gossip.announcer import Announcing
from p2pnet.gossip.direct import DirectQueries, EarlyCancels, Streams
from p2pnet.gossip.inbound import Inbound
from p2pnet.gossip.providers import Providers, keys_of
from p2pnet.gossip.shards import Sharding, ShardInterest
from p2pnet.gossip.policy import AnnounceSchedule, AnnounceStore, Watermarks
from p2pnet.logs import LogLimiter
from p2pnet.gossip.stats import PeerPenalties, Stats

log = logging.getLogger("p2pnet.gossip")

URGENT_TOPICS = frozenset({topics.CONSENSUS})


Handler = Callable[[wire.Envelope], Awaitable[None]]
RequestHandler = Callable[[wire.Envelope], Awaitable[wire.Message]]


class GossipNetwork(Announcing, Inbound, Streams, Sharding):
    kinds_of = staticmethod(kinds_of)  # what each topic's validator lets through (inbound.py)

    def __init__(
        self,
        identity,
        signer: wire.Signer,
        listen: Iterable[str],
        bootstrap: Iterable[str] = (),
        *,
        announce_addrs: Iterable[str] = (),
        params: GossipParams = GossipParams(),
        outbox_size: int = 1024,
        urgent_size: int = 256,
        control_size: int = 512,
        inbox_size: int = 512,
        publish_gap_s: float = 0.003,
        user_rate_per_s: float = 50.0,
        user_burst: int = 100,
        announce_interval_s: float = 30.0,
        announce_ttl_s: float = 90.0,
        announce_min_gap_s: float = 3.0,
        announce_poll_s: float = 1.0,
        shard_idle_s: float = 0.0,
        rpc_timeout_s: float = 30.0,
        max_rpc_streams: int = 64,
        linger_s: float = 5.0,
        flush_wait_s: float = 2.0,
        peer_queue_high: int = 16,
        wire_wait_s: float = 2.0,
        announce_extra: Callable[[], dict] = dict,
        clock: Callable[[], float] = time.time,
        state_dir: Optional[Path] = None,
        watermarks: Watermarks = Watermarks(),
        reconnect_max_s: float = 30.0,
        rng: Optional[random.Random] = None,
        nat=None,
    ) -> None:
        self.identity = identity
        self.signer = signer
        self.listen = list(listen)
        self.bootstrap = list(bootstrap)
        self.announce_addrs = list(announce_addrs)
        self.params = params
        self.publish_gap_s = publish_gap_s
        # User traffic (everything but consensus) is a token bucket: every
        # node receives and relays every message at several ms of CPU each,
        # so an unbounded flood through one node's API starves consensus on
        # every node, not only on its own (measured: 100 user msg/s from one
        # of three validators stalled the chain; 50/s let it commit).
        self.user_rate_per_s = user_rate_per_s
        self.user_burst = user_burst
        self._tokens = float(user_burst)
        self._tokens_at: Optional[float] = None
        self._wire_wait_since: Optional[float] = None
        self._last_user_at: Optional[float] = None
        self.announce_interval_s = announce_interval_s
        self.announce_ttl_s = announce_ttl_s
        self.announce_poll_s = announce_poll_s
        self.schedule = AnnounceSchedule(announce_interval_s, announce_min_gap_s)
        self.announces = AnnounceStore()
        # the announce shards taken (shards.py); shard_idle_s > 0: also those asked in, that long
        self.shards = ShardInterest(shard_idle_s)
        self.rpc_timeout_s = rpc_timeout_s
        self.linger_s = linger_s
        self.flush_wait_s = flush_wait_s
        self.peer_queue_high = peer_queue_high
        self.wire_wait_s = wire_wait_s
        self.announce_extra = announce_extra
        self.clock = clock
        self.inbox_size = inbox_size
        self.state_dir = state_dir
        self.watermarks = watermarks
        self.reconnect_max_s = reconnect_max_s
        self.rng = rng or random.Random()
        self.book = PeerBook(state_dir, clock=clock)
        # NAT traversal (relay.py): relays, reservations, dial-back, DCUtR; None: off
        from p2pnet.gossip.relay import NatService

        self.nat = NatService(self, nat) if nat is not None else None

        self.stats = Stats()
        self.penalties = PeerPenalties()
        self.guard = wire.ReplayGuard()
        self.loglimit = LogLimiter(log, clock=clock)

        self._handlers: dict[str, list[Handler]] = defaultdict(list)
        # Topics to subscribe to; every node takes validators' announcements
        # (experts' go on per-domain shards, shards.py), and the
        # queries topic, the fallback of the direct query streams: GossipSub
        # relays only inside a topic's mesh, so a fallback query must be able
        # to travel through nodes without experts (connections are bounded;
        # experts need not be connected to each other).
        self._wanted: set = {topics.ANNOUNCE, topics.QUERIES}
        self._rpc_handlers: dict[str, RequestHandler] = {}
        # Three outbound lanes, served in this order. Consensus is never paced
        # behind user traffic (a flood of broadcasts once held votes back for
        # seconds against round timeouts of 0.5-1 s); queries, answers,
        # ratings and announcements come next; plain broadcasts last, so a
        # flood of them cannot delay a query either.
        self._urgent_send, self._urgent_recv = trio.open_memory_channel(urgent_size)
        self._control_send, self._control_recv = trio.open_memory_channel(control_size)
        self._outbox_send, self._outbox_recv = trio.open_memory_channel(outbox_size)
        self._outbox_ready = trio.Event()
        self.connector = Connector(self)
        self._kick_send, self._kick_recv = trio.open_memory_channel(64)
        self._decoded: "OrderedDict[bytes, wire.Envelope]" = OrderedDict()
        self._inboxes: dict = {}  # topic -> send side of its bounded inbox
        self._rpc_slots = trio.Semaphore(max_rpc_streams)
        self._query_slots = trio.Semaphore(max_rpc_streams)
        self.direct = DirectQueries(self)
        self.early_cancels = EarlyCancels()  # a Cancel that overtook its Query (direct.py)
        # provider records in the DHT (providers.py): used only while the connector runs the DHT
        self.providers = Providers(lambda: self.connector.routing, self._provider_keys)
        self._stopping = trio.Event()
        self._announce_now = trio.Event()
        self._rpc_busy: Counter = Counter()  # peer -> direct streams in flight with it
        # the join-time directory fetch: "off" until fetch_directory_soon(),
        # then "wanted" -> "fetching" -> "done" (and "wanted" again after
        # the node lost all its peers)
        self._directory = "off"
        self._nursery: Optional[trio.Nursery] = None
        self.host = None
        self.pubsub = None
        self.gossipsub = None
        self.listen_addrs: list[str] = []
        self.ready = False
        self._publishing = False
        self._last_own_seq: Optional[int] = None  # our last envelope handed to GossipSub
        self._last_own_topic: tuple = ()  # ... and its topics
        self.flush_result: Optional[tuple[int, int]] = None  # (peers that confirmed, peers asked)
        self.on_request(wire.Flush.KIND, self._serve_flush)
        self.on_request(wire.DirectoryRequest.KIND, self._serve_directory)

    # ------------------------------------------------------------------ API

    @property
    def peer_id(self) -> bytes:
        return self.signer.peer_id

    def on(self, topic: str, handler: Handler, *, subscribe: bool = True) -> None:
        """Call ``handler(envelope)`` for each valid message on ``topic``.

        A node subscribes to a topic only once a handler that asks for it is
        registered (and always to announcements and to the queries topic, the
        direct streams' fallback): a node without the ledger receives no
        consensus message or rating. ``subscribe=False`` only watches what
        the node takes anyway (the dashboard's counts). A node can publish on
        any topic (GossipSub's fanout: to peers that take it)."""
        self._handlers[topic].append(handler)
        if subscribe:
            self._wanted.add(topic)
            if self._nursery is not None and topic not in self._inboxes:
                self._nursery.start_soon(self._subscribe, topic)

    def subscribed(self) -> list[str]:
        return sorted(self._inboxes)

    def send_query_nowait(self, query: wire.Query) -> None:
        """Deliver ``query`` to the respondents its prompts are sealed to,
        over direct streams (gossip as the fallback: see direct.py).
        OutboxFull when it cannot be queued."""
        self.direct.send_query_nowait(query)

    def send_cancel_nowait(self, query_id: bytes) -> None:
        """Cancel ``query_id`` at the respondents it was sent to, the same way."""
        self.direct.send_cancel_nowait(query_id)

    def on_request(self, kind: str, handler: RequestHandler) -> None:
        """Serve direct requests whose message KIND is ``kind``."""
        self._rpc_handlers[kind] = handler

    def publish_nowait(self, topic, message: wire.Message) -> bytes:
        """Sign and queue ``message`` on ``topic`` (a tuple of topics: one
        message on all of them, each peer gets it once); returns the envelope bytes. An Answer
        for a Query that came here goes straight back to its coordinator
        instead (direct.py ``send_answer_nowait``): the answers topic is only
        for answers to queries this node did not take itself."""
        if self._stopping.is_set():
            raise OutboxFull("node is shutting down")
        if topic == topics.ANSWERS and isinstance(message, wire.Answer) and self.direct.send_answer_nowait(message):
            return b""
        data = self.signer.seal(message)
        self._enqueue_nowait(topic, data, self.signer.last_seq)
        return data

    def publish_raw_nowait(self, topic: str, data: bytes) -> None:
        """Queue an envelope sealed elsewhere (possibly by another peer)."""
        self._enqueue_nowait(topic, data, None)

    def _lane(self, topic: str):
        if topic in URGENT_TOPICS:
            return self._urgent_send, "consensus_outbox_full"
        if topic == topics.BROADCAST:
            return self._outbox_send, "outbox_full"
        return self._control_send, "control_outbox_full"

    def _enqueue_nowait(self, topic: str, data: bytes, own_seq: Optional[int]) -> None:
        lane, reason = self._lane(topic)
        try:
            lane.send_nowait((topic, data, own_seq))
        except trio.ClosedResourceError:
            raise OutboxFull("node is shutting down") from None
        except trio.WouldBlock:
            self.stats.drop(reason)
            raise OutboxFull(f"outbound queue full ({lane.statistics().max_buffer_size})") from None
        self._outbox_ready.set()

    async def publish(self, topic: str, message: wire.Message) -> bytes:
        """Like publish_nowait but waits for room in the outbox."""
        data = self.signer.seal(message)
        seq = self.signer.last_seq
        try:
            await self._lane(topic)[0].send((topic, data, seq))
        except trio.ClosedResourceError:
            raise OutboxFull("node is shutting down") from None
        self._outbox_ready.set()
        return data

    def peers(self) -> list[bytes]:
        if self.host is None:
            return []
        return [p.to_bytes() for p in self.host.get_connected_peers()]

    def mesh(self) -> dict[str, int]:
        """Mesh size of each topic but the announce shards (whose mesh may
        rightly be empty: an expert alone in its domain; see shard_mesh)."""
        if self.gossipsub is None:
            return {}
        return {t: len(peers) for t, peers in self.gossipsub.mesh.items() if not topics.shard_domain(t)}

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def outbox_len(self) -> int:
        return sum(lane.statistics().current_buffer_used
                   for lane in (self._urgent_send, self._control_send, self._outbox_send))

    def announce_soon(self) -> None:
        """Announce as if something had changed (at most once per ``announce_min_gap_s``)."""
        self.schedule.force()
        self._announce_now.set()

    def fetch_directory_soon(self) -> None:
        """Ask a peer for the announcements it holds once connected, and again
        whenever this node comes back after losing all its peers. Call it
        once the ANNOUNCE handlers are registered (they hear each one)."""
        if self._directory == "off":
            self._directory = "wanted"
        self._announce_now.set()

    def _provider_keys(self) -> list[str]:
        """What this node provides in the DHT: its cards' domains and models."""
        return keys_of(self.announce_extra().get("cards", ()))

    def busy(self, peer: bytes) -> bool:
        """A direct stream with ``peer`` is in flight (the trimming policy keeps it)."""
        return self._rpc_busy[peer] > 0

    def connections(self) -> dict:
        return {"count": len(self.peers()), "low": self.watermarks.low, "high": self.watermarks.high,
                "trimmed": self.connector.trimmed}

    def close(self) -> None:
        """Begin a clean shutdown: flush the outbox, linger, then stop."""
        self._stopping.set()

    # ------------------------------------------------------------ running

    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        from libp2p.custom_types import TProtocol
        from libp2p.tools.anyio_service import background_trio_service

        listen = sticky_listen(self.state_dir, self.listen)
        self.host, self.pubsub, self.gossipsub = build_stack(
            self.identity, listen, self.params,
            on_reject=self._on_pubsub_reject, is_banned=self._is_banned,
            urgent_topics=URGENT_TOPICS,
        )
        BanGate(self._is_banned, self._on_ban_refused).install(self.host)
        maddrs = [multiaddr.Multiaddr(a) for a in listen]
        # Trap 3: the pubsub services must run before any connection arrives.
        async with background_trio_service(self.pubsub), background_trio_service(self.gossipsub):
            await self.pubsub.wait_until_ready()
            async with self.host.run(listen_addrs=maddrs):
                self.listen_addrs = [str(a) for a in self.host.get_addrs()]
                if not self.listen_addrs:
                    raise GossipError(f"not listening: no address of {', '.join(listen)} could be bound")
                remember_listen(self.state_dir, self.listen, self.listen_addrs)
                for protocol, serve in self._stream_handlers().items():
                    self.host.set_stream_handler(TProtocol(protocol), serve)
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    # Trap 4: py-libp2p's subscription channels hold 32 messages
                    # and drop the rest with a warning on stdout; up to
                    # max_inflight messages can finish at once. Valid messages
                    # come straight to a bounded inbox per topic instead.
                    self.pubsub.on_message = self._take_gossip
                    for topic in topics.ALL:
                        self.pubsub.set_topic_validator(topic, self._make_validator(topic), False)
                    for topic in sorted(self._wanted):
                        await self._subscribe(topic)
                    nursery.start_soon(self.direct.run)
                    nursery.start_soon(self._publisher)
                    nursery.start_soon(self.connector.dialer)
                    nursery.start_soon(self._kicker)
                    nursery.start_soon(self._announcer)
                    nursery.start_soon(self.connector.keep_connected)
                    nursery.start_soon(self.connector.trimmer)
                    if self.connector.dht_wanted:
                        nursery.start_soon(self.providers.run)
                    if self.nat is not None:
                        await nursery.start(self.nat.run)
                    self.ready = True
                    log.info("listening on %s as %s", ", ".join(self.listen_addrs), wire.peer_id_str(self.peer_id))
                    task_status.started(self)
                    await self._stopping.wait()
                    await self._linger()
                    nursery.cancel_scope.cancel()

    async def _subscribe(self, topic: str) -> None:
        """Take ``topic``'s messages from now on, into its bounded inbox."""
        if topic in self._inboxes or not kinds_of(topic):
            return
        if topic not in TOPIC_KINDS:  # a shard: its validator comes and goes with it
            self.pubsub.set_topic_validator(topic, self._make_validator(topic), False)
        send, recv = trio.open_memory_channel(self.inbox_size)
        self._inboxes[topic] = send
        self._nursery.start_soon(self._dispatch_topic, topic, recv)
        await self.pubsub.subscribe(topic)

    async def _linger(self) -> None:
        """Trap 5: queued messages must reach the peers before the host stops.

        Drain the outbox and the per-peer queues, then have every peer confirm
        our last gossip message (see :class:`wire.Flush`), all within
        ``linger_s``."""
        with trio.move_on_after(self.linger_s) as scope:
            for lane in (self._urgent_send, self._control_send, self._outbox_send):
                lane.close()
            self._outbox_ready.set()
            while self.outbox_len() or self._publishing:
                await trio.sleep(0.005)
            while self._peer_queue_max():
                await trio.sleep(0.005)
            if self._last_own_seq is not None:
                await self._flush_peers(self._last_own_seq)
        self.book.save()
        if scope.cancelled_caught:
            log.warning("shutdown: gave up waiting for peers after %.1fs; %d messages still queued",
                        self.linger_s, self.outbox_len() + self._peer_queue_max())

    async def _flush_peers(self, seq: int) -> None:
        # only the peers that take our last message's topic can confirm it
        peer_topics = getattr(self.pubsub, "peer_topics", {})
        takers = set().union(*(peer_topics.get(t, ()) for t in self._last_own_topic))
        peers = [p for p in self.peers() if _peer_id(p) in takers]
        confirmed = []

        async def ask(peer: bytes) -> None:
            try:
                reply = await self.request(peer, wire.Flush(seq), timeout_s=self.flush_wait_s + 1.0)
            except (RpcFailed, trio.TooSlowError) as exc:
                log.info("shutdown: %s did not confirm our last message: %s", wire.peer_id_str(peer)[:20], exc or "timeout")
                return
            if isinstance(reply, wire.Ack) and reply.note == "seen":
                confirmed.append(peer)

        async with trio.open_nursery() as nursery:
            for peer in peers:
                nursery.start_soon(ask, peer)
        self.flush_result = (len(confirmed), len(peers))
        log.info("shutdown: %d of %d peers confirmed our last message", len(confirmed), len(peers))

    async def _serve_flush(self, env: wire.Envelope) -> wire.Message:
        """A peer is shutting down: reply once its gossip message ``seq`` got here."""
        with trio.move_on_after(self.flush_wait_s):
            while not self.guard.has_seen(env.sender, env.message.seq):
                await trio.sleep(0.01)
        return wire.Ack("seen" if self.guard.has_seen(env.sender, env.message.seq) else "not_seen")

    def _peer_queue_max(self) -> int:
        queues = getattr(self.pubsub, "peer_queues", None) or {}
        return max((len(q) for q in list(queues.values())), default=0)

    def _user_delay(self, now: float) -> float:
        """Seconds before the next user message may go: ``publish_gap_s``
        after the last one, until the token bucket has a token, and (trap 4: py-libp2p drops RPCs silently once a
        peer's queue holds 32) while any peer's queue is past
        ``peer_queue_high``, polled, for at most ``wire_wait_s`` (a stalled
        peer), after which it goes anyway and is counted."""
        wait = 0.0
        if self._last_user_at is not None:
            wait = self._last_user_at + self.publish_gap_s - now
        if self.user_rate_per_s:
            if self._tokens_at is not None:
                self._tokens = min(float(self.user_burst),
                                   self._tokens + (now - self._tokens_at) * self.user_rate_per_s)
            self._tokens_at = now
            if self._tokens < 1.0:
                wait = max(wait, (1.0 - self._tokens) / self.user_rate_per_s)
        if self._peer_queue_max() >= self.peer_queue_high:
            if self._wire_wait_since is None:
                self._wire_wait_since = now
            if now - self._wire_wait_since < self.wire_wait_s:
                return max(wait, 0.005)
            self.stats.drop("peer_queue_stalled")
        self._wire_wait_since = None
        return wait

    def _receive_nowait(self, lanes):
        for lane in lanes:
            try:
                return lane.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                continue
        return None

    async def _idle(self, seconds: Optional[float]) -> None:
        """Sleep up to ``seconds`` (None: until woken); any enqueue wakes it."""
        with trio.move_on_after(float("inf") if seconds is None else seconds):
            await self._outbox_ready.wait()
        self._outbox_ready = trio.Event()

    async def _publisher(self) -> None:
        """One task publishes, consensus first. A user message is taken off
        its lane only once it may go, so a vote never waits behind a user
        message that waits for a token or for wire room."""
        user_lanes = (self._control_recv, self._outbox_recv)
        while True:
            item = self._receive_nowait((self._urgent_recv,))
            if item is None:
                if not any(lane.statistics().current_buffer_used for lane in user_lanes):
                    if self._stopping.is_set() and not self.outbox_len():
                        return
                    await self._idle(None)
                    continue
                delay = self._user_delay(trio.current_time())
                if delay > 0:
                    await self._idle(delay)
                    continue
                item = self._receive_nowait(user_lanes)
                if item is None:
                    continue
                if self.user_rate_per_s:
                    self._tokens -= 1.0
            topic, data, own_seq = item
            await self._publish_one(topic, data, own_seq)
            if topic not in URGENT_TOPICS:
                self._last_user_at = trio.current_time()

    async def _publish_one(self, topic: str, data: bytes, own_seq: Optional[int]) -> None:
        self._publishing = True
        try:
            many = topic if isinstance(topic, tuple) else (topic,)
            await self.pubsub.publish(list(many) if len(many) > 1 else many[0], data)
            if own_seq is not None:
                self._last_own_seq = own_seq
                self._last_own_topic = many
            for t in many:
                self.stats.sent[t] += 1
        except Exception as exc:  # never let one publish kill the node
            self.stats.drop("publish_failed")
            self.loglimit.warning("publish_failed", "publish on %s failed: %s", topic, exc)
        finally:
            self._publishing = False

    def _take_gossip(self, topic: str, msg) -> None:
        """A message GossipSub accepted on ``topic``: into its bounded inbox
        (a full one drops and counts)."""
        if len(msg.topicIDs) > 1 and topic != next((t for t in msg.topicIDs if t in self._inboxes), topic):
            return  # one message on several shards we take: taken once, on the first
        env = self._decoded.pop(message_id(msg), None)
        if msg.from_id == self.peer_id:
            return
        send = self._inboxes.get(topic)
        if send is None and env is not None:
            self.stats.drop("unsubscribed")  # a shard left a moment ago
            return
        if env is None or send is None:
            self.stats.drop("undecoded")  # not seen by our validator: cannot happen, counted if it does
            return
        self.stats.received[topic] += 1
        try:
            send.send_nowait(env)
        except trio.WouldBlock:
            self.stats.drop("inbox_full")

    async def _dispatch_topic(self, topic: str, recv) -> None:
        async for env in recv:
            if topics.is_announce(topic):
                await self._take_announce(env)
            elif topic == topics.QUERIES and self._overtaken(env):
                continue
            else:
                await self._handle(topic, env)

    async def _handle(self, topic: str, env: wire.Envelope) -> None:
        for handler in self._handlers.get(topic, ()):
            try:
                await handler(env)
            except Exception:
                self.stats.drop("handler_error")
                log.exception("handler for %s failed on %s from %s", topic, env.kind, env.sender_str[:20])


def _peer_id(peer: bytes):
    from libp2p.peer.id import ID

    return ID(peer)
