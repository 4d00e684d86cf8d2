"""Which connections the HTTP server holds, and for whom. No I/O: the server
(server.py) asks before it accepts a connection or serves a request, and
cancels what is evicted.

A held connection is in one of three pools:

- pending: waiting for a request head, just accepted or idle between
  keep-alive requests. Nothing is known of it yet (a slowloris connection
  never gets further), so it is the first to go: when the pending pool, or
  the client's share of it, is full, the oldest pending connection of the
  client holding the most of them (that client's own, when over its share)
  is evicted to make room. A newcomer that sends its head at once is
  therefore served however many half-sent connections are held.
- control: a bodiless GET or HEAD of a control route (/status, /peers, ...),
  or a refusal being answered. Short; never refused.
- work: every other request. At most ``max_connections - control_reserve``
  of them, and ``max_per_client`` per client (source address); past that
  the request is answered 503 "busy" at once, so control requests always
  find room.

A client is its source IP address; on a loopback-only node every local
process is the same client, and only the pools above protect one from
another.
"""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass, field

import trio

PENDING, CONTROL, WORK = "pending", "control", "work"  # the pools
NEW, EVICTED, RELEASED = "new", "evicted", "released"  # in none


@dataclass(eq=False)
class Slot:
    """One held connection."""

    client: str
    state: str = NEW
    order: int = 0  # when it last became pending: higher is later
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)  # its wait for a head; cancelled on eviction

    @property
    def evicted(self) -> bool:
        return self.state == EVICTED


class Pools:
    def __init__(self, max_connections: int, max_pending: int, max_per_client: int, control_reserve: int) -> None:
        if not 1 <= max_pending <= max_connections:
            raise ValueError(f"max_pending must be between 1 and max_connections, not {max_pending!r}")
        if not 1 <= control_reserve < max_connections:
            raise ValueError(f"control_reserve must be at least 1 and below max_connections, not {control_reserve!r}")
        if not max_per_client >= 1:
            raise ValueError(f"max_per_client must be positive, not {max_per_client!r}")
        self.max_connections = max_connections
        self.max_pending = max_pending
        self.max_per_client = max_per_client
        self.max_work = max_connections - control_reserve
        self._slots: set[Slot] = set()
        self._count: Counter[str] = Counter()
        self._by_client: dict[str, Counter[str]] = {}
        self.evicted = 0
        self._seq = itertools.count(1)

    @property
    def held(self) -> int:
        return len(self._slots)

    def count(self, state: str) -> int:
        return self._count[state]

    def admit(self, client: str) -> Slot | None:
        """A slot for a new connection, pending; None when every slot is busy
        with a request (answer 503)."""
        if not self._make_room(client, adding=True):
            return None
        slot = Slot(client, order=next(self._seq))
        self._slots.add(slot)
        self._move(slot, PENDING)
        return slot

    def to_pending(self, slot: Slot) -> None:
        """A keep-alive connection waits for its next request."""
        if slot.state not in (CONTROL, WORK):
            return
        self._make_room(slot.client, adding=False)
        slot.order = next(self._seq)
        slot.scope = trio.CancelScope()
        self._move(slot, PENDING)

    def start_request(self, slot: Slot, control: bool) -> bool:
        """A request head arrived. False: no room for it (answer 503 busy);
        the slot is then held as a control slot until the answer is sent."""
        if slot.state != PENDING:  # evicted, its head arriving just then
            return False
        mine = self._by_client[slot.client]
        room = control or (self._count[WORK] < self.max_work and mine[WORK] < self.max_per_client)
        self._move(slot, WORK if room and not control else CONTROL)
        return room

    def release(self, slot: Slot) -> None:
        if slot.state in (PENDING, CONTROL, WORK):
            self._move(slot, RELEASED)
            self._slots.discard(slot)

    def _move(self, slot: Slot, state: str) -> None:
        if slot.state in (PENDING, CONTROL, WORK):
            mine = self._by_client[slot.client]
            self._count[slot.state] -= 1
            mine[slot.state] -= 1
            if not any(mine.values()):
                del self._by_client[slot.client]
        slot.state = state
        if state in (PENDING, CONTROL, WORK):
            self._count[state] += 1
            self._by_client.setdefault(slot.client, Counter())[state] += 1

    def _make_room(self, client: str, adding: bool) -> bool:
        """Evict, if need be, to make room for one more pending connection of
        `client` (`adding`: a new connection, not one already held)."""
        mine = self._by_client.get(client)
        if mine is not None and mine[PENDING] >= self.max_per_client:
            self._evict(client)
            return True
        if self._count[PENDING] < self.max_pending and (not adding or self.held < self.max_connections):
            return True
        if self._count[PENDING] == 0:
            return False
        self._evict(max(self._by_client, key=lambda name: self._by_client[name][PENDING]))
        return True

    def _evict(self, client: str) -> None:
        """Evict the oldest pending connection of `client`."""
        victim = min((s for s in self._slots if s.client == client and s.state == PENDING), key=lambda s: s.order)
        self._move(victim, EVICTED)
        self._slots.discard(victim)
        victim.scope.cancel()
        self.evicted += 1
