"""What experts the network offers, from their signed announcements.

Pure: no I/O, time is passed in."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional

from p2pnet import wire


@dataclass(frozen=True)
class ExpertRef:
    peer: bytes
    card: wire.ModelCard
    seen_at: float

    @property
    def key(self) -> tuple[bytes, str]:
        return (self.peer, self.card.expert_id)

    @property
    def peer_str(self) -> str:
        return wire.peer_id_str(self.peer)


class Directory:
    """Model cards by (peer, expert_id); entries older than ``max_age_s`` expire."""

    def __init__(self, max_age_s: float = 30.0, max_entries: int = 10_000) -> None:
        self.max_age_s = max_age_s
        self.max_entries = max_entries
        self._cards: dict[tuple[bytes, str], ExpertRef] = {}

    def update(self, peer: bytes, cards: Iterable[wire.ModelCard], now: float) -> None:
        """Replace what ``peer`` offers with ``cards``."""
        for key in [k for k in self._cards if k[0] == peer]:
            del self._cards[key]
        for card in cards:
            if len(self._cards) >= self.max_entries:
                self.expire(now)
                if len(self._cards) >= self.max_entries:
                    return
            self._cards[(peer, card.expert_id)] = ExpertRef(peer, card, now)

    def forget(self, peer: bytes) -> None:
        for key in [k for k in self._cards if k[0] == peer]:
            del self._cards[key]

    def expire(self, now: float) -> None:
        for key in [k for k, ref in self._cards.items() if now - ref.seen_at > self.max_age_s]:
            del self._cards[key]

    def all(self, now: float) -> list[ExpertRef]:
        return sorted((r for r in self._cards.values() if now - r.seen_at <= self.max_age_s),
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
