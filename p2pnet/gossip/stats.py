"""Message counters: received and sent per topic, dropped by reason, and the
per-peer count of bad messages that decides when a peer is disconnected."""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field


@dataclass
class PeerPenalties:
    """Bad messages per peer in a sliding window; over ``limit`` means ban."""

    limit: int = 20
    window_s: float = 60.0
    ban_s: float = 300.0
    _events: dict = field(default_factory=dict)
    _banned: dict = field(default_factory=dict)

    def strike(self, peer: str, now: float) -> bool:
        """Record one bad message; True when the peer has just crossed the limit."""
        q = self._events.setdefault(peer, deque())
        q.append(now)
        while q and q[0] < now - self.window_s:
            q.popleft()
        if len(q) >= self.limit and not self.is_banned(peer, now):
            self.ban(peer, now)
            return True
        return False

    def ban(self, peer: bytes, now: float) -> None:
        """Ban ``peer`` for ``ban_s`` from ``now`` (as crossing the limit does)."""
        self._banned[peer] = now + self.ban_s
        self._events.pop(peer, None)

    def is_banned(self, peer: str, now: float) -> bool:
        until = self._banned.get(peer)
        if until is None:
            return False
        if until <= now:
            del self._banned[peer]
            return False
        return True

    def banned(self, now: float) -> list[str]:
        return [p for p in list(self._banned) if self.is_banned(p, now)]


@dataclass
class Stats:
    received: Counter = field(default_factory=Counter)   # topic -> n
    sent: Counter = field(default_factory=Counter)       # topic -> n
    dropped: Counter = field(default_factory=Counter)    # reason -> n
    dropped_by_peer: Counter = field(default_factory=Counter)  # peer -> n
    disconnected_for_abuse: int = 0
    direct: Counter = field(default_factory=Counter)     # direct streams and queries (direct.py) -> n

    def drop(self, reason: str, peer: str | None = None) -> None:
        self.dropped[reason] += 1
        if peer is not None:
            self.dropped_by_peer[peer] += 1

    def as_json(self) -> dict:
        return {
            "received": dict(self.received),
            "sent": dict(self.sent),
            "dropped": dict(self.dropped),
            "dropped_by_peer": dict(self.dropped_by_peer.most_common(20)),
            "disconnected_for_abuse": self.disconnected_for_abuse,
            "direct": dict(self.direct),
        }
