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
  only then asks the network, and what it returns is the peerstore's entry
  after the lookup: whatever else wrote there meanwhile included (DCUtR's
  predicted addresses of a peer it punches to, identify). So
  :meth:`PeerRouting.find` runs the network lookup itself and returns only
  the addresses the lookup heard: the peerstore's ``add_addrs`` is wrapped
  to note, for the peer looked up, what the lookup's own tasks (a context
  variable, which Trio copies into child tasks) write there;
- inbound DHT streams are capped at 12 concurrent handlers inside KadDHT;
- a FIND_NODE answer carries, for each peer, every address the peerstore
  holds (identify's: a NATed peer's LAN addresses) and never a relayed one
  it does not hold. :meth:`PeerRouting._closer_peers` replaces that: only
  what :func:`p2pnet.gossip.nat.handed_out` allows (the announcement rule),
  plus the peer's ``/p2p-circuit`` addresses (``extra_addrs``: those its
  announcements named), and its signed record only when that record holds
  nothing else. A peer with nothing to hand out is left out of the answer.

The driver is the service's ``run``: start it in the node's nursery with
``await nursery.start(routing.run)``; everything stops with that nursery.
"""

from __future__ import annotations

import contextvars
import logging
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

import trio

from p2pnet import wire
from p2pnet.gossip import nat
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
    def __init__(self, host, *, lookup_timeout_s: float = 15.0,
                 extra_addrs: Optional[Callable[[bytes], Iterable[str]]] = None,
                 announce_private: bool = False) -> None:
        from libp2p.kad_dht.kad_dht import DHTMode, KadDHT

        self.host = host
        self.lookup_timeout_s = lookup_timeout_s
        self.extra_addrs = extra_addrs or (lambda peer: ())
        self.announce_private = announce_private
        self.dht = KadDHT(host, DHTMode.SERVER, enable_random_walk=False, enable_providers=False,
                          enable_values=False)
        self.dht._add_closer_peers_to_response = self._closer_peers  # what answers carry (module doc)
        self.lookups = 0
        self.found = 0
        self.walks = 0
        self.withheld = 0  # addresses kept out of answers (private, loopback, unusable)
        # (peer looked up, addresses heard) inside a lookup's tasks (module doc)
        self._heard: contextvars.ContextVar = contextvars.ContextVar(f"dht-heard-{id(self)}", default=None)
        self._hear_from(host.get_peerstore())

    def _hear_from(self, store) -> None:
        add_addrs = store.add_addrs

        def noting(peer_id, addrs, ttl=0):
            heard = self._heard.get()
            if heard is not None and peer_id == heard[0] and len(heard[1]) < 4 * MAX_ADDRS:
                heard[1].extend(str(a) for a in list(addrs)[:MAX_ADDRS])  # bounded: answers are hostile input
            return add_addrs(peer_id, addrs, ttl)

        store.add_addrs = noting

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

    async def find(self, peer: bytes, *, fresh: bool = False, local: bool = True) -> Optional[Found]:
        """The addresses of ``peer``, or None if no lookup finds them within
        ``lookup_timeout_s``. With ``fresh``, what this node knew of the
        peer's addresses is forgotten first, so they come from the network.
        ``local=False`` asks the network even when the peerstore knows
        addresses (they were just tried and failed), without forgetting them."""
        from libp2p.peer.id import ID

        pid = ID(peer)
        if pid == self.host.get_id():  # get_addrs() ends each address with /p2p/<own id>
            return Found(peer, _strip_peers(self.host.get_addrs(), pid.to_base58())[:MAX_ADDRS], "local")
        if fresh:
            self.forget(peer)
        known = () if fresh or not local else self._local(pid)
        if known:
            return Found(peer, known, "local")
        self.lookups += 1
        heard: tuple = (pid, [])
        token = self._heard.set(heard)
        try:
            with trio.move_on_after(self.lookup_timeout_s):
                await self.dht.peer_routing.find_closest_peers_network(peer)
        except Exception as exc:
            log.info("dht: lookup of %s failed: %s", wire.peer_id_str(peer)[:20], exc)
            return None
        finally:
            self._heard.reset(token)
        addrs = _strip_peers(heard[1], pid.to_base58())
        if not addrs:
            return None
        self.found += 1
        return Found(peer, addrs[:MAX_ADDRS], "dht")

    def forget(self, peer: bytes) -> None:
        """Drop ``peer`` from the routing table and its addresses from the peerstore."""
        from libp2p.peer.id import ID

        pid = ID(peer)
        try:
            self.dht.routing_table.remove_peer(pid)
            self.host.get_peerstore().clear_addrs(pid)
        except Exception as exc:
            log.debug("dht: cannot forget %s: %s", wire.peer_id_str(peer)[:20], exc)

    async def walk(self) -> list[bytes]:
        """A lookup of this node's own ID: fills the routing table (and the
        peerstore) with the peers nearest to it; returns their IDs."""
        self.walks += 1
        out: list = []
        try:
            with trio.move_on_after(self.lookup_timeout_s):
                out = await self.dht.peer_routing.find_closest_peers_network(self.host.get_id().to_bytes())
        except Exception as exc:
            log.info("dht: walk failed: %s", exc)
        return [p.to_bytes() for p in out if p != self.host.get_id()]

    def addrs_to_hand_out(self, pid) -> tuple[str, ...]:
        """What an answer may carry about ``pid`` (module doc)."""
        me = self.host.get_id()
        if pid == me:
            known = [_strip_peer(str(a), me.to_base58()) for a in self.host.get_addrs()]
        else:
            try:
                known = [str(a) for a in self.host.get_peerstore().addrs(pid)]
            except Exception:
                known = []
        extra = tuple(self.extra_addrs(pid.to_bytes()))
        out = nat.handed_out(known, extra, announce_private=self.announce_private)
        self.withheld += max(0, len(set(known) - set(out)))
        return out[:MAX_ADDRS]

    def _closer_peers(self, response, closest_peers, exclude_peer_id=None) -> None:
        """Replaces KadDHT._add_closer_peers_to_response (module doc)."""
        import multiaddr
        from libp2p.kad_dht.kad_dht import get_connection_type

        for pid in closest_peers:
            if exclude_peer_id is not None and pid == exclude_peer_id:
                continue
            try:
                addrs = self.addrs_to_hand_out(pid)
                raw = [multiaddr.Multiaddr(a).to_bytes() for a in addrs]
                if not raw:
                    continue
                record = None
                env = self.host.get_peerstore().get_peer_record(pid)
                if env is not None:
                    signed = {_strip_peer(str(a), pid.to_base58()) for a in env.record().addrs}
                    if signed and signed <= set(addrs):
                        record = env.marshal_envelope()
                entry = response.closerPeers.add()
                entry.id = pid.to_bytes()
                entry.connection = get_connection_type(self.host, pid)
                entry.addrs.extend(raw)
                if record is not None:
                    entry.signedRecord = record
            except Exception as exc:  # one bad entry costs that entry, not the answer
                log.debug("dht: entry for %s left out: %s", pid, exc)

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
        return {"routing_table": self.table_size(), "lookups": self.lookups, "found": self.found,
                "walks": self.walks, "withheld_addrs": self.withheld}


def _strip_peer(addr: str, peer: str) -> str:
    """``addr`` without a trailing ``/p2p/<peer>``."""
    tail = f"/p2p/{peer}"
    return addr[: -len(tail)] if addr.endswith(tail) else addr


def _strip_peers(addrs, peer: str) -> tuple[str, ...]:
    """Each of ``addrs`` (strings or multiaddrs) without a trailing
    ``/p2p/<peer>``, once each, in order."""
    return tuple(dict.fromkeys(_strip_peer(str(a), peer) for a in addrs))
