"""Which addresses a node may tell others about, and what a connection's
path is. Pure functions: no sockets, no libp2p objects (strings in, strings out).

Scopes of an IP address (``addr_scope``):

- ``loopback``: 127.0.0.0/8, ::1 — reachable only from the same machine;
- ``private``: RFC 1918 (10/8, 172.16/12, 192.168/16), CGNAT (100.64/10),
  link-local (169.254/16, fe80::/10) and IPv6 unique-local (fc00::/7) —
  reachable only from inside that network;
- ``unspecified``: 0.0.0.0 and :: (a wildcard listen address, never dialable);
- ``public``: everything else. 198.18.0.0/15 counts as public on purpose:
  the namespace testnet (testnet/netns.py) uses it as its internet, although
  Python's ``ipaddress`` calls it private.

The announcement rule (``announceable``): public addresses, then the node's
``/p2p-circuit`` addresses; loopback only from a node whose every listen
address is loopback (a swarm on one machine: its peers are on that machine
too); private addresses only when the node is told its network is private
(``announce_private``, a LAN-only network). A node behind NAT thus announces
only its relayed addresses, and nobody outside its LAN is handed an address
that leads nowhere (or, worse, to some other machine on the peer's own LAN).
"""

from __future__ import annotations

import ipaddress
from typing import Iterable, Optional

_PRIVATE = [ipaddress.ip_network(n) for n in (
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "169.254.0.0/16",
    "fc00::/7", "fe80::/10")]

CIRCUIT = "/p2p-circuit"

# the path to a peer, as provenance and status say it
DIRECT, HOLE_PUNCHED, RELAYED, NOT_CONNECTED = "direct", "hole-punched", "relayed", "not-connected"


def ip_of(addr: str) -> Optional[str]:
    """The IP of ``/ip4/A/...`` or ``/ip6/A/...``; None for anything else."""
    parts = addr.split("/")
    if len(parts) >= 3 and parts[0] == "" and parts[1] in ("ip4", "ip6"):
        return parts[2]
    return None


def tcp_port_of(addr: str) -> Optional[int]:
    parts = addr.split("/")
    if len(parts) >= 5 and parts[1] in ("ip4", "ip6") and parts[3] == "tcp" and parts[4].isdigit():
        return int(parts[4])
    return None


def ip_scope(ip: str) -> str:
    try:
        a = ipaddress.ip_address(ip)
    except ValueError:
        return "invalid"
    if isinstance(a, ipaddress.IPv6Address) and a.ipv4_mapped is not None:
        a = a.ipv4_mapped
    if a.is_unspecified:
        return "unspecified"
    if a.is_loopback:
        return "loopback"
    if any(a in net for net in _PRIVATE if net.version == a.version):
        return "private"
    if a.is_multicast or a.is_reserved:
        return "invalid"
    return "public"


def addr_scope(addr: str) -> str:
    """``circuit`` for a relayed address, else the scope of its IP
    (``dns`` for /dns4|dns6|dnsaddr names, ``invalid`` for anything else)."""
    if CIRCUIT in addr:
        return "circuit"
    ip = ip_of(addr)
    if ip is not None:
        return ip_scope(ip)
    head = addr.split("/")[1] if addr.startswith("/") and len(addr.split("/")) > 1 else ""
    return "dns" if head in ("dns", "dns4", "dns6", "dnsaddr") else "invalid"


def announceable(listen: Iterable[str], circuits: Iterable[str] = (), *,
                 announce_private: bool = False) -> tuple[str, ...]:
    """The addresses a node may put in its announcements: see the module doc.
    ``listen`` are its bound addresses (without ``/p2p/``); ``circuits`` its
    relayed addresses (``<relay>/p2p/<relay-id>/p2p-circuit``)."""
    listen = [a.split("/p2p/")[0] for a in listen]
    scopes = [addr_scope(a) for a in listen]
    local_only = bool(listen) and all(s == "loopback" for s in scopes)
    ok = {"public", "dns"} | ({"loopback"} if local_only else set()) | ({"private"} if announce_private else set())
    out = [a for a, s in zip(listen, scopes) if s in ok]
    out += [c for c in circuits if addr_scope(c) == "circuit" and c not in out]
    return tuple(dict.fromkeys(out))


def handed_out(addrs: Iterable[str], circuits: Iterable[str] = (), *,
               announce_private: bool = False) -> tuple[str, ...]:
    """The addresses of a peer this node may hand to others (a DHT answer):
    what it knows of that peer under the announcement rule. Direct ones go
    through :func:`announceable` (so a NATed peer's LAN address is never
    handed out); relayed ones (from anywhere in ``addrs`` or ``circuits``)
    go as ``<relay>/p2p/<relay-id>/p2p-circuit``, a trailing ``/p2p/<peer>``
    dropped."""
    plain, relayed = [], []
    for a in [*addrs, *circuits]:
        if addr_scope(a) != "circuit":
            plain.append(a)
            continue
        parts = split_circuit(a)
        if parts is not None:
            relayed.append(circuit_addr(*parts))
    return announceable(plain, relayed, announce_private=announce_private)


def usable_by_me(addr: str, my_listen: Iterable[str]) -> bool:
    """Whether this node should try ``addr`` (heard from a peer): never a
    wildcard or malformed one; loopback only if it listens on loopback
    itself; private only if it has a private address itself (it may share
    that network)."""
    scope = addr_scope(addr)
    if scope in ("public", "dns", "circuit"):
        return True
    mine = {addr_scope(a) for a in my_listen}
    if scope == "loopback":
        return "loopback" in mine
    if scope == "private":
        return "private" in mine or "unspecified" in mine
    return False


def circuit_addr(relay_addr: str, relay_id: str) -> str:
    """``<relay_addr>/p2p/<relay_id>/p2p-circuit``: the address peers dial
    to reach this node through that relay (they append ``/p2p/<self>``)."""
    base = relay_addr.split("/p2p/")[0]
    return f"{base}/p2p/{relay_id}{CIRCUIT}"


def split_circuit(addr: str) -> Optional[tuple[str, str]]:
    """``(relay transport addr, relay id)`` of a circuit address; None if it is not one."""
    if CIRCUIT not in addr:
        return None
    head = addr.split(CIRCUIT)[0]
    if "/p2p/" not in head:
        return None
    base, relay_id = head.rsplit("/p2p/", 1)
    if not relay_id or "/" in relay_id or ip_of(base) is None and addr_scope(base) != "dns":
        return None
    return base, relay_id


def path_of(conn_kinds: Iterable[tuple[bool, bool]]) -> str:
    """The path to a peer from its connections, each ``(relayed, hole_punched)``:
    direct beats hole-punched beats relayed (the swarm prefers a direct
    connection for new streams)."""
    kinds = list(conn_kinds)
    if not kinds:
        return NOT_CONNECTED
    if any(not r and not h for r, h in kinds):
        return DIRECT
    if any(not r for r, _ in kinds):
        return HOLE_PUNCHED
    return RELAYED
