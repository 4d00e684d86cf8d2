"""How a node finds and keeps its peers, between a low and a high watermark
of connections (:class:`~p2pnet.gossip.policy.Watermarks`):

- peer exchange: the addresses peers announce go to the peer book, and are
  dialled only while fewer than ``low`` peers are connected;
- a loop that, while fewer than ``low`` are connected, dials remembered peers
  and the bootstrap peers, with backoff and without end;
- a trimmer that, above ``high``, closes connections back down to ``low``
  (:func:`~p2pnet.gossip.policy.choose_trim`) and does not dial a trimmed
  peer again for ``redial_after_s``.

Banned peers are never dialled."""

from __future__ import annotations

import logging
from collections import Counter

import multiaddr
import trio

from p2pnet import wire
from p2pnet.gossip import topics
from p2pnet.gossip.policy import Conn, choose_trim

log = logging.getLogger("p2pnet.gossip")


class Connector:
    def __init__(self, net, *, trim_check_s: float = 2.0, redial_after_s: float = 120.0) -> None:
        self.net = net
        self.trim_check_s = trim_check_s
        self.redial_after_s = redial_after_s
        self.trimmed = 0  # connections closed for being above the high watermark
        self._since: dict[bytes, float] = {}  # connected peer -> when first seen connected
        self._trimmed_at: dict[bytes, float] = {}
        self._boot_ids: frozenset = frozenset()
        self._dial_send, self._dial_recv = trio.open_memory_channel(64)

    def bootstrap_ids(self) -> frozenset:
        return self._boot_ids

    def _below_low(self) -> bool:
        return len(self.net.peers()) < self.net.watermarks.low

    def _recently_trimmed(self, peer: bytes, now: float) -> bool:
        at = self._trimmed_at.get(peer)
        if at is None:
            return False
        if now - at >= self.redial_after_s:
            del self._trimmed_at[peer]
            return False
        return True

    def note_announce(self, env: wire.Envelope) -> None:
        addrs = tuple(a for a in env.message.addrs if "/p2p/" not in a)
        self.net.book.note(env.sender, addrs)
        if (addrs and self._below_low() and env.sender not in set(self.net.peers())
                and not self._recently_trimmed(env.sender, self.net.clock())):
            try:
                self._dial_send.send_nowait((env.sender, addrs))
            except trio.WouldBlock:
                pass

    async def dialer(self) -> None:
        from libp2p.peer.id import ID
        from libp2p.peer.peerinfo import PeerInfo

        async for peer, addrs in self._dial_recv:
            now = self.net.clock()
            if (peer == self.net.peer_id or peer in set(self.net.peers()) or self.net.penalties.is_banned(peer, now)
                    or not self._below_low()):
                continue
            try:
                maddrs = [multiaddr.Multiaddr(a) for a in addrs]
                with trio.move_on_after(10):
                    await self.net.host.connect(PeerInfo(ID(peer), maddrs))
                    log.info("peer exchange: connected to %s", wire.peer_id_str(peer)[:20])
            except Exception as exc:
                log.info("peer exchange: cannot dial %s: %s", wire.peer_id_str(peer)[:20], exc)

    def _bootstrap_infos(self) -> list:
        from libp2p.peer.peerinfo import info_from_p2p_addr

        infos = []
        for addr in self.net.bootstrap:
            try:
                infos.append((addr, info_from_p2p_addr(multiaddr.Multiaddr(addr))))
            except Exception as exc:
                log.error("bad bootstrap address %s: %s", addr, exc)
        return infos

    def _dial_candidates(self, bootstrap: list, want: int) -> list:
        """Up to ``want`` (at most 8) peers to dial that are neither connected,
        banned nor recently trimmed: with no peer at all, the bootstrap peers
        first, then remembered ones (the 32 seen last, in random order);
        with some, the remembered ones first, so that joiners spread out
        rather than all holding on to the bootstrap peers."""
        from libp2p.peer.id import ID
        from libp2p.peer.peerinfo import PeerInfo

        connected = set(self.net.peers()) | {self.net.peer_id}
        now = self.net.clock()

        def usable(peer: bytes) -> bool:
            return peer not in connected and not self.net._is_banned(peer) and not self._recently_trimmed(peer, now)

        boot = [(label, info) for label, info in bootstrap if usable(info.peer_id.to_bytes())]
        boot_ids = {info.peer_id.to_bytes() for _, info in bootstrap}
        known = [(p, a) for p, a in self.net.book.known()[:32] if p not in boot_ids and usable(p)]
        self.net.rng.shuffle(known)
        remembered = []
        for peer, addrs in known:
            try:
                info = PeerInfo(ID(peer), [multiaddr.Multiaddr(a) for a in addrs])
            except Exception:
                self.net.book.forget(peer)
                continue
            remembered.append((wire.peer_id_str(peer)[:20], info))
        ordered = boot + remembered if len(connected) == 1 else remembered + boot
        return ordered[:max(1, min(8, want))]

    async def keep_connected(self) -> None:
        """While fewer than ``low`` are connected, dial remembered and
        bootstrap peers, backing off from 0.2 s to ``reconnect_max_s`` while
        nothing new connects; never give up. Saves the peer book every half
        minute."""
        bootstrap = self._bootstrap_infos()
        self._boot_ids = frozenset(info.peer_id.to_bytes() for _, info in bootstrap)
        low = self.net.watermarks.low
        delay, saved_at = 0.2, self.net.clock()
        while not self.net.stopping:
            before = len(self.net.peers())
            if before < low:
                candidates = self._dial_candidates(bootstrap, low - before)
                if candidates:
                    async with trio.open_nursery() as nursery:
                        for label, info in candidates:
                            nursery.start_soon(self._dial_one, label, info)
            after = len(self.net.peers())
            if after > before:
                delay = 0.2
            elif after < low:
                delay = min(delay * 2, self.net.reconnect_max_s)
            if self.net.clock() - saved_at > 30:
                self.net.book.save()
                self.net.loglimit.flush()
                saved_at = self.net.clock()
            await trio.sleep(delay if after < low else 5.0)

    def _conns(self, now: float) -> list[Conn]:
        """The connected peers as :func:`choose_trim` sees them."""
        peers = self.net.peers()
        for peer in [p for p in self._since if p not in set(peers)]:
            del self._since[peer]
        mesh: Counter = Counter()
        for members in (getattr(self.net.gossipsub, "mesh", None) or {}).values():
            for pid in members:
                mesh[pid.to_bytes()] += 1
        out = []
        for peer in peers:
            since = self._since.setdefault(peer, now)
            held = self.net.announces.get(peer)
            out.append(Conn(peer, since, busy=self.net.busy(peer), bootstrap=peer in self._boot_ids,
                            validator=bool(held is not None and held.message.validator), mesh=mesh[peer]))
        return out

    async def trimmer(self) -> None:
        """Every ``trim_check_s``: above ``high`` connections, close the ones
        :func:`choose_trim` picks. A node that follows the ledger (it handles
        consensus messages) keeps validators."""
        from libp2p.peer.id import ID

        while not self.net.stopping:
            await trio.sleep(self.trim_check_s)
            now = self.net.clock()
            conns = self._conns(now)
            drop = choose_trim(conns, self.net.watermarks, now,
                               keep_validators=bool(self.net._handlers.get(topics.CONSENSUS)), rng=self.net.rng)
            if not drop:
                continue
            log.info("%d connections, above the high watermark %d: closing %d", len(conns),
                     self.net.watermarks.high, len(drop))
            for peer in drop:
                self._trimmed_at[peer] = now
                self.trimmed += 1
                try:
                    await self.net.host.disconnect(ID(peer))
                except Exception as exc:
                    log.info("disconnect of %s failed: %s", wire.peer_id_str(peer)[:20], exc)
            while len(self._trimmed_at) > 4096:
                self._trimmed_at.pop(next(iter(self._trimmed_at)))

    async def _dial_one(self, label: str, info) -> None:
        try:
            with trio.fail_after(10):
                await self.net.host.connect(info)
            log.info("connected to %s", label)
        except Exception as exc:
            self.net.loglimit.info(("dial", label), "%s not reachable yet (%s); will retry", label,
                               exc or type(exc).__name__)
