"""What experts the network offers, from their signed announcements.

Pure: no I/O, time is passed in."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Optional

from p2pnet import wire


@dataclass(frozen=True)
class ExpertRef:
    peer: bytes
    card: wire.ModelCard
    seen_at: float
    expires_at: float = math.inf

    @property
    def key(self) -> tuple[bytes, str]:
        return (self.peer, self.card.expert_id)

    @property
    def peer_str(self) -> str:
        return wire.peer_id_str(self.peer)


class Directory:
    """Model cards by (peer, expert_id). Each entry lives as long as the
    announcement that brought it says (``take_announce``); entries given
    without one live ``max_age_s``."""

    def __init__(self, max_age_s: float = 30.0, max_entries: int = 10_000, honour_ttl: bool = True) -> None:
        self.max_age_s = max_age_s
        self.honour_ttl = honour_ttl  # False: announced cards live max_age_s whatever their TTL
        self.max_entries = max_entries
        self._cards: dict[tuple[bytes, str], ExpertRef] = {}

    def take_announce(self, env: wire.Envelope, now: float) -> None:
        """What ``env`` (a verified Announce) says its sender offers, until
        its TTL runs out: counted from the envelope's timestamp, or from
        ``now`` if that is earlier (a sender's clock ahead of ours)."""
        ann: wire.Announce = env.message
        until = min(now, env.ts_ms / 1000) + ann.lifetime_s if self.honour_ttl else None
        self.update(env.sender, ann.cards, now, expires_at=until)

    def update(self, peer: bytes, cards: Iterable[wire.ModelCard], now: float,
               expires_at: Optional[float] = None) -> None:
        """Replace what ``peer`` offers with ``cards``, true until ``expires_at``
        (default ``now + max_age_s``)."""
        until = now + self.max_age_s if expires_at is None else expires_at
        for key in [k for k in self._cards if k[0] == peer]:
            del self._cards[key]
        if until <= now:
            return
        for card in cards:
            if len(self._cards) >= self.max_entries:
                self.expire(now)
                if len(self._cards) >= self.max_entries:
                    return
            self._cards[(peer, card.expert_id)] = ExpertRef(peer, card, now, until)

    def forget(self, peer: bytes) -> None:
        for key in [k for k in self._cards if k[0] == peer]:
            del self._cards[key]

    def expire(self, now: float) -> None:
        for key in [k for k, ref in self._cards.items() if ref.expires_at <= now]:
            del self._cards[key]

    def all(self, now: float) -> list[ExpertRef]:
        return sorted((r for r in self._cards.values() if now < r.expires_at),
                      key=lambda r: (r.peer, r.card.expert_id))

    def get(self, peer: bytes, expert_id: str) -> Optional[ExpertRef]:
        return self._cards.get((peer, expert_id))

    def candidates(self, now: float, domain: Optional[str] = None, model: Optional[str] = None) -> list[ExpertRef]:
        """Experts for ``domain`` (those announcing ``general`` serve any
        domain when no specialist exists) and, if given, ``model``."""
        refs = [r for r in self.all(now) if model is None or r.card.model == model]
        if domain is None:
            return refs
        special = [r for r in refs if domain in r.card.domains]
        return special or [r for r in refs if "general" in r.card.domains]

    def models(self, now: float) -> dict[str, list[ExpertRef]]:
        out: dict[str, list[ExpertRef]] = {}
        for ref in self.all(now):
            out.setdefault(ref.card.model, []).append(ref)
        return out
