"""What py-libp2p 0.8.1 does with abuse before p2pnet can see it, and how the
node takes that back.

- ``GuardedPubsub``: py-libp2p's ``Pubsub`` with four changes.
  * No validation cache. py-libp2p remembers a message id's verdict for
    300 s, so the same junk resent by a second peer was refused before the
    node's validator ran (no count, no strike), and a copy refused for a
    reason tied to its *forwarder* (a banned forwarder) was refused for every
    honest forwarder too. A valid message is marked seen right after it
    passes, so a positive cache saved nothing either.
  * Every refusal is reported with the peer that sent the copy:
    a banned forwarder, a bad GossipSub signature (py-libp2p drops those
    with a debug line), and an RPC over the size limit (py-libp2p resets the
    stream with one warning).
  * Sequence numbers start at the clock in nanoseconds, as go-libp2p's do.
    py-libp2p starts at whole seconds and adds one per message, so a node
    that published more than one message a second and restarted within the
    seen-cache window reused (from, seqno) pairs: with the spec message id
    its peers would drop its new messages as duplicates.
  * At most ``max_inflight`` received messages are being handled at once
    (py-libp2p starts a task for each, without limit: its trap 7); past that
    its streams stop reading until there is room.
- ``BanGate``: keeps a banned peer out for the whole ban, both ways. Every
  dial py-libp2p makes goes through ``Swarm.dial_peer`` (its auto-connector
  redials known peers ~60 s after they leave, the DHT and ``new_stream``
  dial too): a banned peer's dial fails at once. A connection that arrives
  from a banned peer is closed as soon as the peer's identity is known.
"""

from __future__ import annotations

import logging
import time
from typing import Awaitable, Callable

import trio

log = logging.getLogger("p2pnet.gossip")

# (peer bytes, reason, detail) -> None
RejectFn = Callable[[bytes, str, str], None]


class _NoVerdictCache:
    """Stands in for py-libp2p's ``ValidationCache``: remembers nothing."""

    def get(self, msg_id: bytes):
        return None

    def put(self, msg_id: bytes, result) -> None:
        pass

    def clear_expired(self) -> None:
        pass


def _decode_uvarint(prefix: bytes) -> int:
    value = 0
    for shift, byte in enumerate(prefix):
        value |= (byte & 0x7F) << (7 * shift)
    return value


class _FrameWatch:
    """Wraps a pubsub stream and reports a length prefix over ``limit``.

    py-libp2p reads each RPC as a uvarint length read one byte at a time,
    then the body; it refuses a length over its limit without saying who
    sent it. This sees the same prefix first and tells ``on_oversize``."""

    def __init__(self, stream, limit: int, on_oversize: Callable[[int], None],
                 wait_for_room: Callable[[], Awaitable[None]]) -> None:
        self._stream = stream
        self._limit = limit
        self._on_oversize = on_oversize
        self._wait_for_room = wait_for_room
        self._prefix = b""
        self._body_left = 0

    def __getattr__(self, name):
        return getattr(self._stream, name)

    async def read(self, n: int = -1) -> bytes:
        if not self._body_left and not self._prefix:
            # Between two RPCs: read the next only while the node has room
            # for the messages it would start (trap 7).
            await self._wait_for_room()
        data = await self._stream.read(n)
        if self._body_left:
            self._body_left = max(0, self._body_left - len(data))
            return data
        if len(data) == 1:
            self._prefix += data
            if data[0] & 0x80 == 0:
                length = _decode_uvarint(self._prefix)
                self._prefix = b""
                if length > self._limit:
                    self._on_oversize(length)
                else:
                    self._body_left = length
        return data


