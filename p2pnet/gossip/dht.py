"""Peer routing over a Kademlia DHT: find a peer's addresses by its ID,
beyond what peer exchange (announcements) has told this node.

A thin wrapper around py-libp2p 0.8.1's ``libp2p.kad_dht.KadDHT`` in server
mode, with its record stores unused (p2pnet keeps no values or provider
records in the DHT: only the routing table and FIND_NODE matter here).

Notes on py-libp2p 0.8.1 (read from the installed package):

- the protocol is always ``/ipfs/kad/1.0.0``: ``protocol_prefix`` is
  stored but the stream handler and the dials use the constant;
- the routing table only fills from peers added to it (``add_peer``) or
  met in lookups: connecting to a peer does not add it, so
  :meth:`PeerRouting.add_peer` is called for each connected peer;
- ``find_peer`` looks in the routing table and the peerstore first, and
  only then asks the network; :meth:`PeerRouting.find` reports which;
- inbound DHT streams are capped at 12 concurrent handlers inside KadDHT.

The driver is the service's ``run``: start it in the node's nursery with
``await nursery.start(routing.run)``; everything stops with that nursery.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

import trio

from p2pnet import wire
from p2pnet.gossip.errors import GossipError

log = logging.getLogger("p2pnet.gossip")

MAX_ADDRS = 16  # addresses kept from one answer


class PeerRoutingError(GossipError):
    """The DHT could not be started or asked."""


@dataclass(frozen=True)
class Found:
    """A peer's addresses, and where they came from: ``"local"`` (routing
    table or peerstore: already known here) or ``"dht"`` (a network lookup)."""

    peer: bytes
    addrs: tuple[str, ...]
    source: str


class PeerRouting:
    def __init__(self, host, *, lookup_timeout_s: float = 15.0) -> None:
        from libp2p.kad_dht.kad_dht import DHTMode, KadDHT

        self.host = host
        self.lookup_timeout_s = lookup_timeout_s
        self.dht = KadDHT(host, DHTMode.SERVER, enable_random_walk=False, enable_providers=False,
                          enable_values=False)
        self.lookups = 0
        self.found = 0

    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Run the DHT service until cancelled."""
        from libp2p.tools.anyio_service import background_trio_service

        async with background_trio_service(self.dht):
            task_status.started(self)
            await trio.sleep_forever()

    async def add_peer(self, peer: bytes) -> bool:
        """Put a connected peer into the routing table (True if it is there
        now). A peer that does not speak the DHT protocol is not added."""
        from libp2p.peer.id import ID

        try:
            with trio.move_on_after(self.lookup_timeout_s):
                return bool(await self.dht.add_peer(ID(peer)))
        except Exception as exc:  # a peer that resets the stream, or left
            log.debug("dht: cannot add %s: %s", wire.peer_id_str(peer)[:20], exc)
        return False

    def known(self, peer: bytes) -> bool:
        """Whether ``peer`` is in the routing table."""
        from libp2p.peer.id import ID

        return self.dht.routing_table.peer_in_table(ID(peer))

    def table_size(self) -> int:
        return self.dht.get_routing_table_size()

    async def find(self, peer: bytes) -> Optional[Found]:
        """The addresses of ``peer``, or None if no lookup finds them within
        ``lookup_timeout_s``."""
        from libp2p.peer.id import ID

        pid = ID(peer)
        local = self._local(pid)
        if local:
            return Found(peer, local, "local")
        self.lookups += 1
        info = None
        try:
            with trio.move_on_after(self.lookup_timeout_s):
                info = await self.dht.find_peer(pid)
        except Exception as exc:
            log.info("dht: lookup of %s failed: %s", wire.peer_id_str(peer)[:20], exc)
            return None
        if info is None or not info.addrs:
            return None
        self.found += 1
        return Found(peer, tuple(str(a) for a in info.addrs[:MAX_ADDRS]), "dht")

    def _local(self, pid) -> tuple[str, ...]:
        info = self.dht.routing_table.get_peer_info(pid)
        addrs = list(info.addrs) if info else []
        if not addrs:
            try:
                addrs = list(self.host.get_peerstore().addrs(pid))
            except Exception:
                addrs = []
        return tuple(str(a) for a in addrs[:MAX_ADDRS])

    def status(self) -> dict:
        return {"routing_table": self.table_size(), "lookups": self.lookups, "found": self.found}
