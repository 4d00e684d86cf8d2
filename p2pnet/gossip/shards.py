"""Announcements sharded by domain (issue 21, item 2).

An expert's announcement goes on the announce shard of each domain its cards
serve (``topics.announce_shard``), not to every node: the nodes that take a
shard are the experts of that domain and, if switched on, the coordinators
asking in it (a validator's probes are asked through its coordinator, so it
would join the shards it probes like any coordinator). A coordinator joins a shard on its first
ask there and leaves it once it has not asked there for ``idle_s``: **off by
default** (``idle_s`` 0): measured on 40 node processes, coordinators that
joined the shard they asked in saw most of their direct queries to experts
they had just dialled time out (docs/benchmarks.md, "Scale"); not understood
yet. Off, a coordinator's view of its candidates' load comes from the
directory exchange. A validator's announcement (few of them) stays on ``topics.ANNOUNCE``, which
every node takes.

A node that takes no shard hears no expert's refresh by gossip, only a new
or changed expert's announcement (and its echoes), which also goes on the
global topic (announcer.py ``_gossip_topics``); the rest of its directory
comes from the join-time fetch and the periodic exchange with one peer,
which carry every card, so inferring a question's domain from every
expert's term summary keeps working everywhere.

:class:`ShardInterest` is the pure part (which shards, from the asks and the
node's own cards, time passed in); :class:`Sharding` is the network's mixin
that subscribes and leaves accordingly."""

from __future__ import annotations

import logging
from typing import Iterable

from p2pnet import wire
from p2pnet.gossip import topics

log = logging.getLogger("p2pnet.gossip")

MAX_SHARDS_PER_ANNOUNCE = 16
"""An expert announces on at most this many domain shards (its cards' domains
in sorted order); any further domain's nodes learn it through the exchange."""

MAX_ASKED = 256
"""At most this many asked domains are remembered (the least recent go)."""


def announce_topics(message: wire.Announce) -> tuple:
    """Where ``message`` is gossiped: a validator's on the global announce
    topic, an expert's on the shard of each of its cards' domains; nowhere
    (empty) for a node offering only its addresses."""
    out = [topics.ANNOUNCE] if message.validator else []
    domains = sorted({d for card in message.cards for d in card.domains})
    out += [topics.announce_shard(d) for d in domains[:MAX_SHARDS_PER_ANNOUNCE]]
    return tuple(out)


def own_domains(cards: Iterable[wire.ModelCard]) -> set:
    return {d for card in cards for d in card.domains}


class ShardInterest:
    """Which announce shards a node takes: its own cards' domains, and the
    domains its coordinator asked in during the last ``idle_s`` seconds
    (0: never the asked ones)."""

    def __init__(self, idle_s: float = 0.0, max_asked: int = MAX_ASKED) -> None:
        self.idle_s = idle_s
        self.max_asked = max_asked
        self._asked: dict[str, float] = {}  # domain -> when it was last asked in

    def ask(self, domain: str, now: float) -> bool:
        """The coordinator asks in ``domain`` at ``now``; True if its shard
        was not wanted a moment before (join now)."""
        if not domain or len(domain) > 64 or self.idle_s <= 0:
            return False
        fresh = self._asked.get(domain, -float("inf")) + self.idle_s <= now
        self._asked.pop(domain, None)
        self._asked[domain] = now  # the most recent last
        while len(self._asked) > self.max_asked:
            del self._asked[next(iter(self._asked))]
        return fresh

    def asked(self, now: float) -> set:
        """The domains asked in within ``idle_s`` of ``now``."""
        for domain in [d for d, at in self._asked.items() if at + self.idle_s <= now]:
            del self._asked[domain]
        return set(self._asked)

    def wanted(self, now: float, mine: Iterable[str] = ()) -> set:
        """The shard topics to take at ``now``, given the node's own domains."""
        return {topics.announce_shard(d) for d in (self.asked(now) | set(mine)) if d}


class Sharding:
    """The network's side: join the shards :class:`ShardInterest` wants,
    leave the others. A mixin: uses ``GossipNetwork``'s state."""

    def ask_domain(self, domain: str) -> None:
        """A coordinator on this node asks in ``domain``: take its shard from
        now on, until it has not asked there for ``shards.idle_s``."""
        if self.shards.ask(domain, self.clock()) and self._nursery is not None:
            self._nursery.start_soon(self._subscribe, topics.announce_shard(domain))

    def _sync_shards(self) -> None:
        """Join the wanted shards, leave the others (called by the announcer)."""
        if self._nursery is None:
            return
        wanted = self.shards.wanted(self.clock(), own_domains(self.announce_extra().get("cards", ())))
        held = {t for t in self._inboxes if topics.shard_domain(t)}
        for topic in sorted(wanted - held):
            self._nursery.start_soon(self._subscribe, topic)
        for topic in sorted(held - wanted):
            self._nursery.start_soon(self._unsubscribe, topic)

    def shard_mesh(self) -> dict:
        """Mesh size of each announce shard taken (0: no peer of it yet)."""
        mesh = getattr(self.gossipsub, "mesh", None) or {}
        return {t: len(mesh.get(t, ())) for t in sorted(self._inboxes) if topics.shard_domain(t)}

    async def _unsubscribe(self, topic: str) -> None:
        send = self._inboxes.pop(topic, None)
        if send is None:
            return
        send.close()
        try:
            await self.pubsub.unsubscribe(topic)
        except Exception as exc:  # a peer gone mid-send: we have left all the same
            log.info("leaving %s: %s", topic, exc)
        self.pubsub.remove_topic_validator(topic)
        log.debug("left %s", topic)