def build_guarded_pubsub(host, router, *, on_reject: RejectFn,
                         is_banned: Callable[[bytes], bool], max_inflight: int = 256, **kwargs):
    """A ``GuardedPubsub`` (the class is built here so that importing this
    module does not import libp2p)."""
    from libp2p.exceptions import ValidationError
    from libp2p.pubsub.pubsub import Pubsub
    from libp2p.pubsub.validators import signature_validator

    class GuardedPubsub(Pubsub):
        def __init__(self) -> None:
            super().__init__(host, router, **kwargs)
            self.validation_cache = _NoVerdictCache()
            self.counter = time.time_ns()
            self._self_bytes = host.get_id().to_bytes()
            self.inflight = 0      # received messages whose task runs
            self.throttled = 0     # times a stream waited for room
            self._counted: set = set()
            self._room = trio.Event()
            self._room.set()
            self.on_message = None  # (topic, msg) -> None, see notify_subscriptions

        async def continuously_read_stream(self, stream) -> None:
            peer = stream.muxed_conn.peer_id.to_bytes()

            def oversize(length: int) -> None:
                on_reject(peer, "oversized", f"gossip RPC of {length} bytes (limit {self.max_inbound_rpc_size})")

            await super().continuously_read_stream(
                _FrameWatch(stream, self.max_inbound_rpc_size, oversize, self._wait_for_room))

        # Trap 7: py-libp2p starts a task per received message, without limit.
        # The read loop asks ``_is_subscribed_to_msg`` of each message right
        # before it starts that task: counted there, uncounted when the task
        # ends; a stream reads its next RPC only while fewer than
        # ``max_inflight`` are running, so a flood waits in TCP's window (the
        # sender's problem), not in our memory.
        def _is_subscribed_to_msg(self, msg) -> bool:
            if not super()._is_subscribed_to_msg(msg):
                return False
            self._counted.add(id(msg))
            self.inflight += 1
            return True

        def notify_subscriptions(self, publish_message) -> None:
            """Hand an accepted message to ``on_message(topic, msg)`` when the
            node set one, instead of py-libp2p's 32-slot channels."""
            if self.on_message is None:
                return super().notify_subscriptions(publish_message)
            for topic in publish_message.topicIDs:
                if topic in self.topic_ids:
                    self.on_message(topic, publish_message)

        async def _wait_for_room(self) -> None:
            while self.inflight >= max_inflight:
                self.throttled += 1
                self._room = trio.Event() if self._room.is_set() else self._room
                await self._room.wait()

        async def push_msg(self, msg_forwarder, msg) -> None:
            try:
                await self._push_msg(msg_forwarder, msg)
            finally:
                if id(msg) in self._counted:
                    self._counted.discard(id(msg))
                    self.inflight -= 1
                    if self.inflight < max_inflight:
                        self._room.set()

        async def _push_msg(self, msg_forwarder, msg) -> None:
            fwd = msg_forwarder.to_bytes()
            if fwd != self._self_bytes and is_banned(fwd):
                on_reject(fwd, "banned", "message from a banned peer")
                return
            if msg.from_id != self._self_bytes and is_banned(msg.from_id):
                # The forwarder may be honest: count it against the origin.
                on_reject(msg.from_id, "banned_origin", "message published by a banned peer")
                return
            if self._is_msg_seen(msg):
                return
            if self.strict_signing and not signature_validator(msg):
                on_reject(fwd, "bad_signature", "GossipSub signature does not verify")
                return
            try:
                await self.validate_msg(msg_forwarder, msg)  # the node's validator counts its refusals
            except ValidationError:
                return
            self._mark_msg_seen(msg)
            if msg.from_id == self._self_bytes and fwd != self._self_bytes:
                return  # our own message echoed back: seen now, never re-delivered
            self.notify_subscriptions(msg)
            await self.router.publish(msg_forwarder, msg)

    return GuardedPubsub()


class BanGate:
    """Refuses dials to, and connections from, peers that ``is_banned``.

    ``on_refused(peer, "dial" | "inbound")`` is told of each refusal; for
    "inbound" it must close the peer's connections (without waiting: it is
    called from inside the swarm's connection setup)."""

    def __init__(self, is_banned: Callable[[bytes], bool], on_refused: Callable[[bytes, str], None]) -> None:
        self.is_banned = is_banned
        self.on_refused = on_refused

    def install(self, host) -> None:
        from libp2p.abc import INotifee
        from libp2p.network.exceptions import SwarmException

        swarm = host.get_network()
        dial_peer = swarm.dial_peer
        gate = self

        async def guarded_dial_peer(peer_id):
            if gate.is_banned(peer_id.to_bytes()):
                gate.on_refused(peer_id.to_bytes(), "dial")
                raise SwarmException(f"peer {peer_id} is banned")
            return await dial_peer(peer_id)

        # An instance attribute: this swarm only, every caller of dial_peer.
        swarm.dial_peer = guarded_dial_peer

        class _Notifee(INotifee):
            async def opened_stream(self, network, stream) -> None:
                pass

            async def closed_stream(self, network, stream) -> None:
                pass

            async def connected(self, network, conn) -> None:
                # Called inside the swarm's add_conn: the caller's
                # ``on_refused`` closes the connection from another task.
                peer = conn.muxed_conn.peer_id.to_bytes()
                if gate.is_banned(peer):
                    gate.on_refused(peer, "inbound")

            async def disconnected(self, network, conn) -> None:
                pass

            async def listen(self, network, multiaddr) -> None:
                pass

            async def listen_close(self, network, multiaddr) -> None:
                pass

        swarm.register_notifee(_Notifee())


def prioritise_topics(gossipsub, urgent: frozenset) -> None:
    """Messages on ``urgent`` topics jump py-libp2p's per-peer send queue.

    py-libp2p queues every RPC to a peer in one FIFO (its priority deque is
    used only for control messages), so a vote, our own or one we relay,
    waited behind every broadcast already queued for that peer: a flood of
    user messages through one validator held the chain back for seconds on
    every hop. ``send_rpc`` is wrapped on this instance only."""
    send_rpc = gossipsub.send_rpc

    def send_rpc_prioritised(peer_id, rpc, priority: bool = False) -> None:
        if not priority and rpc.publish and all(
                topic in urgent for msg in rpc.publish for topic in msg.topicIDs):
            priority = True
        send_rpc(peer_id, rpc, priority)

    gossipsub.send_rpc = send_rpc_prioritised
