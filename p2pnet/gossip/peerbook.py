"""What a node remembers about the network across restarts: the peers it has
met with their addresses (``peers.json``) and the TCP port it listened on
(``listen.json``), both in the node's data dir.

A restarted node used to come back with no peers to dial once its bootstrap
peer had gone or moved, and on a new random port that nobody dialled: it
stayed cut off while saying "ready". With these two files it dials the
peers it knew, and comes back where they knew it.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Callable, Optional

from p2pnet import wire
from p2pnet.files import write_json_atomic
from p2pnet.gossip.listen import ListenAddrError, check_listen_addrs

log = logging.getLogger("p2pnet.gossip")

PEERS_FILE = "peers.json"
LISTEN_FILE = "listen.json"


class PeerBook:
    """Known peers: id -> (addresses, last time seen), at most ``limit``,
    saved to ``<dir>/peers.json`` when asked (``save``)."""

    def __init__(self, directory: Optional[Path], *, limit: int = 256,
                 clock: Callable[[], float] = time.time) -> None:
        self.path = Path(directory) / PEERS_FILE if directory is not None else None
        self.limit = limit
        self.clock = clock
        self._peers: dict[bytes, tuple[tuple[str, ...], float]] = {}
        self._dirty = False
        self._load()

    def _load(self) -> None:
        if self.path is None or not self.path.exists():
            return
        try:
            data = json.loads(self.path.read_text())
            for pid, entry in data["peers"].items():
                addrs = tuple(str(a) for a in entry["addrs"])[:8]
                self._peers[wire.peer_id_bytes(pid)] = (addrs, float(entry["last_seen"]))
        except Exception as exc:  # a bad file costs the memory, never the start
            log.warning("ignoring %s: %s", self.path, exc)
            self._peers.clear()
        self._trim()

    def note(self, peer: bytes, addrs) -> None:
        addrs = tuple(a for a in addrs if "/p2p/" not in a)[:8]
        if not addrs:
            return
        self._peers[peer] = (addrs, self.clock())
        self._dirty = True
        self._trim()

    def forget(self, peer: bytes) -> None:
        if self._peers.pop(peer, None) is not None:
            self._dirty = True

    def addrs(self, peer: bytes) -> tuple[str, ...]:
        return self._peers.get(peer, ((), 0.0))[0]

    def known(self) -> list[tuple[bytes, tuple[str, ...]]]:
        """Most recently seen first."""
        ranked = sorted(self._peers.items(), key=lambda kv: kv[1][1], reverse=True)
        return [(peer, addrs) for peer, (addrs, _) in ranked]

    def __len__(self) -> int:
        return len(self._peers)

    def _trim(self) -> None:
        if len(self._peers) > self.limit:
            for peer, _ in self.known()[self.limit:]:
                del self._peers[peer]

    def save(self) -> None:
        if self.path is None or not self._dirty:
            return
        try:
            write_json_atomic(self.path, {"peers": {
                wire.peer_id_str(p): {"addrs": list(a), "last_seen": round(t, 3)}
                for p, (a, t) in self._peers.items()
            }})
            self._dirty = False
        except OSError as exc:
            log.warning("cannot save %s: %s", self.path, exc)


def sticky_listen(directory: Optional[Path], listen: list[str]) -> list[str]:
    """``listen`` with each ``/tcp/0`` replaced by the port this node had last
    time at that address, where that port is free; otherwise left at 0."""
    if directory is None:
        return list(listen)
    path = Path(directory) / LISTEN_FILE
    try:
        last = json.loads(path.read_text()).get("ports", {}) if path.exists() else {}
    except Exception as exc:
        log.warning("ignoring %s: %s", path, exc)
        last = {}
    out = []
    for addr in listen:
        parts = addr.split("/")
        port = last.get(addr)
        if len(parts) >= 5 and parts[3] == "tcp" and parts[4] == "0" and isinstance(port, int):
            parts[4] = str(port)
            try:
                check_listen_addrs(["/".join(parts)])  # the same probe as at start
                addr = "/".join(parts)
            except ListenAddrError as exc:
                log.info("the port of the last run is not free (%s); listening on a new one", exc)
        out.append(addr)
    return out


def remember_listen(directory: Optional[Path], asked: list[str], got: list[str]) -> None:
    """Record the ports that ``/tcp/0`` addresses were given, for the next start."""
    if directory is None:
        return
    ports = {}
    for want in asked:
        w = want.split("/")
        if len(w) < 5 or w[3] != "tcp" or w[4] != "0":
            continue
        for have in got:  # a wildcard address listens on every interface, one port
            h = have.split("/")
            if len(h) >= 5 and h[1] == w[1] and h[4].isdigit() and (h[2] == w[2] or w[2] in ("0.0.0.0", "::")):
                ports[want] = int(h[4])
                break
    if ports:
        try:
            write_json_atomic(Path(directory) / LISTEN_FILE, {"ports": ports})
        except OSError as exc:
            log.warning("cannot save the listen port: %s", exc)
