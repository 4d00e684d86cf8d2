"""How a node finds and keeps its peers, between a low and a high watermark
of connections (:class:`~p2pnet.gossip.policy.Watermarks`):

- peer exchange: the addresses peers announce go to the peer book, and are
  dialled only while fewer than ``low`` peers are connected;
- a loop that, while fewer than ``low`` are connected, dials remembered peers
  (the peer book, kept across restarts in ``peers.json``) and the bootstrap
  peers, with backoff and without end: a node whose bootstrap peers are all
  gone still reaches the peers it met before;
- with the DHT on (``--dht``), while fewer than ``low`` are connected, a DHT
  walk (a lookup of its own ID) from whoever it reached, every
  ``walk_every_s``, and a dial of the peers the walk turns up;
- a trimmer that, above ``high``, closes connections back down to ``low``
  (:func:`~p2pnet.gossip.policy.choose_trim`) and does not dial a trimmed
  peer again for ``redial_after_s``.

Banned peers are never dialled. A node never runs alone in silence: while
it has no peer, every round of dials ends in one warning that names each
bootstrap peer tried and why it failed, and :meth:`Connector.bootstrap_status`
(in ``p2pnet status``) shows the same per bootstrap address."""

from __future__ import annotations

import logging
from collections import Counter

import multiaddr
import trio

from p2pnet import wire
from p2pnet.gossip import nat, topics
from p2pnet.gossip.policy import Conn, choose_trim

log = logging.getLogger("p2pnet.gossip")


class BootstrapBook:
    """What became of each bootstrap address: dials, the last error, whether
    its peer is connected. Pure bookkeeping; ``now`` is an input."""

    def __init__(self, addrs: list[tuple[str, bytes]], *, self_listed: bool = False) -> None:
        self._peer = dict(addrs)  # addr -> peer id
        self.self_listed = self_listed  # this node's own address was in the list (a network's founder)
        self._tries: Counter = Counter()
        self._error: dict[str, str] = {}
        self._tried_at: dict[str, float] = {}

    def addrs(self) -> list[str]:
        return list(self._peer)

    def knows(self, addr: str) -> bool:
        return addr in self._peer

    def note_fail(self, addr: str, error: str, now: float) -> None:
        self._tries[addr] += 1
        self._error[addr] = error[:200]
        self._tried_at[addr] = now

    def note_ok(self, addr: str, now: float) -> None:
        self._tries[addr] += 1
        self._error.pop(addr, None)
        self._tried_at[addr] = now

    def status(self, connected: set, now: float) -> list[dict]:
        out = []
        for addr, peer in self._peer.items():
            at = self._tried_at.get(addr)
            out.append({"addr": addr, "peer_id": wire.peer_id_str(peer), "connected": peer in connected,
                        "tries": self._tries[addr], "last_error": self._error.get(addr),
                        "last_try_ago_s": None if at is None else round(now - at, 1)})
        return out

    def alone_line(self, connected: set, next_try_s: float, remembered: int = 0) -> str:
        """The warning of a node with no peer after a round of dials;
        ``remembered``: how many peers met before (the peer book) it tried too."""
        also = (f"; none of the {remembered} peers met before (peers.json) answered either" if remembered else "")
        if not self._peer and self.self_listed:
            return ("no peers: this node is the only bootstrap peer it has (the others are not listed); it runs "
                    f"alone until a peer dials it{also}")
        if not self._peer:
            return ("no peers and no bootstrap peers configured: this node runs alone until a peer dials it "
                    f"(start it with --network NAME|FILE or --bootstrap MADDR){also}")
        failed = [f"{addr} ({self._error.get(addr) or 'not dialled yet'})"
                  for addr, peer in self._peer.items() if peer not in connected]
        return (f"no peers: none of the {len(self._peer)} bootstrap peers is reachable; tried "
                f"{'; '.join(failed)}{also}; retrying in {next_try_s:.1f}s")


