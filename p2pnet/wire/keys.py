"""Peer IDs: an Ed25519 public key as a libp2p identity multihash, and
its base58 text form."""

from __future__ import annotations

from p2pnet.wire.codec import MALFORMED, WireError

_PEER_ID_PREFIX = bytes.fromhex("002408011220")  # identity multihash of an Ed25519 key


def peer_id_from_public_key(public_key: bytes) -> bytes:
    """The libp2p peer ID (bytes) of an Ed25519 public key."""
    if len(public_key) != 32:
        raise ValueError("an Ed25519 public key has 32 bytes")
    return _PEER_ID_PREFIX + public_key


def public_key_from_peer_id(peer_id: bytes) -> bytes:
    """The Ed25519 public key inside a peer ID; WireError if it holds none."""
    if len(peer_id) != 38 or not peer_id.startswith(_PEER_ID_PREFIX):
        raise WireError(MALFORMED, "sender is not an Ed25519 peer ID")
    return peer_id[6:]


_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def b58encode(data: bytes) -> str:
    n = int.from_bytes(data, "big")
    out = []
    while n:
        n, r = divmod(n, 58)
        out.append(_B58[r])
    pad = len(data) - len(data.lstrip(b"\0"))
    return "1" * pad + "".join(reversed(out))


def b58decode(text: str) -> bytes:
    n = 0
    for ch in text:
        i = _B58.find(ch)
        if i < 0:
            raise ValueError(f"invalid base58 character {ch!r}")
        n = n * 58 + i
    pad = len(text) - len(text.lstrip("1"))
    body = n.to_bytes((n.bit_length() + 7) // 8, "big") if n else b""
    return b"\0" * pad + body


def peer_id_str(peer_id: bytes) -> str:
    """The usual text form (``12D3KooW...``) of a peer ID."""
    return b58encode(peer_id)


def peer_id_bytes(text: str) -> bytes:
    """Parse the text form of an Ed25519 peer ID; ValueError if it is not one."""
    raw = b58decode(text)
    public_key_from_peer_id(raw)
    return raw

