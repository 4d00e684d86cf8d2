"""How a node finds and keeps its peers: peer exchange (dial the peers that
announce themselves), and a loop that, while too few peers are connected,
dials the bootstrap peers and the peers remembered in the peer book, with
backoff and without end. Banned peers are never dialled."""

from __future__ import annotations

import logging

import multiaddr
import trio

from p2pnet import wire

log = logging.getLogger("p2pnet.gossip")


class Connector:
    def __init__(self, net) -> None:
        self.net = net
        self._dial_send, self._dial_recv = trio.open_memory_channel(64)

    def note_announce(self, env: wire.Envelope) -> None:
        addrs = tuple(a for a in env.message.addrs if "/p2p/" not in a)
        self.net.book.note(env.sender, addrs)
        if env.sender not in set(self.net.peers()) and addrs:
            try:
                self._dial_send.send_nowait((env.sender, addrs))
            except trio.WouldBlock:
                pass

    async def dialer(self) -> None:
        from libp2p.peer.id import ID
        from libp2p.peer.peerinfo import PeerInfo

        async for peer, addrs in self._dial_recv:
            now = self.net.clock()
            if peer == self.net.peer_id or peer in set(self.net.peers()) or self.net.penalties.is_banned(peer, now):
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

    def _dial_candidates(self, bootstrap: list) -> list:
        """Bootstrap peers, then remembered peers (most recent first), that
        are neither connected nor banned: at most 8 a round."""
        from libp2p.peer.id import ID
        from libp2p.peer.peerinfo import PeerInfo

        connected = set(self.net.peers()) | {self.net.peer_id}
        out, seen = [], set()
        for label, info in bootstrap:
            peer = info.peer_id.to_bytes()
            if peer not in connected and peer not in seen and not self.net._is_banned(peer):
                out.append((label, info))
                seen.add(peer)
        for peer, addrs in self.net.book.known():
            if peer in connected or peer in seen or self.net._is_banned(peer):
                continue
            try:
                info = PeerInfo(ID(peer), [multiaddr.Multiaddr(a) for a in addrs])
            except Exception:
                self.net.book.forget(peer)
                continue
            out.append((wire.peer_id_str(peer)[:20], info))
            seen.add(peer)
        return out[:8]

    async def keep_connected(self) -> None:
        """While fewer than ``target_peers`` are connected, dial the bootstrap
        peers and the peers this node remembers, backing off from 0.2 s to
        ``reconnect_max_s`` while nothing new connects; never give up. Saves
        the peer book every half minute."""
        bootstrap = self._bootstrap_infos()
        delay, saved_at = 0.2, self.net.clock()
        while not self.net.stopping:
            before = len(self.net.peers())
            if before < self.net.target_peers:
                candidates = self._dial_candidates(bootstrap)
                if candidates:
                    async with trio.open_nursery() as nursery:
                        for label, info in candidates:
                            nursery.start_soon(self._dial_one, label, info)
            after = len(self.net.peers())
            if after > before:
                self.net.announce_soon()
                delay = 0.2
            elif after < self.net.target_peers:
                delay = min(delay * 2, self.net.reconnect_max_s)
            if self.net.clock() - saved_at > 30:
                self.net.book.save()
                self.net.loglimit.flush()
                saved_at = self.net.clock()
            await trio.sleep(delay if after < self.net.target_peers else 5.0)

    async def _dial_one(self, label: str, info) -> None:
        try:
            with trio.fail_after(10):
                await self.net.host.connect(info)
            log.info("connected to %s", label)
        except Exception as exc:
            self.net.loglimit.info(("dial", label), "%s not reachable yet (%s); will retry", label,
                               exc or type(exc).__name__)
