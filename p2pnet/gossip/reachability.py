"""Is this node reachable from the network? A check that can be trusted.

py-libp2p's AutoNAT answers "reachable" even for an address where nothing
listens: its dial-back reuses the connection the question came on. Here a
node asks peers, over ``/p2pnet/dialback/1.0.0``, to dial it back on a
*fresh* TCP connection and to run the Noise handshake on it, expecting the
asker's peer id: a success proves that this very node accepts connections
from outside at that address.

The answering side (:class:`DialBackServer`) has limits, so a peer cannot
make it dial arbitrary third parties: it dials only the IP the request
came from (the connection's observed address), only the TCP ports the
request names (at most ``MAX_PORTS``), never over a relayed connection,
at most ``max_inflight`` dial-backs at once and one per peer per
``per_peer_gap_s``; anything else is refused with a reason.

:class:`Reachability` is the asking side's decision, sans I/O (time is an
argument): ``need`` distinct peers must agree before it says ``public`` or
``behind-nat``; mixed or too few answers leave it ``unknown``. It asks again
when the node's addresses change (a new round, the verdict reset to
``unknown``), every ``recheck_s``, every ``retry_s`` while unknown, and
when peers start seeing it at an IP none saw before (identify's observed
address: the NAT's mapping or the uplink changed; the verdict stands until
the new round decides, at most one such round per ``observed_gap_s``).
:class:`ReachabilityProber` is its Trio driver.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional

import trio

from p2pnet.gossip import nat, rpc
from p2pnet.gossip.errors import RpcFailed

log = logging.getLogger("p2pnet.gossip")

PROTOCOL = "/p2pnet/dialback/1.0.0"
MAX_PORTS = 4
MAX_FRAME = 1024
PUBLIC, BEHIND_NAT, UNKNOWN = "public", "behind-nat", "unknown"


@dataclass
class Reachability:
    need: int = 2
    recheck_s: float = 300.0
    retry_s: float = 20.0
    state: str = UNKNOWN
    addrs: tuple = ()
    checked_at: Optional[float] = None  # when the last verdict was reached
    changed: int = 0  # times the verdict changed
    _round_at: Optional[float] = None  # when the current round started; None: no round running
    _next_at: float = 0.0
    _asked: set = field(default_factory=set)
    _ok: set = field(default_factory=set)
    _failed: set = field(default_factory=set)
    observed_gap_s: float = 30.0
    rechecks_observed: int = 0  # rounds started by a new observed IP
    _seen_ips: set = field(default_factory=set)  # IPs peers saw this node at, since the listen addresses changed
    _observed_round_at: Optional[float] = None

    def set_addrs(self, addrs: Iterable[str], now: float) -> bool:
        """The node's own listen addresses; a change starts a new round and
        forgets the verdict. Returns whether they changed."""
        addrs = tuple(sorted(set(addrs)))
        if addrs == self.addrs:
            return False
        self.addrs = addrs
        self._seen_ips = set()
        self._set(UNKNOWN, now)
        self._start(now)
        return True

    def observed(self, ip: str, now: float) -> bool:
        """A peer saw this node's connection come from ``ip``. An IP no
        peer reported before (the first ones excepted) starts a new round,
        the verdict kept until it decides: at most one such round per
        ``observed_gap_s``, none while a round runs. Returns whether a
        round started."""
        if nat.ip_scope(ip) in ("invalid", "unspecified") or ip in self._seen_ips:
            return False
        first = not self._seen_ips
        if len(self._seen_ips) >= 16:  # bounded: a peer cannot grow it without end
            self._seen_ips.clear()
        self._seen_ips.add(ip)
        if first or not self.addrs or self._round_at is not None:
            return False
        if self._observed_round_at is not None and now - self._observed_round_at < self.observed_gap_s:
            return False
        self._observed_round_at = now
        self.rechecks_observed += 1
        self._start(now)
        return True

    def _start(self, now: float) -> None:
        self._round_at = now
        self._asked, self._ok, self._failed = set(), set(), set()

    def _set(self, state: str, now: float) -> None:
        if state != self.state:
            self.changed += 1
        self.state = state

    def next_probe(self, now: float, peers: Iterable[str]) -> Optional[str]:
        """The peer to ask now, or None. Starts a round when one is due."""
        if self._round_at is None and now >= self._next_at:
            self._start(now)
        if self._round_at is None or not self.addrs:
            return None
        for peer in sorted(peers):
            if peer not in self._asked:
                self._asked.add(peer)
                return peer
        return None

    def result(self, peer: str, ok: Optional[bool], now: float) -> None:
        """``peer`` dialled us back (True), could not (False), or refused or
        failed to answer (None: no evidence either way)."""
        if self._round_at is None or peer not in self._asked:
            return
        if ok is True:
            self._ok.add(peer)
        elif ok is False:
            self._failed.add(peer)
        verdict = None
        if len(self._ok) >= self.need and len(self._ok) > len(self._failed):
            verdict = PUBLIC
        elif len(self._failed) >= self.need and len(self._failed) > len(self._ok):
            verdict = BEHIND_NAT
        if verdict is not None:
            self._set(verdict, now)
            self.checked_at = now
            self._round_at = None
            self._next_at = now + self.recheck_s

    def round_over(self, now: float) -> None:
        """Every peer there was has been asked without a verdict: try again later."""
        if self._round_at is not None:
            self._round_at = None
            self._next_at = now + (self.retry_s if self.state == UNKNOWN else self.recheck_s)

    def wait_s(self, now: float) -> float:
        if self._round_at is not None:
            return 0.0
        return max(0.0, self._next_at - now)

    def as_json(self, now: float) -> dict:
        return {"state": self.state, "confirmed_by": len(self._ok), "refuted_by": len(self._failed),
                "checked_ago_s": None if self.checked_at is None else round(now - self.checked_at, 1),
                "changed": self.changed, "rechecks_on_new_observed_ip": self.rechecks_observed}


# ------------------------------------------------------------------ server


@dataclass
class DialBackLimits:
    max_inflight: int = 4
    per_peer_gap_s: float = 10.0
    dial_timeout_s: float = 5.0


def check_request(data: bytes, observed: Optional[tuple], relayed: bool) -> list[int]:
    """The ports to dial back; raises RpcFailed(reason) for a request to refuse."""
    if relayed or not observed:
        raise RpcFailed("no direct connection to dial back over", "relayed")
    try:
        req = json.loads(data)
        ports = req["ports"]
        if not isinstance(ports, list) or not 1 <= len(ports) <= MAX_PORTS:
            raise ValueError("ports")
        if not all(isinstance(p, int) and not isinstance(p, bool) and 1 <= p <= 65535 for p in ports):
            raise ValueError("ports")
    except (ValueError, KeyError, TypeError):
        raise RpcFailed("malformed dial-back request", "malformed") from None
    if nat.ip_scope(observed[0]) in ("invalid", "unspecified"):
        raise RpcFailed("no usable observed address", "observed")
    return sorted(set(ports))


class DialBackServer:
    """Answers dial-back requests (see the module doc). ``dial(ip, port,
    peer_id)`` opens a fresh connection and handshakes; True on success."""

    def __init__(self, dial: Callable, *, limits: DialBackLimits = DialBackLimits(),
                 clock: Callable[[], float] = trio.current_time) -> None:
        self.dial = dial
        self.limits = limits
        self.clock = clock
        self._slots = trio.Semaphore(limits.max_inflight)
        self._last: dict[bytes, float] = {}
        self.served = 0
        self.refused: dict[str, int] = {}

    def _refuse(self, reason: str) -> dict:
        self.refused[reason] = self.refused.get(reason, 0) + 1
        return {"ok": None, "error": reason}

    async def handle(self, stream) -> None:
        try:
            peer = stream.muxed_conn.peer_id
            with trio.fail_after(self.limits.dial_timeout_s * 2 + 5):
                data = await rpc.read_frame(stream, MAX_FRAME)
                reply = await self._answer(peer, data, _observed(stream), _is_relayed(stream))
                await rpc.write_frame(stream, json.dumps(reply).encode())
        except (trio.TooSlowError, RpcFailed) as exc:
            log.debug("dial-back stream dropped: %s", exc or "timeout")
        except Exception as exc:
            log.info("dial-back stream failed: %s", exc)
        finally:
            await rpc.close_quietly(stream)

    async def _answer(self, peer, data: bytes, observed, relayed: bool) -> dict:
        try:
            ports = check_request(data, observed, relayed)
        except RpcFailed as exc:
            return self._refuse(exc.code)
        key, now = peer.to_bytes(), self.clock()
        last = self._last.get(key)
        if last is not None and now - last < self.limits.per_peer_gap_s:
            return self._refuse("too_soon")
        if self._slots.value == 0:
            return self._refuse("busy")
        self._last[key] = now
        while len(self._last) > 4096:
            self._last.pop(next(iter(self._last)))
        async with self._slots:
            self.served += 1
            reached = []
            for port in ports:
                with trio.move_on_after(self.limits.dial_timeout_s):
                    try:
                        if await self.dial(observed[0], port, peer):
                            reached.append(port)
                    except Exception as exc:
                        log.debug("dial-back to %s:%d failed: %s", observed[0], port, exc)
        return {"ok": bool(reached), "ports": reached, "ip": observed[0]}


def _observed(stream) -> Optional[tuple]:
    try:
        addr = stream.get_remote_address()
    except Exception:
        return None
    return tuple(addr) if addr else None


def _is_relayed(stream) -> bool:
    from libp2p.relay.circuit_v2.protocol import _is_relayed_stream

    try:
        return bool(_is_relayed_stream(stream))
    except Exception:
        return True


async def dial_and_handshake(host, ip: str, port: int, peer_id) -> bool:
    """A fresh TCP connection to ip:port with a Noise handshake expecting
    ``peer_id``; never added to the swarm, closed at once."""
    import multiaddr

    family = "ip6" if ":" in ip else "ip4"
    maddr = multiaddr.Multiaddr(f"/{family}/{ip}/tcp/{port}")
    swarm = host.get_network()
    transport = swarm.transport_manager.transport_for_dialing(maddr)
    if transport is None:
        return False
    raw = await transport.dial(maddr)
    try:
        secured = await swarm.upgrader.upgrade_security(raw, True, peer_id)
        try:
            return secured.get_remote_peer() == peer_id
        finally:
            await secured.close()
    finally:
        await rpc.close_quietly(raw)


# ------------------------------------------------------------------ client


async def ask_dial_back(host, peer_id, ports: list[int], timeout_s: float = 15.0) -> tuple:
    """Ask ``peer_id`` to dial us back: ``(ok, addrs)``, ok True/False or
    None when it refused or failed; addrs the ``/ipX/IP/tcp/PORT`` it reached."""
    from libp2p.custom_types import TProtocol

    try:
        with trio.fail_after(timeout_s):
            stream = await host.new_stream(peer_id, [TProtocol(PROTOCOL)])
            try:
                await rpc.write_frame(stream, json.dumps({"ports": ports[:MAX_PORTS]}).encode())
                reply = json.loads(await rpc.read_frame(stream, MAX_FRAME))
            finally:
                await rpc.close_quietly(stream)
    except Exception as exc:
        log.debug("dial-back request to %s failed: %s", peer_id, exc or type(exc).__name__)
        return None, []
    if not isinstance(reply, dict) or not isinstance(reply.get("ok"), bool):
        return None, []
    return reply["ok"], reached_addrs(reply, ports)


def reached_addrs(reply: dict, asked: list[int]) -> list[str]:
    """The addresses a dial-back reply says were reached: only ports we
    asked for, only a well-formed IP (a peer's word: the caller announces
    them only once two peers agree on the verdict)."""
    ip, ports = reply.get("ip"), reply.get("ports")
    if not reply.get("ok") or not isinstance(ip, str) or not isinstance(ports, list):
        return []
    if nat.ip_scope(ip) in ("invalid", "unspecified"):
        return []
    family = "ip6" if ":" in ip else "ip4"
    return [f"/{family}/{ip}/tcp/{p}" for p in ports if isinstance(p, int) and p in asked][:MAX_PORTS]


class ReachabilityProber:
    """Trio driver of :class:`Reachability`: asks connected, directly
    connected peers in turn; ``on_change(state)`` hears every new verdict."""

    def __init__(self, net, state: Reachability, *, on_change: Callable[[str], None] = lambda s: None,
                 on_reached: Callable[[str, list], None] = lambda peer, addrs: None, poll_s: float = 1.0) -> None:
        self.net = net
        self.state = state
        self.on_change = on_change
        self.on_reached = on_reached
        self.poll_s = poll_s
        self._wake = trio.Event()

    def addrs_changed(self) -> None:
        self._wake.set()

    def _ports(self) -> list[int]:
        ports = [nat.tcp_port_of(a) for a in self.net.listen_addrs]
        return sorted({p for p in ports if p})[:MAX_PORTS]

    async def run(self) -> None:
        from libp2p.peer.id import ID

        while not self.net.stopping:
            now = trio.current_time()
            self.state.set_addrs(self.net.listen_addrs, now)
            for ip in _observed_ips(self.net.host):
                if self.state.observed(ip, now):
                    log.info("reachability: a peer sees this node at %s, an address none saw before; "
                             "checking again", ip)
            before = self.state.state
            peers = {p.to_base58(): p for p in _direct_peers(self.net.host)}
            peer = self.state.next_probe(now, peers)
            if peer is not None:
                ok, reached = await ask_dial_back(self.net.host, ID.from_base58(peer), self._ports())
                if reached:
                    self.on_reached(peer, reached)
                self.state.result(peer, ok, trio.current_time())
            elif self.state.wait_s(now) == 0 and peers:
                self.state.round_over(now)
            if self.state.state != before:
                log.info("reachability: %s (was %s)", self.state.state, before)
                self.on_change(self.state.state)
            if peer is None:
                with trio.move_on_after(max(0.05, min(5.0, self.state.wait_s(now) or self.poll_s))):
                    await self._wake.wait()
                self._wake = trio.Event()


def _observed_ips(host) -> list[str]:
    """The IPs peers reported seeing this node at (identify's observed
    address, over direct connections only: py-libp2p's observed-address
    manager)."""
    manager = getattr(host, "_observed_addr_manager", None)
    if manager is None:
        return []
    try:
        addrs = manager.addrs(min_observers=1)
    except Exception:
        return []
    ips = [nat.ip_of(str(a)) for a in addrs[:32] if nat.CIRCUIT not in str(a)]
    return list(dict.fromkeys(ip for ip in ips if ip))


def _direct_peers(host) -> list:
    """Peers with at least one connection that is not relayed."""
    out = []
    swarm = host.get_network()
    for pid, conns in list(getattr(swarm, "connections", {}).items()):
        conns = conns if isinstance(conns, list) else [conns]
        if any(not conn_is_relayed(c) for c in conns):
            out.append(pid)
    return out


def conn_is_relayed(conn) -> bool:
    """Whether a swarm connection runs over a relay. py-libp2p types TCP
    connections DIRECT and circuits RELAYED; one still UNKNOWN (an inbound
    circuit is typed only after its upgrade) counts as relayed unless its
    transport addresses say otherwise: never claim a direct path unproven."""
    try:
        kind = str(conn.get_connection_type()).upper()
    except Exception:
        kind = ""
    if "RELAY" in kind:
        return True
    if "DIRECT" in kind:
        return False
    addrs = getattr(conn, "_actual_transport_addresses", None)
    if addrs:
        return any(nat.CIRCUIT in str(a) for a in addrs)
    return True
