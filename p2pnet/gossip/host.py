"""Build the py-libp2p 0.8.1 stack with the measured workarounds applied.

See ../shared/notes/libp2p-0.8.1.md. Traps handled here:

1. spam protection counts our own publishes: disabled (we rate-limit ourselves);
2. adaptive gossip drifts the heartbeat to 30-60 s: disabled, heartbeat 1 s;
3. pubsub must run before any dial: the caller starts the services first
   (see :mod:`p2pnet.gossip.network`);
6. the default host accepts plaintext: Noise is the only security transport
   (and py-libp2p's own connection manager is off: see below);
7. abuse py-libp2p refuses before the node's validator runs (cached
   verdicts, bad GossipSub signatures, oversized RPCs) is reported and
   counted: see :mod:`p2pnet.gossip.guard`;
8. the timestamp message id breaks dedup: the id is the GossipSub spec's,
   the publisher's peer id and sequence number: go-libp2p's default, and
   js-libp2p's spec rule for StrictSign (its ``msgIdFn``; js's *default* id,
   protobuf public key + seqno, agrees with no other implementation's).
   Measured with scripts/interop (docs/interop.md): 13 of 13 ids agreed with
   js's spec rule; the content hash used before agreed with none. It
   deduplicates because a (from, seqno) pair is signed by its publisher and
   never reused (sequence numbers start at the clock in nanoseconds); an
   envelope re-published under a new seqno is caught by the replay guard.

Not in the notes: opportunistic grafting churns GRAFT/PRUNE in a mesh
without peer scores, a cost that grows with the connection count: switched
off (:func:`no_opportunistic_grafting`).
"""

from __future__ import annotations

from dataclasses import dataclass

import multiaddr


@dataclass(frozen=True)
class GossipParams:
    # A smaller mesh than GossipSub's usual D=6: py-libp2p spends 4-10 ms of CPU
    # per received copy, and every mesh peer sends one (docs/benchmarks.md).
    degree: int = 3
    degree_low: int = 2
    degree_high: int = 5
    heartbeat_interval_s: int = 1
    # How long a pruned peer waits before grafting again (GossipSub's default is
    # 60 s; see the note at the GossipSub constructor).
    prune_back_off_s: int = 10
    max_message_bytes: int = 1 << 20
    # received messages handled at once before streams stop reading (trap 7)
    max_inflight: int = 256


def message_id(msg) -> bytes:
    """The GossipSub spec's message id: publisher peer id bytes + seqno."""
    return msg.from_id + msg.seqno


def build_stack(identity, listen_addrs: list[str], params: GossipParams, *, on_reject, is_banned,
                urgent_topics: frozenset = frozenset()):
    """Return ``(host, pubsub, gossipsub)``; nothing runs yet.

    ``on_reject(peer, reason, detail)`` hears of every message py-libp2p
    refuses before the node's validator; ``is_banned(peer)`` keeps banned
    peers' messages out; messages on ``urgent_topics`` jump the per-peer
    send queues (see :mod:`p2pnet.gossip.guard`)."""
    from libp2p import new_host
    from libp2p.crypto.x25519 import create_new_key_pair as new_x25519_key_pair
    from libp2p.pubsub.gossipsub import (
        PROTOCOL_ID,
        PROTOCOL_ID_V11,
        PROTOCOL_ID_V12,
        GossipSub,
    )
    from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
    from libp2p.security.noise.transport import Transport as NoiseTransport
    from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
    from libp2p.stream_muxer.yamux.yamux import Yamux

    key_pair = identity.libp2p_key_pair()
    maddrs = [multiaddr.Multiaddr(a) for a in listen_addrs]
    host = new_host(
        key_pair=key_pair,
        sec_opt={
            NOISE_PROTOCOL_ID: NoiseTransport(
                key_pair, noise_privkey=new_x25519_key_pair().private_key
            )
        },
        muxer_opt={YAMUX_PROTOCOL_ID: Yamux},
        listen_addrs=maddrs,
    )
    # The node keeps its own watermarks (connector.py). py-libp2p's
    # AutoConnector would dial every peer in the peer store up to the middle
    # of its own watermarks (100/300) and redial dropped or trimmed peers; its
    # ConnectionPruner never closes a connection with an open stream, and
    # every GossipSub peer holds one. Both are switched off.
    swarm = host.get_network()

    async def _nothing() -> None:
        return None

    swarm.auto_connector.maybe_connect = _nothing
    swarm.connection_pruner.maybe_prune_connections = _nothing
    gossipsub = GossipSub(
        protocols=[PROTOCOL_ID_V12, PROTOCOL_ID_V11, PROTOCOL_ID],
        degree=params.degree,
        degree_low=params.degree_low,
        degree_high=params.degree_high,
        heartbeat_interval=params.heartbeat_interval_s,
        heartbeat_initial_delay=0.1,
        prune_back_off=params.prune_back_off_s,
        adaptive_gossip_enabled=False,
        spam_protection_enabled=False,
    )
    # py-libp2p 0.8.1 calls a GRAFT that comes within 10 s of a PRUNE *from us to
    # the grafter's side* a "flood" and answers it with another PRUNE. Under CPU
    # load mesh maintenance oscillates, and measured on a 10-process swarm one node
    # was pruned by every peer in turn and stopped receiving a topic for good (bench
    # /gossip.py, 2 of 9 runs). The standard GossipSub v1.1 backoff (prune_back_off)
    # still applies; only this extra check is off.
    gossipsub.graft_flood_threshold = 0.0
    no_opportunistic_grafting(gossipsub)
    from p2pnet.gossip.guard import build_guarded_pubsub, prioritise_topics

    prioritise_topics(gossipsub, urgent_topics)

    pubsub = build_guarded_pubsub(
        host,
        gossipsub,
        on_reject=on_reject,
        is_banned=is_banned,
        max_inflight=params.max_inflight,
        strict_signing=True,
        msg_id_constructor=message_id,
        max_inbound_rpc_size=params.max_message_bytes + 64 * 1024,
    )
    return host, pubsub, gossipsub


def no_opportunistic_grafting(gossipsub) -> None:
    """Switch off py-libp2p 0.8.1's "opportunistic grafting". It runs every
    heartbeat, and with every peer's score at 0 (this node sets no score
    parameters) its threshold lets every peer of the topic outside the mesh
    qualify: it grafts them, the mesh passes D_high, the heartbeat prunes it
    back, the pruned peers graft again. Measured (16 GossipNetworks on
    127.0.0.1, 9-15 connections each, idle): ~3 GRAFT/PRUNE RPCs a second per
    node, each carrying a signed peer record to verify, 5.4 ms of CPU a
    second per node; with it off, no control RPC in a steady mesh and 1.2
    ms/s. The churn grows with the connection count, so it was most of the
    idle cost that grew with N (docs/benchmarks.md, "Scale"). The GossipSub
    spec's opportunistic grafting is a rare repair for meshes of low-scoring
    peers; without scoring there is nothing for it to repair."""
    gossipsub._perform_opportunistic_grafting = lambda topic, peers_to_graft: 0
