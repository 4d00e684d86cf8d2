"""A hostile libp2p peer for tests: a real py-libp2p host (Noise, yamux) that
writes hand-made GossipSub RPCs to a node: junk, other peers' messages
relayed verbatim, oversized frames. It runs no pubsub of its own, so the
node's answers to it are only what the node chooses to send."""

from __future__ import annotations

import os

import multiaddr
import trio

from p2pnet import wire
from p2pnet.gossip import topics
from p2pnet.identity import Identity


def signed_gossip(identity: Identity, topic: str, data: bytes, seqno: int):
    """A GossipSub message published by ``identity``, signed as StrictSign wants."""
    from libp2p.pubsub.pb import rpc_pb2
    from libp2p.pubsub.pubsub import PUBSUB_SIGNING_PREFIX

    key_pair = identity.libp2p_key_pair()
    msg = rpc_pb2.Message(data=data, topicIDs=[topic], from_id=identity.peer_id,
                          seqno=seqno.to_bytes(8, "big"))
    msg.signature = key_pair.private_key.sign(PUBSUB_SIGNING_PREFIX.encode() + msg.SerializeToString())
    msg.key = key_pair.public_key.serialize()
    return msg


def rpc_bytes(*msgs, subscribe: tuple = ()) -> bytes:
    from libp2p.pubsub.pb import rpc_pb2

    rpc = rpc_pb2.RPC(publish=list(msgs))
    for topic in subscribe:
        rpc.subscriptions.append(rpc_pb2.RPC.SubOpts(subscribe=True, topicid=topic))
    return rpc.SerializeToString()


def frame(payload: bytes) -> bytes:
    from libp2p.utils.varint import encode_uvarint

    return encode_uvarint(len(payload)) + payload


class HostilePeer:
    def __init__(self, identity: Identity | None = None, listen: bool = False) -> None:
        self.identity = identity or Identity(os.urandom(32))
        self.listen = listen
        self.host = None
        self.inbound = 0        # connections the node opened to us
        self.seq = 1
        self.streams: dict = {}

    @property
    def peer_id(self) -> bytes:
        return self.identity.peer_id

    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        from libp2p import new_host
        from libp2p.abc import INotifee
        from libp2p.crypto.x25519 import create_new_key_pair as x25519
        from libp2p.security.noise.transport import PROTOCOL_ID as NOISE
        from libp2p.security.noise.transport import Transport as Noise
        from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX
        from libp2p.stream_muxer.yamux.yamux import Yamux

        kp = self.identity.libp2p_key_pair()
        addrs = [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")] if self.listen else []
        self.host = new_host(key_pair=kp, sec_opt={NOISE: Noise(kp, noise_privkey=x25519().private_key)},
                             muxer_opt={YAMUX: Yamux}, listen_addrs=addrs)
        me = self

        class Count(INotifee):
            async def connected(self, network, conn) -> None:
                if not getattr(conn.muxed_conn, "is_initiator", True):
                    me.inbound += 1

            async def disconnected(self, network, conn) -> None:
                pass

            async def opened_stream(self, network, stream) -> None:
                pass

            async def closed_stream(self, network, stream) -> None:
                pass

            async def listen(self, network, ma) -> None:
                pass

            async def listen_close(self, network, ma) -> None:
                pass

        self.host.get_network().register_notifee(Count())
        async with self.host.run(listen_addrs=addrs):
            task_status.started(self)
            await trio.sleep_forever()

    async def connect(self, node_addr: str) -> bytes:
        from libp2p.peer.peerinfo import info_from_p2p_addr

        info = info_from_p2p_addr(multiaddr.Multiaddr(node_addr))
        with trio.fail_after(15):
            await self.host.connect(info)
        return info.peer_id.to_bytes()

    async def send(self, node: bytes, payload: bytes) -> None:
        """Write one framed RPC on our gossip stream to ``node``."""
        from libp2p.custom_types import TProtocol
        from libp2p.peer.id import ID
        from libp2p.pubsub.gossipsub import PROTOCOL_ID_V11

        stream = self.streams.get(node)
        if stream is None:
            with trio.fail_after(15):
                stream = await self.host.new_stream(ID(node), [TProtocol(PROTOCOL_ID_V11)])
            self.streams[node] = stream
            await stream.write(frame(rpc_bytes(subscribe=topics.ALL)))
        await stream.write(payload)

    def gossip(self, topic: str, data: bytes):
        msg = signed_gossip(self.identity, topic, data, self.seq)
        self.seq += 1
        return msg

    def envelope(self, message: wire.Message) -> bytes:
        return self.identity.signer().seal(message)

    def connected_to(self, node: bytes) -> bool:
        return any(p.to_bytes() == node for p in self.host.get_connected_peers())

    def drop_streams(self) -> None:
        self.streams.clear()
