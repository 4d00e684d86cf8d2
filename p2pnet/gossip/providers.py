"""Provider records in the Kademlia DHT: who hosts a domain, or a model by
its sha256 (issue 21, item 2), for a node that does not hold their
announcements (it does not take that shard of the directory, or joined a
moment ago).

A node hosting experts puts one record per key it serves in the DHT: each
domain of its cards (``domain_key``) and each model sha256 (``model_key``);
anyone finds the hosts with :meth:`Providers.find`. Keys are plain strings
under a ``p2pnet/`` prefix (py-libp2p 0.8.1 encodes a string that is neither
a CID nor hex as UTF-8 bytes, the DHT key).

- :class:`ProvideSchedule` (pure: keys and time in, keys due out) decides
  what to (re)announce: a new key at once, each again every ``reprovide_s``
  (py-libp2p keeps a record 48 h but peers come and go), a failed one after
  ``retry_s``; keys no longer served are dropped (their records expire).
- :class:`Providers` is the driver: it uses the PeerRouting instance's
  ``.dht`` (p2pnet.gossip.dht, run by the connector when the DHT is on), so
  it does nothing while the DHT is off or not started yet.

py-libp2p 0.8.1 notes (read from the installed package, and
shared/notes/libp2p-0.8.1.md): ``KadDHT.provide``/``find_providers`` work
whatever ``enable_providers`` says (the flag is only checked by its config
validation); ``find_providers`` can return one peer several times, so
answers are merged by peer here; a lookup is bounded by ``lookup_timeout_s``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

import trio

from p2pnet import wire

log = logging.getLogger("p2pnet.gossip")

MAX_KEYS = 64  # keys one node provides (its cards' domains and models)
MAX_ADDRS = 16


def domain_key(domain: str) -> str:
    return f"p2pnet/domain/{domain}"


def model_key(sha256: str) -> str:
    return f"p2pnet/model/{sha256.lower()}"


def keys_of(cards: Iterable[wire.ModelCard]) -> list[str]:
    """The keys a node with ``cards`` provides, at most MAX_KEYS, in a stable order."""
    keys: dict[str, None] = {}
    for card in cards:
        for domain in card.domains:
            keys[domain_key(domain)] = None
        if card.sha256:
            keys[model_key(card.sha256)] = None
    return list(keys)[:MAX_KEYS]


@dataclass(frozen=True)
class Provider:
    peer: bytes
    addrs: tuple[str, ...]


class ProvideSchedule:
    """Which keys to announce in the DHT, and when. Pure: time is passed in."""

    def __init__(self, reprovide_s: float = 1800.0, retry_s: float = 60.0) -> None:
        self.reprovide_s = reprovide_s
        self.retry_s = retry_s
        self._next: dict[str, float] = {}  # key -> when it is due again

    def due(self, keys: Iterable[str], now: float) -> list[str]:
        """The keys of ``keys`` to provide now; forgets keys not in ``keys``."""
        keys = list(keys)
        for gone in set(self._next) - set(keys):
            del self._next[gone]
        return [k for k in keys if self._next.get(k, now) <= now]

    def done(self, key: str, ok: bool, now: float) -> None:
        self._next[key] = now + (self.reprovide_s if ok else self.retry_s)

    def next_at(self) -> Optional[float]:
        return min(self._next.values(), default=None)


def merge(infos: Iterable[tuple[bytes, Iterable[str]]], limit: int) -> list[Provider]:
    """One Provider per peer (py-libp2p may name a peer twice), addresses
    merged in order, at most ``limit`` peers."""
    by_peer: dict[bytes, dict[str, None]] = {}
    for peer, addrs in infos:
        held = by_peer.setdefault(peer, {})
        for a in addrs:
            if len(held) < MAX_ADDRS:
                held[str(a)] = None
    return [Provider(p, tuple(a)) for p, a in list(by_peer.items())[:limit]]


class Providers:
    """Provides this node's keys in the DHT and finds others'. ``routing()``
    returns the running PeerRouting or None (DHT off or not up yet);
    ``keys()`` the keys to provide now (see :func:`keys_of`)."""

    def __init__(self, routing: Callable[[], object], keys: Callable[[], list[str]], *,
                 schedule: Optional[ProvideSchedule] = None, poll_s: float = 10.0,
                 lookup_timeout_s: float = 15.0) -> None:
        self.routing = routing
        self.keys = keys
        self.schedule = schedule or ProvideSchedule()
        self.poll_s = poll_s
        self.lookup_timeout_s = lookup_timeout_s
        self.provided = 0
        self.failed = 0
        self.lookups = 0

    async def provide_due(self, now: float) -> int:
        """Provide every key that is due; returns how many went out."""
        routing = self.routing()
        if routing is None:
            return 0
        sent = 0
        for key in self.schedule.due(self.keys(), now):
            ok = False
            try:
                with trio.move_on_after(self.lookup_timeout_s):
                    ok = bool(await routing.dht.provide(key))
            except Exception as exc:  # a DHT failure is counted, never the node's end
                log.info("dht: providing %s failed: %s", key, exc)
            self.schedule.done(key, ok, now)
            if ok:
                self.provided += 1
                sent += 1
            else:
                self.failed += 1
        return sent

    async def run(self, clock: Callable[[], float] = trio.current_time) -> None:
        """Provide what is due every ``poll_s`` until cancelled."""
        while True:
            await self.provide_due(clock())
            await trio.sleep(self.poll_s)

    async def find(self, key: str, count: int = 20) -> list[Provider]:
        """The peers that provide ``key`` (this node too, if it does); [] when
        the DHT is off, nobody does, or the lookup runs out of time."""
        routing = self.routing()
        if routing is None:
            return []
        self.lookups += 1
        infos = []
        try:
            with trio.move_on_after(self.lookup_timeout_s):
                infos = await routing.dht.find_providers(key, count)
        except Exception as exc:
            log.info("dht: looking up providers of %s failed: %s", key, exc)
        return merge(((i.peer_id.to_bytes(), i.addrs) for i in infos or ()), count)

    async def find_domain(self, domain: str, count: int = 20) -> list[Provider]:
        return await self.find(domain_key(domain), count)

    async def find_model(self, sha256: str, count: int = 20) -> list[Provider]:
        return await self.find(model_key(sha256), count)

    def status(self) -> dict:
        return {"keys": len(self.keys()), "provided": self.provided, "failed": self.failed,
                "lookups": self.lookups}
