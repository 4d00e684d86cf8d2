"""The node's peer and announcement policies, free of I/O: time and
randomness are passed in, so each is tested alone (tests/test_scale.py).
:class:`~p2pnet.gossip.network.GossipNetwork` and
:class:`~p2pnet.gossip.connector.Connector` drive them.

- :func:`choose_trim`: which connections to close when there are more than
  the high watermark (py-libp2p 0.8.1's ConnectionPruner never closes a
  connection with an open stream, and every GossipSub peer holds one, so it
  trims nothing here; its AutoConnector dials every peer in the peer store).
- :class:`AnnounceSchedule`: when to announce: on a change, at most once per
  ``min_gap_s``; otherwise every ``refresh_s``.
- :class:`AnnounceStore`: the newest unexpired announcement of each peer, as
  received (the signed envelope), served to joining nodes.
- :func:`check_directory`: which announcements of a peer's DirectoryReply to
  take, as if each had come by gossip.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Hashable, Iterable, Optional

from p2pnet import wire


@dataclass(frozen=True)
class Watermarks:
    """Keep between ``low`` and ``high`` connections; a connection younger
    than ``grace_s`` is not trimmed (it may be a joiner still fetching the
    directory)."""

    low: int = 8
    high: int = 16
    grace_s: float = 10.0

    def __post_init__(self) -> None:
        if not 1 <= self.low <= self.high:
            raise ValueError(f"watermarks: need 1 <= low ({self.low}) <= high ({self.high})")


@dataclass(frozen=True)
class Conn:
    """One connected peer, as the trimming policy sees it."""

    peer: bytes
    since: float            # when this node first saw it connected
    busy: bool = False      # a direct request or answer stream in flight
    bootstrap: bool = False
    validator: bool = False  # it announced itself a validator
    mesh: int = 0           # GossipSub topics whose mesh holds it


def choose_trim(conns: Iterable[Conn], marks: Watermarks, now: float, *, keep_validators: bool,
                rng: random.Random) -> list[bytes]:
    """Peers to disconnect: none while at most ``marks.high`` are connected;
    above it, enough to come back to ``marks.low``. Never a busy peer or one
    connected less than ``grace_s`` ago. Dropped first: peers in no mesh,
    then in fewer meshes; validators last when ``keep_validators`` (the node
    follows the ledger) and bootstrap peers last of all, so they go only when
    the node keeps ``low`` others. Ties are broken by ``rng``."""
    conns = list(conns)
    if len(conns) <= marks.high:
        return []
    excess = len(conns) - marks.low
    trimmable = [c for c in conns if not c.busy and now - c.since >= marks.grace_s]
    ranked = sorted(trimmable, key=lambda c: (c.bootstrap, keep_validators and c.validator, c.mesh, rng.random()))
    return [c.peer for c in ranked[:excess]]


class AnnounceSchedule:
    """When a node announces. ``key`` stands for what an announcement says
    that matters (addresses, cards, role; not the ledger height): a new key
    is announced at once unless the last announcement went less than
    ``min_gap_s`` ago; an unchanged one every ``refresh_s``. ``force`` makes
    the next check count as a change (the node has just (re)joined).

    A new key is echoed ``echoes_s`` after it was announced (each delay
    counted from the announcement before): GossipSub delivers a message only
    to the peers in the topic's mesh or fanout at that moment, and a peer
    that connected a moment earlier may not be in it yet. Without echoes it
    would wait a whole refresh period for the change (an expert that just
    came up, a node that just joined)."""

    _FORCED = object()

    def __init__(self, refresh_s: float, min_gap_s: float, echoes_s: tuple = (2.0, 6.0, 15.0)) -> None:
        self.refresh_s = refresh_s
        self.min_gap_s = min(min_gap_s, refresh_s)
        self.echoes_s = tuple(min(e, refresh_s) for e in echoes_s)
        self.last_at: Optional[float] = None
        self.last_key: object = None
        self._echo = len(self.echoes_s)  # echoes of the last key still due from here

    def force(self) -> None:
        self.last_key = self._FORCED

    @property
    def echoing(self) -> bool:
        """Echoes of the last new key are still due."""
        return self._echo < len(self.echoes_s)

    def wait_s(self, now: float, key: Hashable) -> float:
        """Seconds until an announcement of ``key`` is due (0: now)."""
        if self.last_at is None:
            return 0.0
        if key != self.last_key:
            gap = self.min_gap_s
        elif self._echo < len(self.echoes_s):
            gap = self.echoes_s[self._echo]
        else:
            gap = self.refresh_s
        return max(0.0, self.last_at + gap - now)

    def sent(self, now: float, key: Hashable, *, echo: bool = True) -> None:
        """``key`` was announced at ``now``; ``echo=False``: no echoes of it
        (an announcement kept for the directory only, not gossiped)."""
        self._echo = 0 if key != self.last_key else self._echo + 1
        if not echo:
            self._echo = len(self.echoes_s)
        self.last_at, self.last_key = now, key


class AnnounceStore:
    """The newest unexpired Announce envelope of each peer, at most
    ``limit`` (those expiring first are dropped)."""

    def __init__(self, limit: int = 2 * wire.MAX_DIRECTORY_ENTRIES) -> None:
        self.limit = limit
        self._envs: dict[bytes, wire.Envelope] = {}

    @staticmethod
    def expires_at(env: wire.Envelope) -> float:
        return env.ts_ms / 1000 + env.message.lifetime_s

    def put(self, env: wire.Envelope, now: float) -> bool:
        """Keep ``env`` if it is unexpired and newer than what is held from
        its sender; True if it was (then it is news to hand on)."""
        if self.expires_at(env) <= now:
            return False
        held = self._envs.get(env.sender)
        if held is not None and held.seq >= env.seq:
            return False
        self._envs[env.sender] = env
        if len(self._envs) > self.limit:
            self.expire(now)
            while len(self._envs) > self.limit:
                del self._envs[min(self._envs, key=lambda p: self.expires_at(self._envs[p]))]
        return env.sender in self._envs

    def get(self, peer: bytes) -> Optional[wire.Envelope]:
        return self._envs.get(peer)

    def expire(self, now: float) -> None:
        for peer in [p for p, e in self._envs.items() if self.expires_at(e) <= now]:
            del self._envs[peer]

    def current(self, now: float, limit: int = wire.MAX_DIRECTORY_ENTRIES,
                max_bytes: int = wire.MAX_DIRECTORY_BYTES, domain: str = "") -> list[wire.Envelope]:
        """Unexpired announcements, the latest first, within ``limit`` and
        ``max_bytes``; with ``domain``, only those of experts serving it."""
        self.expire(now)
        out, size = [], 0
        envs = self._envs.values()
        if domain:
            envs = [e for e in envs if any(domain in c.domains for c in e.message.cards)]
        for env in sorted(envs, key=lambda e: -e.ts_ms):
            if len(out) >= limit or size + len(env.raw) > max_bytes:
                break
            out.append(env)
            size += len(env.raw)
        return out

    def raws(self) -> set[bytes]:
        """The envelopes held, as bytes: an entry of a directory reply that is
        one of them needs no checking again."""
        return {e.raw for e in self._envs.values()}

    def __len__(self) -> int:
        return len(self._envs)


def check_directory(reply: wire.DirectoryReply, me: bytes, now: float,
                    max_staleness_ms: int = wire.MAX_STALENESS_MS) -> tuple[list[wire.Envelope], list[str]]:
    """Open each announcement of ``reply`` as a gossiped one would be:
    signature and schema, kind, not expired, not from the future. Returns
    (accepted, reasons of those refused: a ``wire`` drop reason, or
    ``expired``). Our own announcements are skipped, not refused."""
    accepted: list[wire.Envelope] = []
    refused: list[str] = []
    seen: set[bytes] = set()
    for raw in reply.announces:
        try:
            env = wire.open_envelope(raw, wire.MAX_ANNOUNCE_BYTES)
        except wire.WireError as exc:
            refused.append(exc.reason)
            continue
        if env.kind != wire.Announce.KIND:
            refused.append(wire.SCHEMA)
        elif env.ts_ms - now * 1000 > max_staleness_ms:
            refused.append(wire.STALE)
        elif AnnounceStore.expires_at(env) <= now:
            refused.append("expired")
        elif env.sender in seen:
            refused.append(wire.REPLAYED)
        elif env.sender != me:
            seen.add(env.sender)
            accepted.append(env)
    return accepted, refused
