"""The faults of a namespace testnet, as data, and the nftables rules and tc
arguments that make them. Nothing here runs a command: ``netns`` applies what
these functions return, so the rules can be read and tested without root.

Where each fault lives:

- every rule that drops packets (loss on every link, loss of one host, loss of
  one link, partitions) is in one ``bridge`` table of the "internet"
  namespace, on the bridge's forward hook: it sees every packet between two
  hosts' public addresses (a laptop's public address is its home router's);
- a partition made with ``reject`` also puts a table on each side's edge (a
  server's own namespace, a laptop's router) that answers TCP with a reset and
  the rest with ICMP unreachable, so open connections break at once instead
  of hanging (this kernel has no ``reject`` in the bridge family);
- a bandwidth cap is a tbf qdisc on both ends of the host's uplink veth.

Loss is drawn per packet with ``numgen random``, in steps of 0.01 %; 100 % is
an unconditional drop (numgen cannot express it). There is no latency: the
kernel has no netem, and nothing is delayed inside the nodes either.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Mapping, Optional

from p2pnet.errors import P2PNetError

BRIDGE_TABLE = "p2ptn_faults"
EDGE_TABLE = "p2ptn_reject"


class FaultError(P2PNetError):
    """A fault that cannot be set (a bad percentage, rate or host name)."""


@dataclass(frozen=True)
class Partition:
    """No packet passes between a host of ``a`` and a host of ``b``."""

    a: tuple[str, ...]
    b: tuple[str, ...]
    reject: bool = False

    def as_json(self) -> dict:
        return {"a": list(self.a), "b": list(self.b), "reject": self.reject}


@dataclass
class Faults:
    loss: float = 0.0  # % of every packet between two hosts
    host_loss: dict[str, float] = field(default_factory=dict)  # % of every packet to or from the host
    link_loss: dict[tuple[str, str], float] = field(default_factory=dict)  # % each way; key sorted
    partitions: list[Partition] = field(default_factory=list)
    bandwidth: dict[str, str] = field(default_factory=dict)  # host -> tc rate, each way

    def as_json(self) -> dict:
        return {
            "loss": self.loss,
            "host_loss": dict(self.host_loss),
            "link_loss": [[a, b, pct] for (a, b), pct in sorted(self.link_loss.items())],
            "partitions": [p.as_json() for p in self.partitions],
            "bandwidth": dict(self.bandwidth),
        }

    @classmethod
    def from_json(cls, raw: Optional[dict]) -> "Faults":
        raw = raw or {}
        return cls(
            loss=float(raw.get("loss", 0.0)),
            host_loss={k: float(v) for k, v in raw.get("host_loss", {}).items()},
            link_loss={link_key(a, b): float(pct) for a, b, pct in raw.get("link_loss", [])},
            partitions=[Partition(tuple(p["a"]), tuple(p["b"]), bool(p.get("reject"))) for p in raw.get("partitions", [])],
            bandwidth=dict(raw.get("bandwidth", {})),
        )

    def set_loss(self, pct: float, host: Optional[str] = None, link: Optional[tuple[str, str]] = None) -> None:
        pct = check_pct(pct)
        if host is not None and link is not None:
            raise FaultError("give a host or a link, not both")
        if link is not None:
            key = link_key(*link)
            if key[0] == key[1]:
                raise FaultError(f"a link joins two different hosts, not {key[0]} and itself")
            _put(self.link_loss, key, pct)
        elif host is not None:
            _put(self.host_loss, host, pct)
        else:
            self.loss = pct

    def partition(self, a, b, reject: bool = False) -> Partition:
        a, b = tuple(dict.fromkeys(a)), tuple(dict.fromkeys(b))
        if not a or not b:
            raise FaultError("a partition needs a host on each side")
        both = set(a) & set(b)
        if both:
            raise FaultError(f"{', '.join(sorted(both))} cannot be on both sides of a partition")
        part = Partition(a, b, reject)
        self.partitions.append(part)
        return part


def _put(table: dict, key, pct: float) -> None:
    if pct:
        table[key] = pct
    else:
        table.pop(key, None)


def link_key(a: str, b: str) -> tuple[str, str]:
    return (a, b) if a <= b else (b, a)


def check_pct(pct: float) -> float:
    pct = float(pct)
    if not 0.0 <= pct <= 100.0:
        raise FaultError(f"a loss must be between 0 and 100 %, not {pct:g}")
    return round(pct, 2)


def _chance(pct: float) -> str:
    """The match that is true for ``pct`` % of packets ("" for all)."""
    if pct >= 100.0:
        return ""
    return f"numgen random mod 10000 < {int(round(pct * 100))} "


def _set(addrs) -> str:
    return "{ " + ", ".join(addrs) + " }"


def bridge_rules(faults: Faults, public: Mapping[str, str]) -> list[str]:
    """The rules of the bridge's forward chain, in order: partitions, then loss.

    ``public`` maps each host name to the address the internet sees it at."""
    rules = []
    for part in faults.partitions:
        a, b = _set(public[h] for h in part.a), _set(public[h] for h in part.b)
        rules += [f"ip saddr {a} ip daddr {b} drop", f"ip saddr {b} ip daddr {a} drop"]
    for (x, y), pct in sorted(faults.link_loss.items()):
        if pct > 0:
            rules += [f"ip saddr {public[x]} ip daddr {public[y]} {_chance(pct)}drop",
                      f"ip saddr {public[y]} ip daddr {public[x]} {_chance(pct)}drop"]
    for host, pct in sorted(faults.host_loss.items()):
        if pct > 0:
            rules += [f"ip saddr {public[host]} {_chance(pct)}drop", f"ip daddr {public[host]} {_chance(pct)}drop"]
    if faults.loss > 0:
        rules.append(f"meta protocol ip {_chance(faults.loss)}drop")
    return rules


def bridge_ruleset(faults: Faults, public: Mapping[str, str]) -> str:
    """An nft script that replaces the bridge's fault table in one transaction."""
    body = "".join(f"\t\t{rule}\n" for rule in bridge_rules(faults, public))
    return (f"add table bridge {BRIDGE_TABLE}\ndelete table bridge {BRIDGE_TABLE}\n"
            f"table bridge {BRIDGE_TABLE} {{\n\tchain forward {{\n"
            f"\t\ttype filter hook forward priority 0; policy accept;\n{body}\t}}\n}}\n")


