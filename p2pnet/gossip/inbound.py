"""Inbound gossip of a :class:`~p2pnet.gossip.network.GossipNetwork`: the
GossipSub topic validator, strikes against peers that send bad messages, and
bans (disconnect, forget their addresses, refuse their connections). A mixin:
its methods use the network's state, set up in ``GossipNetwork.__init__``."""

from __future__ import annotations

import logging

import trio

from p2pnet import wire
from p2pnet.gossip.host import message_id

log = logging.getLogger("p2pnet.gossip")


class Inbound:
    def _make_validator(self, topic: str):
        allowed = self.kinds_of(topic)
        my_id = self.peer_id

        def validate(forwarder, msg) -> bool:
            # Runs for every copy not yet accepted (no verdict is cached: see
            # guard.py), so each refusal is counted against who sent it.
            if msg.from_id == my_id:
                return True
            fwd = forwarder.to_bytes() if forwarder is not None else msg.from_id
            now = self.clock()
            # one message on several topics (an expert's announcement on its
            # shards): checked a moment ago by another topic's validator, and
            # taken off _decoded once delivered, so a later replay is checked again
            checked = self._decoded.get(message_id(msg)) if len(msg.topicIDs) > 1 else None
            if checked is not None:
                if checked.kind in allowed:
                    return True
                self._strike(fwd, wire.SCHEMA, f"{checked.kind} does not belong on {topic}", now)
                return False
            try:
                env = wire.open_envelope(msg.data, self.params.max_message_bytes)
                if env.sender != msg.from_id:
                    raise wire.WireError(wire.BAD_SIGNATURE, "envelope sender is not the gossip publisher")
                if env.kind not in allowed:
                    raise wire.WireError(wire.SCHEMA, f"{env.kind} does not belong on {topic}")
            except wire.WireError as exc:
                # Honest peers validate before they relay: bad content is the
                # forwarder's fault.
                self._strike(fwd, exc.reason, f"{topic}: {exc}", now)
                return False
            try:
                self.guard.check(env, int(now * 1000))
            except wire.WireError as exc:
                # A stale or re-published envelope is genuine and signed by
                # its origin, whom honest peers may relay in good faith: the
                # origin answers for it, never the forwarder.
                self._strike(env.sender, exc.reason, f"{topic}: {exc}", now)
                return False
            self._decoded[message_id(msg)] = env
            while len(self._decoded) > 4096:
                self._decoded.popitem(last=False)
            return True

        return validate

    def _is_banned(self, peer: bytes) -> bool:
        return self.penalties.is_banned(peer, self.clock())

    def _on_pubsub_reject(self, peer: bytes, reason: str, detail: str) -> None:
        """py-libp2p refused a message before the validator (guard.py)."""
        if reason in ("banned", "banned_origin"):
            self.stats.drop(reason, wire.peer_id_str(peer))
            self.loglimit.debug(reason, "dropped message from %s: %s", wire.peer_id_str(peer)[:20], detail)
            return
        self._strike(peer, reason, f"gossip: {detail}", self.clock())

    def _on_ban_refused(self, peer: bytes, direction: str) -> None:
        """The ban gate refused a dial to, or a connection from, a banned peer."""
        self.stats.drop(f"banned_{direction}", wire.peer_id_str(peer))
        if direction == "inbound":
            self._kick(peer)

    def _strike(self, peer: bytes, reason: str, detail: str, now: float) -> None:
        name = wire.peer_id_str(peer)
        self.stats.drop(reason, name)
        self.loglimit.warning(f"drop:{reason}", "dropped message from %s: %s", name[:20], detail)
        if self.penalties.strike(peer, now):
            self.stats.disconnected_for_abuse += 1
            log.warning("banning %s for %.0f s: too many bad messages", name[:20], self.penalties.ban_s)
            self._forget_addrs(peer)
            self._kick(peer)

    def _kick(self, peer: bytes) -> None:
        try:
            self._kick_send.send_nowait(peer)
        except trio.WouldBlock:
            pass

    def _forget_addrs(self, peer: bytes) -> None:
        """Nothing dials a banned peer (the gate refuses it anyway); keep its
        addresses out of py-libp2p's peer store and our peer exchange."""
        from libp2p.peer.id import ID

        self.book.forget(peer)
        if self.host is not None:
            try:
                self.host.get_peerstore().clear_addrs(ID(peer))
            except Exception as exc:
                log.debug("clearing addresses of a banned peer: %s", exc)

    async def _kicker(self) -> None:
        from libp2p.peer.id import ID

        async for peer in self._kick_recv:
            try:
                await self.host.disconnect(ID(peer))
            except Exception as exc:
                log.info("disconnect of %s failed: %s", wire.peer_id_str(peer)[:20], exc)
