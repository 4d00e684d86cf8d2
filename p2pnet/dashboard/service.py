"""The dashboard as a node service (see p2pnet.services): it mounts the page's
routes, counts the gossip each peer signed, remembers each peer's last
announcement (its role and ledger height), and builds the JSON snapshot the
page polls (``GET /dashboard/state``).

Reading the ledger (replaying it for the standing over height, ``verify``)
costs more than a request should: a worker task does it in a thread, and
only while somebody has asked for the dashboard in the last
``WATCHED_S`` seconds. A request never waits for it; it gets the last
result, which the next poll refreshes.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Optional

import trio

from p2pnet import __version__, wire
from p2pnet.consensus.reputation import standings
from p2pnet.dashboard.history import LedgerHistory
from p2pnet.dashboard.recent import RecentQueries
from p2pnet.dashboard.views import card_json, experts_view, peers_view, reachability, roles
from p2pnet.gossip import topics

log = logging.getLogger("p2pnet.dashboard")

WATCHED_S = 30.0  # the ledger is read while the page was polled this recently
REFRESH_GAP_S = 1.0  # at most one ledger refresh a second
MAX_PEERS_TRACKED = 1024  # peers whose announcement and message count are kept
STANDINGS_SHOWN = 200
EXPERTS_SHOWN = 500  # cards in one snapshot (the directory may hold thousands)


class DashboardService:
    def __init__(self, node, coordinator, ledger=None, recent: Optional[RecentQueries] = None,
                 clock=time.time) -> None:
        self.node = node
        self.coordinator = coordinator
        self.ledger = ledger  # the LedgerService, or None without a genesis
        self.recent = recent if recent is not None else RecentQueries()
        self.clock = clock
        self.history = LedgerHistory(ledger.genesis) if ledger is not None else None
        self._announced: dict[str, dict] = {}  # peer -> {"validator", "height", "cards", "seen"}
        self._received: dict[str, int] = {}  # peer -> messages it signed that this node accepted
        self._watched_at = float("-inf")
        self._wanted = trio.Event()
        self._standings: tuple = (None, [])  # (state they were computed from, rows)
        for topic in topics.ALL:  # counts what the node takes; subscribes to nothing more
            node.network.on(topic, self._on_message, subscribe=False)
        node.network.on(topics.ANNOUNCE, self._on_announce)

    # ------------------------------------------------------------ node service hooks

    def mount(self, router) -> None:
        from p2pnet.api.dashboard import mount_dashboard

        mount_dashboard(router, self.state, api_key=self.node.config.api_key)

    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        if self.history is None:
            return
        while True:
            await self._wanted.wait()
            self._wanted = trio.Event()
            if time.monotonic() - self._watched_at > WATCHED_S:
                continue
            try:
                await trio.to_thread.run_sync(self.history.refresh, self.ledger.ledger)
            except Exception:  # the page shows the last snapshot; the node goes on
                log.exception("reading the ledger for the dashboard failed")
            await trio.sleep(REFRESH_GAP_S)

    # ------------------------------------------------------------ gossip

    async def _on_message(self, env: wire.Envelope) -> None:
        peer = env.sender_str
        self._received[peer] = self._received.get(peer, 0) + 1
        if len(self._received) > MAX_PEERS_TRACKED:
            self._prune(self._received)

    async def _on_announce(self, env: wire.Envelope) -> None:
        msg = env.message
        self._announced[env.sender_str] = {"validator": bool(msg.validator), "height": int(msg.height),
                                           "cards": len(msg.cards), "seen": self.clock()}
        if len(self._announced) > MAX_PEERS_TRACKED:
            self._prune(self._announced)

    def _prune(self, table: dict) -> None:
        """Forget the peers not connected that announced themselves longest ago."""
        connected = {wire.peer_id_str(p) for p in self.node.network.peers()}
        stale = sorted((p for p in table if p not in connected),
                       key=lambda p: self._announced.get(p, {}).get("seen", 0.0))
        for peer in stale[:max(1, len(table) - MAX_PEERS_TRACKED)]:
            table.pop(peer, None)

    # ------------------------------------------------------------ the snapshot

    def state(self) -> dict:
        """Everything the page shows, as JSON; asks the worker to refresh the ledger view."""
        self._watched_at = time.monotonic()
        self._wanted.set()
        now = self.clock()
        cards = self._cards(now)
        me = self.node.peer_id
        return {
            "time_ms": int(now * 1000),
            "node": self._node(now, cards),
            "peers": self._peers(now, cards),
            "experts": experts_view(cards)[:EXPERTS_SHOWN],
            "experts_total": len(cards),
            "reputation": self._reputation(),
            "ledger": self.history.snapshot if self.history is not None else None,
            "queries": self.recent.as_json(),
            "me": me,
        }

    def _cards(self, now: float) -> list[dict]:
        me = self.node.network.peer_id
        out = [card_json(self.node.peer_id, e.card(), local=True, age_s=0.0)
               for e in self.coordinator.local.values()]
        for ref in self.coordinator.directory.all(now):
            if ref.peer != me:
                out.append(card_json(ref.peer_str, ref.card, local=False, age_s=now - ref.seen_at))
        return out

    def _validators(self) -> Optional[set[str]]:
        if self.ledger is None:
            return None
        return {v.peer_id_text for v in self.ledger.genesis.validators}

    def _node(self, now: float, cards: list[dict]) -> dict:
        node, net = self.node, self.node.network
        c = net.stats
        validators = self._validators()
        me = node.peer_id
        network = ({"chain_id": self.ledger.genesis.chain_id, "genesis_hash": self.ledger.genesis.hash().hex(),
                    "validators": len(self.ledger.genesis.validators)} if self.ledger is not None else
                   {"chain_id": None, "note": "no genesis file: this node keeps no ledger"})
        network["bootstrap"] = list(node.config.bootstrap)
        peers = net.peers()
        http = getattr(node, "http", None)
        return {
            "peer_id": me,
            "version": __version__,
            "pid": os.getpid(),
            "started_ms": int(node.started_at * 1000),
            "uptime_s": round(now - node.started_at, 1),
            "api": node.api_url,
            "state": "ready" if peers else "no peers",
            "roles": roles(me in validators if validators is not None else False,
                           any(card["local"] for card in cards)),
            "reachability": reachability(net.listen_addrs, net.announce_addrs),
            "network": network,
            "peer_count": len(peers),
            "messages": {"received": sum(c.received.values()), "sent": sum(c.sent.values()),
                         "dropped": sum(c.dropped.values()), "dropped_by_reason": dict(c.dropped.most_common(12)),
                         "disconnected_for_abuse": c.disconnected_for_abuse},
            "banned": len(net.penalties.banned(now)),
            "queries": self.coordinator.status(),
            "http": http.stats() if http is not None else None,
        }

    def _peers(self, now: float, cards: list[dict]) -> list[dict]:
        net = self.node.network
        connected = {wire.peer_id_str(p): list(net.book.addrs(p)) for p in net.peers()}
        known = {wire.peer_id_str(p): list(addrs) for p, addrs in net.book.known()[:MAX_PEERS_TRACKED]}
        hosts = {card["peer_id"] for card in cards}
        dropped = dict(net.stats.dropped_by_peer)
        return peers_view(self.node.peer_id, connected, known, self._announced, self._validators(), hosts,
                          self._received, dropped, now)

    def _reputation(self) -> Optional[dict]:
        if self.ledger is None:
            return None
        state = self.ledger.service.state
        if self._standings[0] is not state:  # the state is immutable: recompute when it is replaced
            self._standings = (state, [s.to_json() for s in standings(state)[:STANDINGS_SHOWN]])
        rows = self._standings[1]
        history = self.history.snapshot["history"] if self.history is not None else None
        return {"height": state.height, "standings": rows, "history": history}