def edge_rules(host: str, faults: Faults, public: Mapping[str, str]) -> list[str]:
    """Reject rules for what ``host`` sends across a ``reject`` partition."""
    far: dict[str, None] = {}
    for part in faults.partitions:
        if part.reject and host in part.a:
            far.update(dict.fromkeys(part.b))
        elif part.reject and host in part.b:
            far.update(dict.fromkeys(part.a))
    if not far:
        return []
    dst = _set(public[h] for h in far)
    return [f"ip daddr {dst} meta l4proto tcp reject with tcp reset", f"ip daddr {dst} reject"]


def edge_ruleset(rules: list[str], hook: str, iif: Optional[str] = None) -> str:
    """An nft script that replaces an edge's reject table (empty rules: removes it)."""
    head = f"add table inet {EDGE_TABLE}\ndelete table inet {EDGE_TABLE}\n"
    if not rules:
        return head
    match = f'iifname "{iif}" ' if iif else ""
    body = "".join(f"\t\t{match}{rule}\n" for rule in rules)
    return (head + f"table inet {EDGE_TABLE} {{\n\tchain {hook} {{\n"
            f"\t\ttype filter hook {hook} priority 0; policy accept;\n{body}\t}}\n}}\n")


_RATE = re.compile(r"^(\d+(?:\.\d+)?)\s*(bit|kbit|mbit|gbit|bps|kbps|mbps|gbps)?$", re.IGNORECASE)
_UNIT = {"bit": 1, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9, "bps": 8, "kbps": 8e3, "mbps": 8e6, "gbps": 8e9}


def parse_rate(text: str) -> int:
    """A tc-style rate ("1mbit", "500kbit", "2mbps": bytes) in bit/s."""
    m = _RATE.match(str(text).strip())
    if not m:
        raise FaultError(f"{text!r} is not a rate (e.g. 1mbit, 500kbit, 10mbit)")
    bits = float(m.group(1)) * _UNIT[(m.group(2) or "bit").lower()]
    if not 8_000 <= bits <= 100e9:
        raise FaultError(f"a rate must be between 8kbit and 100gbit, not {text}")
    return int(bits)


def tbf_args(rate: str) -> list[str]:
    """tc arguments for a tbf cap at ``rate``: a burst of 1/50 s of traffic
    (at least 16 KiB, as tbf needs burst >= rate/HZ) and a queue that holds
    at most 200 ms before it drops."""
    bits = parse_rate(rate)
    burst = max(16384, bits // 8 // 50)
    return ["tbf", "rate", f"{bits}bit", "burst", str(burst), "latency", "200ms"]