class Connector:
    def __init__(self, net, *, trim_check_s: float = 2.0, redial_after_s: float = 120.0) -> None:
        self.net = net
        self.trim_check_s = trim_check_s
        self.redial_after_s = redial_after_s
        self.trimmed = 0  # connections closed for being above the high watermark
        self._since: dict[bytes, float] = {}  # connected peer -> when first seen connected
        self._trimmed_at: dict[bytes, float] = {}
        self._boot_ids: frozenset = frozenset()
        self.boot_book = BootstrapBook([])
        # peer routing over a Kademlia DHT (p2pnet.gossip.dht): the node sets dht_wanted before run
        self.dht_wanted = False
        self.routing = None  # the PeerRouting while it runs
        self._dht_tries: Counter = Counter()  # connected peer -> attempts to put it in the routing table
        self.walk_every_s = 60.0  # DHT walks while below the low watermark
        self._dial_send, self._dial_recv = trio.open_memory_channel(64)

    def bootstrap_ids(self) -> frozenset:
        return self._boot_ids

    def bootstrap_status(self) -> list[dict]:
        """Per bootstrap address: peer, connected, dials, last error (``p2pnet status``)."""
        return self.boot_book.status(set(self.net.peers()), self.net.clock())

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
        if getattr(self.net, "nat", None) is not None:  # relayed addresses too (relay.py dials them)
            addrs = tuple(a for a in env.message.addrs if nat.usable_by_me(a, self.net.listen_addrs))
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
                if getattr(self.net, "nat", None) is not None:  # direct, then through a relay (relay.py)
                    if await self.net.nat.connect(peer, addrs):
                        log.info("peer exchange: connected to %s", wire.peer_id_str(peer)[:20])
                    else:
                        await self._dial_found(peer, set(addrs))
                    continue
                maddrs = [multiaddr.Multiaddr(a) for a in addrs]
                self._lift_negative_cache(ID(peer))
                with trio.move_on_after(10):
                    await self.net.host.connect(await resolve_dns_addrs(PeerInfo(ID(peer), maddrs)))
                    log.info("peer exchange: connected to %s", wire.peer_id_str(peer)[:20])
            except Exception as exc:
                log.info("peer exchange: cannot dial %s: %s", wire.peer_id_str(peer)[:20], _short_error(exc))
                await self._dial_found(peer, set(addrs))

    async def _dial_found(self, peer: bytes, tried: set) -> None:
        """With the DHT on: look ``peer`` up in the network (what the
        peerstore holds is what just failed: the dial wrote it there) and dial
        the addresses it finds that were not tried already."""
        if self.routing is None:
            return
        found = await self.routing.find(peer, local=False)
        fresh = [a for a in (found.addrs if found else ()) if a not in tried]
        if fresh and await self.dial_addrs(peer, fresh):
            log.info("peer routing: connected to %s at an address the DHT found", wire.peer_id_str(peer)[:20])

    async def dial_addrs(self, peer: bytes, addrs, *, timeout_s: float = 10.0) -> bool:
        """Dial ``peer`` at exactly ``addrs``: with the NAT service, direct
        ones then relayed ones through the relay transport (``host.connect``
        drops ``/p2p-circuit`` addresses); without it, ``host.connect``."""
        from libp2p.peer.id import ID
        from libp2p.peer.peerinfo import PeerInfo

        if getattr(self.net, "nat", None) is not None:
            self._lift_negative_cache(ID(peer))
            return await self.net.nat.connect(peer, list(addrs), timeout_s, only_given=True)
        usable = [a for a in addrs if nat.addr_scope(a) != "circuit"]
        if not usable:
            return False
        try:
            self._lift_negative_cache(ID(peer))
            with trio.fail_after(timeout_s):
                await self.net.host.connect(PeerInfo(ID(peer), [multiaddr.Multiaddr(a) for a in usable]))
            return True
        except Exception as exc:
            log.info("peer routing: cannot dial %s: %s", wire.peer_id_str(peer)[:20], _short_error(exc))
            return False

    def _bootstrap_infos(self) -> list:
        from libp2p.peer.peerinfo import info_from_p2p_addr

        infos = []
        for addr in dict.fromkeys(self.net.bootstrap):
            try:
                info = info_from_p2p_addr(multiaddr.Multiaddr(addr))
            except Exception as exc:
                log.error("bad bootstrap address %s: %s", addr, exc)
                continue
            if info.peer_id.to_bytes() != self.net.peer_id:  # a network spec lists its founders too
                infos.append((addr, info))
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
        minute. With ``dht_wanted``, runs the DHT beside it."""
        if not self.dht_wanted:
            await self._keep_connected()
            return
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._run_dht)
            await self._keep_connected()
            nursery.cancel_scope.cancel()

    async def _run_dht(self) -> None:
        """Run the DHT and put every connected peer into its routing table
        (py-libp2p does not: only peers met in lookups). A failure of the
        DHT stops the DHT, never the node."""
        from p2pnet.gossip.dht import PeerRouting

        service = getattr(self.net, "nat", None)
        try:
            routing = PeerRouting(
                self.net.host,
                # a NATed peer's relayed addresses, as its announcements named them
                extra_addrs=(lambda p: service.relayed_addrs.get(p, ())) if service is not None else None,
                announce_private=service is None or service.settings.announce_private)
            async with trio.open_nursery() as nursery:
                await nursery.start(routing.run)
                self.routing = routing
                log.info("peer routing: Kademlia DHT running")
                walked_at = None
                while True:
                    connected = set(self.net.peers())
                    for peer in [p for p in self._dht_tries if p not in connected]:
                        del self._dht_tries[peer]
                    for peer in [p for p in connected if 0 <= self._dht_tries[p] < 3][:8]:
                        ok = await routing.add_peer(peer)
                        self._dht_tries[peer] = -1 if ok else self._dht_tries[peer] + 1
                    now = self.net.clock()
                    if (self._below_low() and routing.table_size()
                            and (walked_at is None or now - walked_at >= self.walk_every_s)):
                        walked_at = now
                        await self._walk(routing)
                    await trio.sleep(2.0)
        except Exception as exc:
            log.warning("peer routing (DHT) stopped: %s; the node goes on without it", _short_error(exc))
        finally:
            self.routing = None

    async def _walk(self, routing) -> None:
        """Below the low watermark with someone in the routing table: a DHT
        walk (a lookup of this node's own ID) from whoever is there, and a
        dial of the peers it turns up, each at the addresses it was handed."""
        from libp2p.peer.id import ID

        found = await routing.walk()
        connected = set(self.net.peers())
        fresh = [p for p in found if p not in connected and p != self.net.peer_id]
        log.info("peer routing: DHT walk found %d peer(s), %d not connected", len(found), len(fresh))
        for peer in fresh[:8]:
            try:
                addrs = tuple(nat.handed_out([str(a) for a in self.net.host.get_peerstore().addrs(ID(peer))]))
            except Exception:
                continue
            if addrs:
                try:
                    self._dial_send.send_nowait((peer, addrs))
                except trio.WouldBlock:
                    break

    def dht_status(self) -> dict | None:
        return None if self.routing is None else self.routing.status()

    async def find_peer(self, peer: bytes) -> tuple[str, ...]:
        """Addresses of ``peer``: what its announcements said (the peer
        book), else what a DHT lookup finds (with the DHT on); () if none."""
        addrs = tuple(self.net.book.addrs(peer))
        if addrs or self.routing is None:
            return addrs
        found = await self.routing.find(peer)
        return found.addrs if found else ()

    async def find_and_dial(self, peer: bytes, *, fresh: bool = False) -> dict:
        """Find ``peer`` by its ID in the DHT and dial it at the addresses
        found (``p2pnet peers find``). With ``fresh``, the connection to it
        and what this node knew of its addresses are dropped first, so the
        addresses and the connection both come from the lookup. Raises
        LookupError when the DHT is off."""
        from libp2p.peer.id import ID

        if self.routing is None:
            raise LookupError("peer routing is off: start the node with --dht")
        if fresh and peer in set(self.net.peers()):
            try:
                await self.net.host.disconnect(ID(peer))
            except Exception as exc:
                log.info("disconnect of %s failed: %s", wire.peer_id_str(peer)[:20], exc)
        found = await self.routing.find(peer, fresh=fresh)
        out = {"peer_id": wire.peer_id_str(peer), "found": found is not None,
               "source": found.source if found else None, "addrs": list(found.addrs) if found else [],
               "connected": False}
        if found and peer != self.net.peer_id:
            out["connected"] = await self.dial_addrs(peer, found.addrs)
        return out

    async def _keep_connected(self) -> None:
        bootstrap = self._bootstrap_infos()
        self._boot_ids = frozenset(info.peer_id.to_bytes() for _, info in bootstrap)
        self.boot_book = BootstrapBook([(label, info.peer_id.to_bytes()) for label, info in bootstrap],
                                       self_listed=any(a.endswith("/p2p/" + wire.peer_id_str(self.net.peer_id))
                                                       for a in self.net.bootstrap))
        if bootstrap:
            log.info("bootstrap peers: %s", ", ".join(label for label, _ in bootstrap))
        low = self.net.watermarks.low
        delay, saved_at = 0.2, self.net.clock()
        alone_since: float | None = None
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
            alone_since = self._warn_if_alone(after, alone_since, delay)
            if self.net.clock() - saved_at > 30:
                self.net.book.save()
                self.net.loglimit.flush()
                saved_at = self.net.clock()
            await trio.sleep(delay if after < low else 5.0)

    def _warn_if_alone(self, peers: int, alone_since, delay: float):
        """With no peer: one warning per round of dials once the first dials
        had their chance (a second), naming every bootstrap peer tried and
        why it failed (at most every ``reconnect_max_s`` once backed off)."""
        now = self.net.clock()
        if peers:
            if alone_since is not None and now - alone_since > 1.0:
                log.info("connected again: %d peer(s)", peers)
            return None
        if alone_since is None:
            return now
        if now - alone_since > 1.0:
            remembered = sum(1 for p, _ in self.net.book.known()[:32] if p not in self._boot_ids)
            log.warning("%s", self.boot_book.alone_line(set(), delay, remembered))
        return alone_since

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

    def _lift_negative_cache(self, peer_id) -> None:
        """py-libp2p refuses every dial of a peer for 60 s after one that
        failed ("negative cache"): a bootstrap peer that comes up 2 s after
        our first try would wait a minute. This connector's own backoff
        decides when to redial, so lift py-libp2p's block before each dial."""
        unblock = getattr(self.net.host.get_network(), "unblock_peer", None)
        if unblock is not None:
            unblock(peer_id)

    async def _dial_one(self, label: str, info) -> None:
        self._lift_negative_cache(info.peer_id)
        try:
            with trio.fail_after(10):
                info = await resolve_dns_addrs(info)
                await self.net.host.connect(info)
            log.info("connected to %s", label)
            if self.boot_book.knows(label):
                self.boot_book.note_ok(label, self.net.clock())
        except Exception as exc:
            why = _short_error(exc)
            if self.boot_book.knows(label):
                self.boot_book.note_fail(label, why, self.net.clock())
            self.net.loglimit.info(("dial", label), "%s not reachable yet (%s); will retry", label, why)


DNS_PROTOCOLS = {"dns": 0, "dns4": 4, "dns6": 6}


async def resolve_dns_addrs(info):
    """``info`` with each /dns|dns4|dns6/HOST/tcp/PORT address replaced by
    the /ip4|ip6/ addresses HOST resolves to. py-libp2p's own resolver
    (dnspython) asks DNS servers only, so names from /etc/hosts (or any
    other source the system resolver uses) never resolve and the dial fails
    with "IP address not found in multiaddr"; getaddrinfo asks the system.
    OSError ("cannot resolve HOST: ...") when no address resolves."""
    from libp2p.peer.peerinfo import PeerInfo

    out, errors = [], []
    for maddr in info.addrs:
        protos = [p.name for p in maddr.protocols()]
        if not protos or protos[0] not in DNS_PROTOCOLS or "tcp" not in protos:
            out.append(maddr)
            continue
        host = maddr.value_for_protocol(protos[0])
        rest = str(maddr).split(f"/{protos[0]}/{host}", 1)[1]
        family = {0: trio.socket.AF_UNSPEC, 4: trio.socket.AF_INET, 6: trio.socket.AF_INET6}[DNS_PROTOCOLS[protos[0]]]
        try:
            found = await trio.socket.getaddrinfo(host, None, family=family, type=trio.socket.SOCK_STREAM)
        except OSError as exc:
            errors.append(f"cannot resolve {host}: {exc.strerror or exc}")
            continue
        for fam, *_, sockaddr in found[:4]:
            ip = "ip6" if fam == trio.socket.AF_INET6 else "ip4"
            out.append(multiaddr.Multiaddr(f"/{ip}/{sockaddr[0]}{rest}"))
    if not out:
        raise OSError("; ".join(errors) or "no address")
    return PeerInfo(info.peer_id, list(dict.fromkeys(out)))


def _short_error(exc: BaseException) -> str:
    """One line for a failed dial. py-libp2p wraps the socket error in
    several layers (SwarmDialAllFailedError > MultiError > SwarmException >
    OSError > ExceptionGroup > ConnectionRefusedError): report the innermost
    socket error ("Connection refused", "No route to host"), else the
    innermost message; a timeout has no message at all."""
    if isinstance(exc, trio.TooSlowError):
        return "timed out"
    found: list[BaseException] = []
    stack, seen = [exc], set()
    while stack and len(seen) < 32:
        e = stack.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        found.append(e)
        stack.extend(x for x in (e.__cause__, e.__context__) if x is not None)
        stack.extend(getattr(e, "exceptions", None) or getattr(e, "errors", None) or ())
    for e in reversed(found):
        if isinstance(e, OSError) and e.errno is not None and e.strerror:
            return e.strerror
    for e in reversed(found):
        if str(e):
            return " ".join(str(e).split())[:160]
    return type(exc).__name__
