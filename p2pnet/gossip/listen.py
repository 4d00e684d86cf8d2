"""Checking the listen multiaddrs before the libp2p host starts.

py-libp2p 0.8.1 swallows a listener that fails to open: a UDP/QUIC address,
or an IP this machine does not have, leaves the host running with no
listener at all ("listening on  as ..."). And it sets SO_REUSEPORT on its
listeners, so a second node given a port the first one already listens on
binds it again and the kernel splits the incoming connections between the
two. :func:`check_listen_addrs` refuses all of these with one clear line
before anything starts.

The port test binds a plain socket *without* SO_REUSEPORT: the kernel then
refuses it (EADDRINUSE) when any socket listens on that address and port,
SO_REUSEPORT or not. SO_REUSEADDR is on, as on the real listener, so a port
held only by connections in TIME_WAIT (a node restarted on its fixed port)
is free. The probe sockets of all addresses are held open (listening)
together, so two --listen addresses that would clash with each other clash
here too. A foreign IP fails at bind with EADDRNOTAVAIL; nothing is sent.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from typing import Iterable, List, Tuple

from p2pnet.gossip.errors import GossipError

SUPPORTED = "/ip4/ADDR/tcp/PORT or /ip6/ADDR/tcp/PORT"


class ListenAddrError(GossipError):
    """A listen multiaddr this node cannot listen on."""


def parse_listen_addr(addr: str) -> Tuple[int, str, int]:
    """``(family, ip, port)`` of a listen multiaddr; ListenAddrError unless it
    is exactly /ip4|ip6/ADDR/tcp/PORT."""
    import multiaddr

    try:
        maddr = multiaddr.Multiaddr(addr)
        protos = [p.name for p in maddr.protocols()]
        values = [maddr.value_for_protocol(p.code) for p in maddr.protocols()]
    except Exception as exc:  # multiaddr raises several unrelated classes
        raise ListenAddrError(f"listen address {addr!r} is not a multiaddr ({exc})") from None
    if len(protos) == 2 and protos[0] in ("ip4", "ip6") and protos[1] == "tcp":
        ip, port = values[0], int(values[1])
        family = socket.AF_INET if protos[0] == "ip4" else socket.AF_INET6
        return family, str(ipaddress.ip_address(ip)), port
    if "udp" in protos or "quic" in protos or "quic-v1" in protos:
        why = "UDP/QUIC is not supported"
    elif protos and protos[0] in ("dns", "dns4", "dns6", "dnsaddr"):
        why = "a DNS name cannot be listened on, give the IP"
    elif "p2p" in protos:
        why = "drop the /p2p/ID part (that is for --bootstrap)"
    elif len(protos) > 2 and protos[:2] in (["ip4", "tcp"], ["ip6", "tcp"]):
        why = f"/{protos[2]} is not supported"
    else:
        why = "it is not a TCP address"
    raise ListenAddrError(f"listen address {addr}: {why}; use {SUPPORTED}")


def check_listen_addrs(addrs: Iterable[str]) -> None:
    """Refuse, with one clear ListenAddrError, listen addresses that are not
    plain TCP, whose IP this machine does not have, or whose port something
    (another node included) already listens on."""
    addrs = list(addrs)
    if not addrs:
        raise ListenAddrError(f"no listen address; give one with --listen {SUPPORTED}")
    parsed = [(addr, *parse_listen_addr(addr)) for addr in addrs]
    probes: List[socket.socket] = []
    try:
        for addr, family, ip, port in parsed:
            probes.append(_probe(addr, family, ip, port))
    finally:
        for sock in probes:
            sock.close()


def _probe(addr: str, family: int, ip: str, port: int) -> socket.socket:
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as exc:
        raise ListenAddrError(f"cannot listen on {addr}: {exc.strerror or exc}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if hasattr(socket, "SO_REUSEPORT"):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 0)
        sock.bind((ip, port))
        sock.listen(1)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ListenAddrError(f"cannot listen on {addr}: port {port} is already in use "
                                  f"(another node or program listens on it; pick another port, "
                                  f"or /tcp/0 for a free one)") from None
        if exc.errno == errno.EADDRNOTAVAIL:
            raise ListenAddrError(f"cannot listen on {addr}: {ip} is not an address of this machine "
                                  f"(use one it has, or 0.0.0.0 / :: for all)") from None
        if exc.errno == errno.EACCES:
            raise ListenAddrError(f"cannot listen on {addr}: permission denied "
                                  f"(ports below 1024 need privileges)") from None
        raise ListenAddrError(f"cannot listen on {addr}: {exc.strerror or exc}") from None
    return sock
