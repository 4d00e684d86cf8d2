"""Pure JSON views for the dashboard: this node's addresses and what they say
about its reachability, its peers and their roles, and the announced model
cards. No I/O; the service (service.py) hands in what the node knows.

Every string here may come from the network (a peer's addresses, a model
card's fields): the page renders them as text, never as markup.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from typing import Iterable, Optional

from p2pnet import wire

# What an address says about who can reach it. Nothing is tested from outside:
# NAT traversal and relays are not implemented (issue #20).
LOOPBACK, PRIVATE, PUBLIC, ALL_INTERFACES, NAMED, UNKNOWN = (
    "loopback", "private", "public", "all interfaces", "dns name", "unknown")

REACHABILITY_NOTE = ("what this node's addresses say, not a test from outside: NAT traversal and relays are "
                     "not implemented yet, so a node behind NAT is reachable only through an address given "
                     "with --announce")


def address_scope(maddr: str) -> str:
    """The scope of a multiaddr's host part: loopback, private, public, ..."""
    parts = maddr.split("/")
    if len(parts) < 3:
        return UNKNOWN
    proto, host = parts[1], parts[2]
    if proto in ("dns", "dns4", "dns6", "dnsaddr"):
        return LOOPBACK if host == "localhost" else NAMED
    if proto not in ("ip4", "ip6"):
        return UNKNOWN
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return UNKNOWN
    if ip.is_unspecified:
        return ALL_INTERFACES
    if ip.is_loopback:
        return LOOPBACK
    if ip.is_global:
        return PUBLIC
    return PRIVATE


def reachability(listen: Iterable[str], announced: Iterable[str]) -> dict:
    """A summary of the listen and announced addresses, honestly labelled."""
    listen = [{"addr": a, "scope": address_scope(a)} for a in listen]
    announced = [{"addr": a, "scope": address_scope(a)} for a in announced]
    scopes = {a["scope"] for a in (announced or listen)}
    if PUBLIC in scopes:
        summary = ("public address announced (not verified from outside)" if announced
                   else "listens on a public address (not verified from outside)")
    elif NAMED in scopes:
        summary = "announces a DNS name (not verified from outside)"
    elif PRIVATE in scopes or ALL_INTERFACES in scopes:
        summary = "private network only: behind NAT from the internet unless a port is forwarded"
    elif scopes == {LOOPBACK}:
        summary = "loopback only: reachable from this machine"
    else:
        summary = "unknown"
    return {"summary": summary, "listen": listen, "announced": announced, "relayed": False,
            "note": REACHABILITY_NOTE}


def roles(is_validator: bool, hosts_experts: bool) -> list[str]:
    out = []
    if is_validator:
        out.append("validator")
    if hosts_experts:
        out.append("expert host")
    return out or ["user"]


def card_json(peer: str, card: wire.ModelCard, *, local: bool, age_s: float) -> dict:
    return {
        "peer_id": peer, "expert_id": card.expert_id, "model": card.model, "sha256": card.sha256,
        "quantization": card.quantization, "n_ctx": card.n_ctx, "domains": list(card.domains),
        "price_per_1k": card.price_per_1k, "prompt_tps": round(card.prompt_tps, 1),
        "gen_tps": round(card.gen_tps, 1), "load": card.load, "max_concurrency": card.max_concurrency,
        "backend": card.backend, "local": local, "age_s": round(max(0.0, age_s), 1),
    }


def experts_view(cards: list[dict]) -> list[dict]:
    """The cards with ``copies``: how many announced experts serve the same
    model file (the same sha256); ``copy_group`` numbers each such model."""
    counts = Counter(c["sha256"] for c in cards if c["sha256"])
    groups: dict[str, int] = {}
    for sha in sorted(s for s, n in counts.items() if n > 1):
        groups[sha] = len(groups) + 1
    out = []
    for c in sorted(cards, key=lambda c: (c["model"], c["peer_id"], c["expert_id"])):
        out.append({**c, "copies": counts.get(c["sha256"], 1) if c["sha256"] else 1,
                    "copy_group": groups.get(c["sha256"])})
    return out


def peers_view(me: str, connected: dict[str, list[str]], known: dict[str, list[str]], announced: dict[str, dict],
               validators: Optional[set[str]], expert_hosts: set[str], received: dict[str, int],
               dropped: dict[str, int], now: float) -> list[dict]:
    """One row per peer this node is connected to or has heard of.

    ``connected``/``known``: peer -> addresses; ``announced``: peer ->
    {"validator", "height", "cards", "seen"} from its last announcement;
    ``validators``: the genesis's validators (None without a ledger: then a
    peer's own announcement says whether it is one)."""
    out = []
    for peer in sorted((set(connected) | set(known) | set(announced)) - {me}):
        ann = announced.get(peer, {})
        is_validator = peer in validators if validators is not None else bool(ann.get("validator"))
        hosts = peer in expert_hosts or bool(ann.get("cards"))
        out.append({
            "peer_id": peer,
            "connected": peer in connected,
            "addrs": list(connected.get(peer) or known.get(peer) or [])[:8],
            "roles": roles(is_validator, hosts),
            "experts": ann.get("cards", 0),
            "height": ann.get("height"),
            "last_announce_s": None if "seen" not in ann else round(max(0.0, now - ann["seen"]), 1),
            "received": received.get(peer, 0),
            "dropped": dropped.get(peer, 0),
        })
    return out
