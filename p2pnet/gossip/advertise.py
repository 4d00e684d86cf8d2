"""What a host tells other peers about its own addresses.

py-libp2p 0.8.1 takes every address it hands out about itself from
``host.get_addrs()``: identify's ``listenAddrs``, identify push, and the
signed peer record (``env_to_send_in_RPC``) that identify, the Kademlia DHT
and GossipSub put in their messages. That is every bound address, RFC 1918
ones included, told to peers outside that LAN, and never the node's
``/p2p-circuit`` addresses. And when the list is empty (a node behind NAT
before it holds a reservation), identify falls back to the bound addresses.

:class:`Advertiser` replaces ``get_addrs`` on one host with the rule the
node's announcements follow (``addrs_fn``: the network's
``reachable_addrs``, i.e. :func:`p2pnet.gossip.nat.announceable`): public
addresses, loopback only from a loopback-only node, private ones only in a
LAN-only network, plus the relayed addresses. It serves identify itself
(no fallback to the bound addresses) and pushes identify to connected peers
when that list changes, so they learn relayed addresses reserved after the
connection came up (the DHT hands out what they learned).

DCUtR needs the real listen ports (it binds its hole-punch dials to one):
give it :meth:`Advertiser.raw_view`, the host with its original
``get_addrs``.
"""

from __future__ import annotations

import logging
import time
from typing import Callable, Iterable, Optional

import trio

log = logging.getLogger("p2pnet.gossip")


class _View:
    """The host, with some methods replaced; everything else is the host's."""

    def __init__(self, host, **methods) -> None:
        self._host = host
        self.__dict__.update(methods)

    def __getattr__(self, name):
        return getattr(self._host, name)


def with_self(addrs: Iterable[str], self_id: str) -> list[str]:
    """``addrs`` with ``/p2p/<self_id>`` appended (as ``get_addrs`` gives them);
    one that names a peer already at its end keeps it."""
    out = []
    for a in addrs:
        a = a.rstrip("/")
        out.append(a if a.endswith(f"/p2p/{self_id}") else f"{a}/p2p/{self_id}")
    return list(dict.fromkeys(out))


class Advertiser:
    """See the module doc. ``addrs_fn()`` gives the addresses to advertise,
    without ``/p2p/<self>``."""

    CACHE_S = 1.0

    def __init__(self, host, addrs_fn: Callable[[], Iterable[str]]) -> None:
        self.host = host
        self.addrs_fn = addrs_fn
        self.raw_get_addrs = host.get_addrs  # the bound original
        self.pushes = 0
        self._last: tuple = ()
        self._cached: Optional[tuple] = None  # (monotonic time, multiaddrs) of the last get_addrs

    def advertised(self) -> list[str]:
        return with_self(self.addrs_fn(), self.host.get_id().to_base58())

    def get_addrs(self) -> list:
        """The advertised addresses as multiaddrs. py-libp2p calls this for
        every RPC it sends (each carries a signed peer record), so the list is
        worked out at most once per ``CACHE_S`` (a profile of an idle 40-node
        swarm put 13% of a node's CPU in recomputing it); :meth:`changed`
        always looks afresh."""
        import multiaddr

        now = time.monotonic()
        if self._cached is not None and now - self._cached[0] < self.CACHE_S:
            return list(self._cached[1])
        out = []
        for a in self.advertised():
            try:
                out.append(multiaddr.Multiaddr(a))
            except Exception:
                continue
        self._cached = (now, tuple(out))
        return out

    def raw_view(self):
        """The host as py-libp2p built it: ``get_addrs`` gives the bound addresses."""
        return _View(self.host, get_addrs=self.raw_get_addrs)

    def _identify_view(self):
        # _mk_identify_protobuf falls back to get_transport_addrs() when
        # get_addrs() is empty: there is nothing to fall back to.
        return _View(self.host, get_transport_addrs=lambda: [])

    def install(self) -> None:
        from libp2p.identity.identify.identify import ID as IDENTIFY

        self.host.get_addrs = self.get_addrs
        self.host.set_stream_handler(IDENTIFY, self.handle_identify)
        self.host._push_identify_to_all_peers = self.push_all
        self._last = tuple(self.advertised())

    def changed(self) -> bool:
        """Whether the advertised list changed since the last call (or install)."""
        now = tuple(self.advertised())
        if now == self._last:
            return False
        self._last = now
        self._cached = None
        return True

    async def handle_identify(self, stream) -> None:
        from libp2p.identity.identify.identify import (
            _mk_identify_protobuf,
            _prefer_circuit_addr,
            _remote_address_to_multiaddr,
        )
        from libp2p.utils import varint

        try:
            peer = stream.muxed_conn.peer_id
            observed = None
            try:
                observed = _remote_address_to_multiaddr(stream.get_remote_address())
            except Exception:
                pass
            observed = _prefer_circuit_addr(self.host, peer, observed)
            data = _mk_identify_protobuf(self._identify_view(), observed).SerializeToString()
            await stream.write(varint.encode_uvarint(len(data)) + data)
        except Exception as exc:  # a peer that left mid-way
            log.debug("identify: no answer sent: %s", exc)
            try:
                await stream.reset()
            except Exception:
                pass
            return
        try:
            await stream.close()
        except Exception:
            pass

    async def push_all(self) -> None:
        """Push identify (the advertised addresses) to every connected peer."""
        from libp2p.identity.identify_push.identify_push import push_identify_to_peer

        view = self._identify_view()
        limit = trio.CapacityLimiter(8)
        self.pushes += 1
        with trio.move_on_after(30):
            async with trio.open_nursery() as nursery:
                for pid in list(self.host.get_connected_peers()):
                    nursery.start_soon(push_identify_to_peer, view, pid, None, limit)
