"""Announcements and the directory exchange of a :class:`GossipNetwork`:
when to announce (``policy.AnnounceSchedule``), which announcements to hand
on (``policy.AnnounceStore``), the join-time directory fetch, and the
periodic exchange with one peer. A mixin: its methods use the network's
state, set up in ``GossipNetwork.__init__``.

Who gossips: only a node with something to offer. A validator publishes
its announcement on the announce topic, which every node takes; an expert on
the announce shard of each of its domains, which only that domain's experts
take (and, with ``shard_idle_s``, the coordinators asking in it: shards.py);
a new or changed expert's also on the announce topic, once with its echoes
(``_gossip_topics``), so every node hears of it at once. A node that offers only
its addresses (most nodes of a large network) does not gossip: gossiped,
every node would receive every such node's announcement, a cost per node
that grows with the network (docs/benchmarks.md, "Scale"). It keeps its
signed announcement in its own store instead, and every ``exchange_s`` asks
one random connected peer for its directory, sending its own announcement
with the request (push-pull anti-entropy: each node talks to one peer per
period whatever the network's size, and an address spreads to all in a few
periods). The exchange carries every card too, so a node on no shard still
knows every expert. Entries already held are not checked again. Peer
exchange (connector.py) hears of such nodes this way.
"""

from __future__ import annotations

import dataclasses
import logging

import trio

from p2pnet import wire
from p2pnet.gossip import topics
from p2pnet.gossip.errors import OutboxFull, RpcFailed
from p2pnet.gossip.policy import check_directory
from p2pnet.gossip.shards import announce_topics

log = logging.getLogger("p2pnet.gossip")

QUIET_FACTOR = 4
"""How many times less often a node with nothing to offer but its addresses refreshes its announcement."""

SHARD_GRACE_S = 3.0
"""After gaining peers, how long an expert waits for GossipSub to hear that
some peer takes one of its shards before it keeps its announcement for the
exchange alone (its echoes try the shards again)."""

EXCHANGE_FACTOR = 2
"""A node exchanges directories with one random peer every ``QUIET_FACTOR *
announce_interval_s / EXCHANGE_FACTOR`` seconds: twice per quiet refresh."""


def gossips(message: wire.Announce) -> bool:
    """Whether an announcement goes on the announce topic (an expert's or a
    validator's) or only into the directory exchange (addresses alone)."""
    return bool(message.cards or message.validator)


