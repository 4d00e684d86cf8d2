"""NAT traversal of a :class:`~p2pnet.gossip.network.GossipNetwork`:
circuit relay v2, hole punching (DCUtR) and the reachability check, on
py-libp2p 0.8.1's own relay code, with its traps worked around here (see
docs/testnet.md, "NAT traversal").

- **Relay service.** A node serves as a relay (the hop protocol, py-libp2p's
  ``CircuitV2Protocol`` with ``allow_hop=True``) with limits that are
  settings (:class:`NatSettings`): ``relay="auto"`` (default) serves while it
  is not known to be behind NAT and has a public address; ``on`` / ``off``.
  A node that does not serve resets hop streams at once.
- **Reservations.** A node behind NAT, or whose reachability is unknown,
  holds reservations on ``want_relays`` relays among its directly connected
  peers (:class:`RelayPlan`, sans I/O), refreshes each before it expires,
  replaces one whose relay went away, and announces
  ``<relay>/p2p/<relay-id>/p2p-circuit`` for each (py-libp2p adds no such
  address by itself).
- **Dialing.** :meth:`NatService.connect` dials a peer's direct addresses
  first, then its circuit addresses through ``CircuitV2Transport.dial``
  (``host.connect`` drops relay addresses); streams and pubsub then use the
  connection as any other.
- **Two circuits.** Two nodes that reach each other only through relays keep
  a circuit through each of two relays, so one relay dying loses neither the
  peer nor a query in flight to it.
- **DCUtR.** ``DCUtRProtocol`` runs on every node and tries to replace a
  relayed connection with a direct one; :meth:`NatService.path_to` says
  which a peer has: direct, hole-punched or relayed.
- **What the host tells peers about itself.** identify, identify push and
  signed peer records carry what announcements carry (advertise.py); a
  change is pushed to connected peers.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

import trio

from p2pnet import wire
from p2pnet.gossip import nat, rpc, topics
from p2pnet.gossip.advertise import Advertiser
from p2pnet.gossip.errors import GossipError
from p2pnet.gossip.reachability import (
    BEHIND_NAT,
    PUBLIC,
    UNKNOWN,
    DialBackServer,
    Reachability,
    ReachabilityProber,
    conn_is_relayed,
    dial_and_handshake,
)

log = logging.getLogger("p2pnet.gossip")

RELAY_MODES = ("auto", "on", "off")


class NatError(GossipError):
    """A bad NAT setting, or a relay that refused or failed a reservation."""


@dataclass(frozen=True)
class NatSettings:
    relay: str = "auto"  # serve as a relay: auto (when public), on, off
    relay_max_reservations: int = 64
    relay_max_circuits: int = 32
    relay_max_circuit_bytes: int = 64 << 20
    relay_max_circuit_s: int = 1800
    relay_reservation_ttl_s: int = 900
    want_relays: int = 2  # reservations a node behind NAT holds
    hole_punch: bool = True
    announce_private: bool = False  # announce private (RFC 1918) addresses: a LAN-only network
    reachability_recheck_s: float = 300.0


@dataclass
class RelayPlan:
    """Which relays to hold reservations on; pure (time is an argument).

    ``step`` returns ``("reserve", relay_id)`` for a new reservation or a
    refresh and ``("drop", relay_id)`` for one whose relay is gone or no
    longer wanted; the driver reports back with ``reserved`` / ``failed``."""

    want: int = 2
    cooldown_s: float = 30.0
    held: dict = field(default_factory=dict)  # relay id -> (relay addr, reserved_at, expires_at)
    _cool: dict = field(default_factory=dict)  # relay id -> until when it is not asked again
    _pending: set = field(default_factory=set)

    def step(self, now: float, need_relays: bool, connected: Iterable[str],
             candidates: Iterable[str]) -> list[tuple[str, str]]:
        connected = set(connected)
        actions: list[tuple[str, str]] = []
        for rid, (_, at, exp) in list(self.held.items()):
            if not need_relays or rid not in connected or exp <= now:
                del self.held[rid]
                actions.append(("drop", rid))
            elif now >= at + (exp - at) * 2 / 3 and rid not in self._pending:
                self._pending.add(rid)
                actions.append(("reserve", rid))
        if not need_relays:
            return actions
        missing = self.want - len(self.held) - len(self._pending - set(self.held))
        for rid in candidates:
            if missing <= 0:
                break
            if rid in self.held or rid in self._pending or rid not in connected or self._cool.get(rid, 0) > now:
                continue
            self._pending.add(rid)
            actions.append(("reserve", rid))
            missing -= 1
        return actions

    def reserved(self, rid: str, addr: str, now: float, expires_at: float) -> None:
        self._pending.discard(rid)
        self.held[rid] = (addr, now, max(expires_at, now + 1))
        self._cool.pop(rid, None)

    def failed(self, rid: str, now: float) -> None:
        self._pending.discard(rid)
        self.held.pop(rid, None)
        self._cool[rid] = now + self.cooldown_s
        while len(self._cool) > 1024:
            self._cool.pop(next(iter(self._cool)))

    def circuit_addrs(self) -> list[str]:
        return sorted(nat.circuit_addr(addr, rid) for rid, (addr, _, _) in self.held.items())


class NatService:
    """The Trio driver: see the module doc. ``net`` is the GossipNetwork."""

    def __init__(self, net, settings: NatSettings = NatSettings(), *, clock: Callable[[], float] = time.time,
                 poll_s: float = 1.0) -> None:
        if settings.relay not in RELAY_MODES:
            raise NatError(f"relay: {settings.relay!r} is not one of {', '.join(RELAY_MODES)}")
        self.net = net
        self.settings = settings
        self.clock = clock
        self.poll_s = poll_s
        self.plan = RelayPlan(want=settings.want_relays)
        self.reach = Reachability(recheck_s=settings.reachability_recheck_s)
        self.counts: dict[str, int] = {"relayed_dials": 0, "relayed_dials_failed": 0, "reservations": 0,
                                       "reservations_failed": 0, "hop_refused": 0}
        self.relayed_addrs: dict[bytes, tuple[str, ...]] = {}  # peer -> circuit addrs it announced
        self.protocol = None
        self.transport = None
        self.dcutr = None
        self.dialback = None
        self.advertiser = None
        self._wake = trio.Event()
        self._circuits: tuple[str, ...] = ()
        self._punched: set = set()  # peers once connected through a relay
        self._reached_at: dict[str, set] = {}  # address -> peers that dialled us back there
        self._reached_addrs_round: tuple = ()
        self._nursery = None
        self._spare_at: dict[bytes, float] = {}  # peer -> when a spare circuit to it was last dialled
        self.spare_gap_s = 10.0

    # ---------------------------------------------------------------- queries

    def serving(self) -> bool:
        mode = self.settings.relay
        if mode != "auto":
            return mode == "on"
        public_addr = any(nat.addr_scope(a) in ("public", "dns") for a in self.net.listen_addrs)
        return self.reach.state == PUBLIC or (self.reach.state == UNKNOWN and public_addr)

    def need_relays(self) -> bool:
        """Behind NAT or unknown; never for a loopback-only node (its peers
        are all on its machine and reach it there)."""
        local_only = bool(self.net.listen_addrs) and all(
            nat.addr_scope(a) == "loopback" for a in self.net.listen_addrs)
        return self.reach.state != PUBLIC and not local_only

    def circuit_addrs(self) -> tuple[str, ...]:
        return self._circuits

    def verified_addrs(self) -> tuple[str, ...]:
        """Addresses at least two peers reached us at on a fresh connection
        (dial-back), while the verdict is public: what a node listening on
        0.0.0.0, or behind a router that forwards its port, announces."""
        if self.reach.state != PUBLIC:
            return ()
        return tuple(sorted(a for a, peers in self._reached_at.items() if len(peers) >= 2))[:4]

    def _reached(self, peer: str, addrs: list) -> None:
        if self._reached_addrs_round != self.reach.addrs:  # own addresses changed: start over
            self._reached_at.clear()
            self._reached_addrs_round = self.reach.addrs
        for addr in addrs:
            if addr in self._reached_at or len(self._reached_at) < 16:
                self._reached_at.setdefault(addr, set()).add(peer)

    def path_to(self, peer: bytes) -> str:
        """direct / hole-punched / relayed / not-connected (see :func:`nat.path_of`)."""
        from libp2p.peer.id import ID

        pid = ID(peer)
        conns = (getattr(self.net.host.get_network(), "connections", {}) or {}).get(pid, [])
        conns = conns if isinstance(conns, list) else [conns]
        punched = peer in self._punched
        return nat.path_of([(conn_is_relayed(c), punched and not conn_is_relayed(c)) for c in conns])

    def relays_of(self, peer: bytes) -> list:
        """The relays (peer id text) the connections to ``peer`` run
        through; empty when one of them is direct, or there is none."""
        from libp2p.peer.id import ID

        conns = (getattr(self.net.host.get_network(), "connections", {}) or {}).get(ID(peer), [])
        conns = conns if isinstance(conns, list) else [conns]
        if not conns or any(not conn_is_relayed(c) for c in conns):
            return []
        return sorted({r for r in (self._relay_in(c) for c in conns) if r is not None})

    def relay_of(self, peer: bytes):
        """One relay a relayed-only connection to ``peer`` runs through, or None."""
        relays = self.relays_of(peer)
        return relays[0] if relays else None

    def paths(self, peers: Iterable[str]) -> dict:
        """peer id (text) -> its path now; this node's own id is ``local``."""
        out = {}
        for peer in peers:
            if peer in out:
                continue
            try:
                raw = wire.peer_id_bytes(peer)
            except Exception:
                continue
            out[peer] = "local" if raw == self.net.peer_id else self.path_to(raw)
        return out

    def status(self) -> dict:
        paths: dict[str, int] = {}
        for peer in self.net.peers():
            p = self.path_to(peer)
            paths[p] = paths.get(p, 0) + 1
        return {"reachability": self.reach.as_json(trio.current_time()), "relay_service": self.serving(),
                "relays": [{"relay": rid, "addr": addr, "expires_in_s": round(exp - self.clock())}
                           for rid, (addr, _, exp) in sorted(self.plan.held.items())],
                "circuit_addrs": list(self._circuits), "paths": paths, "counts": dict(self.counts),
                "dialback": None if self.dialback is None else
                {"served": self.dialback.served, "refused": dict(self.dialback.refused)}}

    # ---------------------------------------------------------------- running

    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        from libp2p.custom_types import TProtocol
        from libp2p.relay.circuit_v2.config import RelayConfig, RelayRole
        from libp2p.relay.circuit_v2.dcutr import DCUtRProtocol
        from libp2p.relay.circuit_v2.protocol import PROTOCOL_ID, STOP_PROTOCOL_ID, CircuitV2Protocol
        from libp2p.relay.circuit_v2.resources import RelayLimits
        from libp2p.relay.circuit_v2.transport import CircuitV2Transport
        from libp2p.tools.anyio_service import background_trio_service

        from p2pnet.gossip import reachability

        s, host = self.settings, self.net.host
        limits = RelayLimits(duration=s.relay_max_circuit_s, data=s.relay_max_circuit_bytes,
                             max_circuit_conns=s.relay_max_circuits, max_reservations=s.relay_max_reservations,
                             reservation_ttl=s.relay_reservation_ttl_s)
        self.protocol = CircuitV2Protocol(host, limits=limits, allow_hop=True)
        # STOP only: with CLIENT, CircuitV2Transport reserves a slot on every
        # relay it merely dials through (trap: see docs/testnet.md).
        self.transport = CircuitV2Transport(host, self.protocol, RelayConfig(roles=RelayRole.STOP, limits=limits))
        self.dialback = DialBackServer(lambda ip, port, peer: dial_and_handshake(host, ip, port, peer))
        # identify, identify push and signed peer records carry what announcements do (advertise.py)
        self.advertiser = Advertiser(host, self.net.reachable_addrs)
        self.advertiser.install()
        prober = ReachabilityProber(self.net, self.reach, on_change=self._reachability_changed,
                                    on_reached=self._reached)
        self.net.on(topics.ANNOUNCE, self._note_announce)
        async with background_trio_service(self.protocol):
            await self.protocol.event_started.wait()
            # the hop handler, gated: a node that does not serve resets the stream
            host.set_stream_handler(PROTOCOL_ID, self._hop_gate)
            host.set_stream_handler(STOP_PROTOCOL_ID, self._stop_fixup)
            host.set_stream_handler(TProtocol(reachability.PROTOCOL), self.dialback.handle)
            async with trio.open_nursery() as nursery:
                if s.hole_punch:  # DCUtR binds its dials to a real listen port: the unfiltered host
                    self.dcutr = DCUtRProtocol(self.advertiser.raw_view())
                    nursery.start_soon(self._run_dcutr, background_trio_service)
                nursery.start_soon(prober.run)
                nursery.start_soon(self._reserver)
                self._nursery = nursery
                task_status.started()
                await trio.sleep_forever()

    async def _run_dcutr(self, background_trio_service) -> None:
        """DCUtR's own loop tries relayed peers one after another, so a
        hopeless punch (a symmetric NAT: dial timeouts, three rounds) held up
        one that would work for tens of seconds: each newly relayed peer also
        gets its own attempt here, at once, side by side (DCUtR's per-peer
        lock keeps them from overlapping with its loop)."""
        kicked: set = set()
        async with background_trio_service(self.dcutr), trio.open_nursery() as nursery:
            while True:
                relayed = set()
                for pid, conns in list((getattr(self.net.host.get_network(), "connections", {}) or {}).items()):
                    conns = conns if isinstance(conns, list) else [conns]
                    if any(conn_is_relayed(c) for c in conns):
                        # a direct connection to this peer later is a hole-punched one
                        self._punched.add(pid.to_bytes())
                        if all(conn_is_relayed(c) for c in conns):
                            relayed.add(pid)
                for pid in relayed - kicked:
                    nursery.start_soon(self._punch, pid)
                kicked = relayed  # a peer relayed again later is tried again
                if len(self._punched) > 4096:
                    self._punched.clear()
                await trio.sleep(1.0)

    async def _punch(self, pid) -> None:
        try:
            with trio.move_on_after(60):
                if await self.dcutr.initiate_hole_punch(pid):
                    log.info("hole punched to %s", pid.to_base58()[:20])
        except Exception as exc:
            log.debug("hole punch to %s failed: %s", pid.to_base58()[:20], exc)

    async def _hop_gate(self, stream) -> None:
        if self.serving():
            await self.protocol._handle_hop_stream(stream)
            return
        self.counts["hop_refused"] += 1
        try:
            await stream.reset()
        except Exception:
            pass

    async def _stop_fixup(self, stream) -> None:
        """py-libp2p's stop handler names the *destination* as the relay in
        an inbound relayed connection's address (``/p2p/<self>/p2p-circuit``,
        protocol.py ``handle_incoming_connection``): put the real relay, the
        peer the stop stream came from, in its place."""
        from libp2p.connection_types import ConnectionType
        import multiaddr

        me = f"/p2p/{self.net.host.get_id().to_base58()}{nat.CIRCUIT}"
        before = {id(c) for c, _ in self._conns_with(me)}
        await self.protocol._handle_stop_stream(stream)
        try:
            relay = stream.muxed_conn.peer_id.to_base58()
            for conn, addrs in self._conns_with(me):
                if id(conn) not in before:
                    fixed = [multiaddr.Multiaddr(a.replace(me, f"/p2p/{relay}{nat.CIRCUIT}")) for a in addrs]
                    conn.set_transport_info(fixed, ConnectionType.RELAYED)
        except Exception as exc:
            log.debug("could not name the relay of an inbound relayed connection: %s", exc)

    def _conns_with(self, text: str) -> list:
        out = []
        for conns in list((getattr(self.net.host.get_network(), "connections", {}) or {}).values()):
            for conn in conns if isinstance(conns, list) else [conns]:
                try:
                    addrs = [str(a) for a in conn.get_transport_addresses()]
                except Exception:
                    continue
                if any(text in a for a in addrs):
                    out.append((conn, addrs))
        return out

    def _reachability_changed(self, state: str) -> None:
        self._wake.set()

    async def _note_announce(self, env: wire.Envelope) -> None:
        circuits = tuple(a for a in env.message.addrs if nat.split_circuit(a) is not None)[:8]
        if circuits:
            self.relayed_addrs[env.sender] = circuits
        else:
            self.relayed_addrs.pop(env.sender, None)
        while len(self.relayed_addrs) > 4096:
            self.relayed_addrs.pop(next(iter(self.relayed_addrs)))

    def _candidates(self) -> list[str]:
        """Directly connected peers that announce a public address first
        (likely relays), then the bootstrap peers, then the others."""
        from p2pnet.gossip.reachability import _direct_peers

        boot = self.net.connector.bootstrap_ids()
        out = []
        for pid in _direct_peers(self.net.host):
            b = pid.to_bytes()
            public = any(nat.addr_scope(a) in ("public", "dns") for a in self.net.book.addrs(b))
            out.append((not public, b not in boot, self.net.rng.random(), pid.to_base58()))
        return [rid for *_, rid in sorted(out)]

    async def _reserver(self) -> None:
        from p2pnet.gossip.reachability import _direct_peers

        while not self.net.stopping:
            now = self.clock()
            connected = {p.to_base58() for p in _direct_peers(self.net.host)}
            need = self.need_relays()
            actions = self.plan.step(now, need, connected, self._candidates() if need else [])
            if actions:
                async with trio.open_nursery() as nursery:
                    for kind, rid in actions:
                        if kind == "reserve":
                            nursery.start_soon(self._reserve, rid)
                        else:
                            log.info("relay %s: reservation dropped", rid[:20])
            self._keep_spare_circuits()
            circuits = tuple(self.plan.circuit_addrs())
            if circuits != self._circuits:
                self._circuits = circuits
                log.info("relayed addresses: %s", ", ".join(circuits) or "none")
                self.net.announce_soon()
            if self.advertiser is not None and self.advertiser.changed() and self._nursery is not None:
                self._nursery.start_soon(self.advertiser.push_all)  # peers' peerstores, hence the DHT
            with trio.move_on_after(self.poll_s):
                await self._wake.wait()
            self._wake = trio.Event()

    def _keep_spare_circuits(self) -> None:
        """A peer reached only through relays gets a second circuit through
        another of its relays, so that a relay dying (kill -9) leaves the
        peer connected: queries in flight to it carry on over the other, and
        nothing takes it for gone. One side of each pair does it (the lower
        peer id), at most one dial per peer per ``spare_gap_s``."""
        if self._nursery is None:
            return
        now, me = self.clock(), self.net.host.get_id().to_base58()
        for pid, conns in list((getattr(self.net.host.get_network(), "connections", {}) or {}).items()):
            conns = conns if isinstance(conns, list) else [conns]
            peer = pid.to_bytes()
            if not conns or not all(conn_is_relayed(c) for c in conns) or self.net.peer_id > peer:
                continue
            if now - self._spare_at.get(peer, -1e9) < self.spare_gap_s:
                continue
            relays = {self._relay_in(c) for c in conns}
            if len(relays - {None}) >= 2:
                continue
            for addr in self.relayed_addrs.get(peer, ()):
                rid = nat.split_circuit(addr)[1]
                if rid != me and rid not in relays:
                    self._spare_at[peer] = now
                    self._nursery.start_soon(self._dial_circuit, peer, addr, 10.0)
                    break
        while len(self._spare_at) > 4096:
            self._spare_at.pop(next(iter(self._spare_at)))

    @staticmethod
    def _relay_in(conn):
        try:
            for addr in conn.get_transport_addresses():
                head = str(addr).split(nat.CIRCUIT)[0]
                if "/p2p/" in head:
                    return head.rsplit("/p2p/", 1)[1]
        except Exception:
            pass
        return None

    async def _reserve(self, rid: str) -> None:
        from libp2p.peer.id import ID

        try:
            with trio.fail_after(15):
                addr, expires = await self._reserve_on(ID.from_base58(rid))
        except Exception as exc:
            self.counts["reservations_failed"] += 1
            self.net.loglimit.info(("reserve", rid), "relay %s: no reservation (%s)", rid[:20],
                                   exc or type(exc).__name__)
            self.plan.failed(rid, self.clock())
            return
        self.counts["reservations"] += 1
        self.plan.reserved(rid, addr, self.clock(), expires)
        log.info("relay %s: reservation until %s", rid[:20], time.strftime("%H:%M:%S", time.localtime(expires)))

    async def _reserve_on(self, relay) -> tuple[str, float]:
        """One RESERVE exchange with ``relay``: (its public address, expiry).
        Ours, not ``CircuitV2Transport.reserve``: that one starts its own
        refresher task per transport and forgets the relay's addresses."""
        import multiaddr
        from libp2p.relay.circuit_v2.pb.circuit_pb2 import HopMessage
        from libp2p.relay.circuit_v2.pb.circuit_pb2 import PeerId as CircuitPeer
        from libp2p.relay.circuit_v2.protocol import PROTOCOL_ID
        from libp2p.relay.circuit_v2.utils import read_delimited_msg, write_delimited_msg

        stream = await self.net.host.new_stream(relay, [PROTOCOL_ID])
        try:
            await write_delimited_msg(stream, HopMessage(type=HopMessage.RESERVE,
                                                         peer=CircuitPeer(id=self.net.host.get_id().to_bytes())))
            resp = await read_delimited_msg(stream, HopMessage)
        finally:
            await rpc.close_quietly(stream)
        if resp.HasField("status") and resp.status != 100:  # 100: OK in the relay v2 spec
            raise NatError(f"relay refused with status {resp.status}")
        if not resp.HasField("reservation"):
            raise NatError("relay sent no reservation")
        addrs = []
        for raw in resp.reservation.addrs:
            try:
                addrs.append(str(multiaddr.Multiaddr(raw)))
            except Exception:
                continue
        addrs += [a for a in self.net.book.addrs(relay.to_bytes())]
        usable = [a for a in addrs if nat.addr_scope(a) in ("public", "dns")]
        if not usable:
            usable = [a for a in addrs if nat.usable_by_me(a, self.net.listen_addrs)
                      and nat.addr_scope(a) not in ("circuit", "invalid", "unspecified")]
        if not usable:
            raise NatError("the relay has no address others could reach")
        return usable[0].split("/p2p/")[0], float(resp.reservation.expire)

    # ---------------------------------------------------------------- dialing

    async def connect(self, peer: bytes, addrs: Iterable[str] = (), timeout_s: float = 10.0, *,
                      only_given: bool = False) -> bool:
        """Connect to ``peer``: its direct addresses first, then each of its
        circuit addresses (given, or last announced; with ``only_given``,
        the given ones only). True once connected."""
        import multiaddr
        from libp2p.peer.id import ID
        from libp2p.peer.peerinfo import PeerInfo

        if peer in set(self.net.peers()):
            return True
        addrs = list(addrs) or ([] if only_given else list(self.net.book.addrs(peer)))
        direct = [a for a in addrs if nat.addr_scope(a) != "circuit" and nat.usable_by_me(a, self.net.listen_addrs)]
        announced = () if only_given else self.relayed_addrs.get(peer, ())
        circuits = [a for a in [*addrs, *announced] if nat.split_circuit(a) is not None]
        if direct:
            try:
                with trio.fail_after(timeout_s):
                    await self.net.host.connect(PeerInfo(ID(peer), [multiaddr.Multiaddr(a) for a in direct]))
                return True
            except Exception as exc:
                log.debug("direct dial of %s failed: %s", wire.peer_id_str(peer)[:20], exc)
        me = self.net.host.get_id().to_base58()
        for addr in dict.fromkeys(circuits):
            if nat.split_circuit(addr)[1] != me and await self._dial_circuit(peer, addr, timeout_s):
                return True
        return False

    async def _dial_circuit(self, peer: bytes, addr: str, timeout_s: float) -> bool:
        """One relayed dial of ``peer`` through the relay of ``addr``."""
        import multiaddr

        base, rid = nat.split_circuit(addr)
        full = f"{base}/p2p/{rid}{nat.CIRCUIT}/p2p/{wire.peer_id_str(peer)}"
        try:
            with trio.fail_after(timeout_s):
                await self._dial_through(multiaddr.Multiaddr(full), peer)
        except Exception as exc:
            self.counts["relayed_dials_failed"] += 1
            self.net.loglimit.info(("relayed_dial", rid), "relayed dial of %s via %s failed: %s",
                                   wire.peer_id_str(peer)[:20], rid[:20], exc or type(exc).__name__)
            return False
        self.counts["relayed_dials"] += 1
        log.info("connected to %s through relay %s", wire.peer_id_str(peer)[:20], rid[:20])
        return True

    async def _dial_through(self, maddr, peer: bytes):
        """A circuit through exactly the relay ``maddr`` names.
        ``CircuitV2Transport.dial`` first tries every circuit address the
        peerstore holds for the peer, whatever relay it was asked for; now
        that signed peer records carry circuit addresses (advertise.py), a
        second circuit asked through another relay came through the first
        one again."""
        from libp2p.peer.id import ID
        from libp2p.peer.peerinfo import PeerInfo

        pid = ID(peer)
        raw = await self.transport._dial_via_circuit_addr(maddr, PeerInfo(pid, [maddr]))
        return await self.net.host.upgrade_outbound_connection(raw, pid)


__all__ = ["NatError", "NatSettings", "NatService", "RelayPlan", "PUBLIC", "BEHIND_NAT", "UNKNOWN"]