class Announcing:
    async def _take_announce(self, env: wire.Envelope) -> bool:
        """A verified announcement, gossiped or from a directory: handed on
        only if unexpired and newer than the one held from its sender."""
        if not self.announces.put(env, self.clock()):
            return False
        self.connector.note_announce(env)
        await self._handle(topics.ANNOUNCE, env)
        return True

    def _announce_message(self) -> wire.Announce:
        addrs = self.reachable_addrs()
        message = wire.Announce(addrs=addrs, **self.announce_extra(), ttl_s=int(self.announce_ttl_s))
        if not message.validator:
            # A node that offers nothing but its addresses (no expert, not a
            # validator: most nodes of a large network) refreshes
            # QUIET_FACTOR times less often, and its announcement lives as
            # much longer. An expert's refreshes reach only its shards; most
            # nodes hold its card from exchanges, which take minutes to
            # spread it: it lives as long.
            message = dataclasses.replace(
                message, ttl_s=min(int(self.announce_ttl_s * QUIET_FACTOR), wire.MAX_ANNOUNCE_TTL_S))
        return message

    def reachable_addrs(self) -> tuple:
        """Only addresses others can reach (nat.announceable): never
        loopback (but from a loopback-only node), never a private one (but in
        a LAN-only network), plus the relayed addresses once reserved.
        ``--announce`` addresses are the operator's word and go as given."""
        from p2pnet.gossip import nat

        service = getattr(self, "nat", None)
        circuits = service.circuit_addrs() if service is not None else ()
        if self.announce_addrs:
            return tuple(dict.fromkeys([*self.announce_addrs, *circuits]))[:16]
        # without the NAT service (a bare GossipNetwork, in tests) a LAN address may go
        private = service is None or service.settings.announce_private
        verified = service.verified_addrs() if service is not None else ()  # confirmed by dial-backs
        return nat.announceable([*self.listen_addrs, *verified], circuits, announce_private=private)[:16]

    def _gossip_topics(self, message: wire.Announce, key) -> tuple:
        """Where an announcement is gossiped: its shards (announce_topics);
        a new or changed expert's (its addresses or cards, not its load) and
        that change's echoes also on the global topic, so every node hears
        of it at once rather than after exchanges; unchanged refreshes reach
        only the shards."""
        out = announce_topics(message)
        if message.cards and topics.ANNOUNCE not in out and (key != self.schedule.last_key or self.schedule.echoing):
            out = (topics.ANNOUNCE, *out)
        return out

    def _announce_heard(self, wanted: tuple) -> tuple:
        """Of the ``wanted`` topics, those some peer has told GossipSub it
        takes: an announcement published before that reaches nobody."""
        peer_topics = getattr(self.pubsub, "peer_topics", {})
        return tuple(t for t in wanted if peer_topics.get(t))

    @property
    def exchange_s(self) -> float:
        return self.announce_interval_s * QUIET_FACTOR / EXCHANGE_FACTOR

    def _keep_own(self, message: wire.Announce) -> None:
        """Sign ``message`` and keep it as ours: served in directory replies
        and sent with our directory requests, not gossiped."""
        data = self.signer.seal(message)
        self.announces.put(wire.open_envelope(data, self.params.max_message_bytes), self.clock())

    def _own_announce(self) -> bytes:
        env = self.announces.get(self.peer_id)
        return env.raw if env is not None else b""

    async def _announcer(self) -> None:
        """Every ``announce_poll_s`` (or when woken): announce if the
        schedule says so; on (re)joining, announce and fetch the directory;
        every ``exchange_s``, exchange directories with one random peer."""
        had_peers = False
        next_exchange = None
        peers_since = 0.0
        while True:
            now = trio.current_time()
            self._sync_shards()
            has_peers = bool(self.peers())
            if has_peers and not had_peers:
                peers_since = now
                self.schedule.force()
                if self._directory == "done":
                    self._directory = "wanted"
            had_peers = has_peers
            message = self._announce_message()
            # Not the height (it moves every block), nor an expert's load (it
            # moves with every query it takes; each change announced to every
            # node made a query's cost grow with the network): both travel
            # with the refresh.
            key = (message.addrs, tuple(dataclasses.replace(c, load=0) for c in message.cards), message.validator)
            gossiped = gossips(message)
            self.schedule.refresh_s = self.announce_interval_s * (1 if gossiped else QUIET_FACTOR)
            wait = self.schedule.wait_s(now, key)
            if wait <= 0 and has_peers:
                heard = self._announce_heard(self._gossip_topics(message, key)) if gossiped else ()
                if heard:
                    try:  # one message on all its topics: a peer on several takes it once
                        data = self.publish_nowait(heard if len(heard) > 1 else heard[0], message)
                        self.announces.put(wire.open_envelope(data, self.params.max_message_bytes), self.clock())
                        self.schedule.sent(now, key)
                    except OutboxFull:
                        pass
                elif gossiped and now - peers_since < SHARD_GRACE_S:
                    wait = 0.1  # joined a moment ago: GossipSub has not heard the peers' topics yet
                else:
                    # kept for the exchange and, if new, told to a peer at once: a
                    # quiet node's always (no echoes); an expert's when no peer
                    # takes any of its topics (alone in its domains among its
                    # peers), whose echoes try the topics again
                    changed = key != self.schedule.last_key
                    self._keep_own(message)
                    self.schedule.sent(now, key, echo=gossiped)
                    if changed and self._directory == "done":
                        next_exchange = now
                if wait <= 0:  # announced or kept (the grace above set its own wait)
                    wait = self.schedule.wait_s(now, key)
            if has_peers and self._nursery is not None:
                if self._directory == "wanted":
                    self._directory = "fetching"
                    next_exchange = now + self.exchange_s
                    self._nursery.start_soon(self._fetch_directory_from_peers)
                elif self._directory in ("done", "off") and (next_exchange is None or now >= next_exchange):
                    # "off" (no join-time fetch asked for: a bare network) exchanges all the same
                    self._directory = "fetching"
                    next_exchange = now + self.exchange_s
                    self._nursery.start_soon(self._fetch_directory_from_peers, 1)
            if next_exchange is not None and self._directory in ("done", "off"):
                wait = min(wait, max(next_exchange - now, 0.0))
            with trio.move_on_after(min(max(wait, 0.01), self.announce_poll_s)):
                await self._announce_now.wait()
            self._announce_now = trio.Event()

    async def _serve_directory(self, env: wire.Envelope) -> wire.Message:
        request = env.message
        if request.announce:
            await self._take_pushed(env.sender, request.announce)
        held = self.announces.current(self.clock(), request.limit, domain=request.domain)
        return wire.DirectoryReply(tuple(e.raw for e in held if e.sender != env.sender))

    async def _take_pushed(self, peer: bytes, raw: bytes) -> None:
        """The asker's own announcement, sent with its directory request:
        checked as a directory entry, and it must be the asker's."""
        if raw in self.announces.raws():
            return
        name = wire.peer_id_str(peer)
        now = self.clock()
        accepted, refused = check_directory(wire.DirectoryReply((raw,)), self.peer_id, now)
        for reason in refused:  # counted here by reason; _strike counts it against the peer
            if reason != "expired":
                self.stats.drop(f"directory_{reason}")
                self._strike(peer, reason, "directory request: a bad announcement", now)
            else:
                self.stats.drop("directory_expired", name)
        for pushed in accepted:
            if pushed.sender != peer:
                self.stats.drop(f"directory_{wire.BAD_SIGNATURE}")
                self._strike(peer, wire.BAD_SIGNATURE, "directory request: another peer's announcement", now)
            elif await self._take_announce(pushed):
                self.stats.received["directory_pushed"] += 1

    async def _fetch_directory_from_peers(self, most: int = 0) -> None:
        """Ask connected peers in turn (bootstrap peers first; ``most`` > 0:
        at most that many, at random) until one answers."""
        boot = self.connector.bootstrap_ids() if not most else set()
        peers = sorted(self.peers(), key=lambda p: (p not in boot, self.rng.random()))
        if most:
            peers = peers[:most]
        try:
            for peer in peers:
                try:
                    taken = await self.fetch_directory(peer)
                except (RpcFailed, trio.TooSlowError) as exc:
                    log.info("directory from %s: %s", wire.peer_id_str(peer)[:20], exc or "timeout")
                    continue
                log.debug("directory from %s: %d announcements", wire.peer_id_str(peer)[:20], taken)
                break
        finally:
            self._directory = "done"

    async def fetch_directory(self, peer: bytes, timeout_s: float = 10.0, domain: str = "") -> int:
        """Ask ``peer`` for the announcements it holds (with ``domain``: those
        of experts serving it), sending ours along; take each that checks
        out as if gossiped. Returns how many were taken. A reply that is too
        large, malformed or forged is refused whole, counted and struck
        against ``peer``; a forged or malformed entry likewise (the others
        are taken); an expired one is only counted; one already held is
        skipped unchecked."""
        name = wire.peer_id_str(peer)
        limit = wire.MAX_DIRECTORY_BYTES + 64 * 1024
        ask = wire.DirectoryRequest(domain=domain, announce=self._own_announce())
        try:
            reply = await self.request(peer, ask, timeout_s=timeout_s, max_reply_bytes=limit)
            if not isinstance(reply, wire.DirectoryReply):
                raise RpcFailed(f"a {reply.KIND} is no directory", wire.SCHEMA)
        except RpcFailed as exc:
            if exc.code in wire.DROP_REASONS:
                self.stats.drop("directory_refused", name)
                self._strike(peer, exc.code, f"directory: {exc}", self.clock())
            raise
        now = self.clock()
        held = self.announces.raws()
        fresh = tuple(raw for raw in reply.announces if raw not in held)
        self.stats.received["directory_known"] += len(reply.announces) - len(fresh)
        accepted, refused = check_directory(wire.DirectoryReply(fresh), self.peer_id, now)
        for reason in refused:
            self.stats.drop(f"directory_{reason}", name)
            if reason != "expired":
                self._strike(peer, reason, "directory: a bad announcement", now)
        taken = 0
        for env in accepted:
            if await self._take_announce(env):
                taken += 1
                self.stats.received["directory"] += 1
        return taken
