"""Public-key boxes between peers (NaCl box: X25519 + XSalsa20-Poly1305).

Both sides derive their X25519 keys from their Ed25519 identities, so a peer
ID is all one needs to encrypt to a peer: relaying peers see only ciphertext."""

from __future__ import annotations

from nacl.exceptions import CryptoError
from nacl.public import Box
from nacl.signing import VerifyKey

from p2pnet import wire
from p2pnet.errors import P2PNetError


class SealError(P2PNetError):
    """A box could not be opened (wrong key, tampered, or garbage)."""


def _box(identity, peer: bytes) -> Box:
    try:
        their = VerifyKey(wire.public_key_from_peer_id(peer)).to_curve25519_public_key()
    except (CryptoError, ValueError, wire.WireError) as exc:
        raise SealError(f"peer key unusable for encryption: {exc}") from None
    return Box(identity.box_key(), their)


def seal(identity, peer: bytes, plaintext: bytes) -> bytes:
    return bytes(_box(identity, peer).encrypt(plaintext))


def open_box(identity, peer: bytes, data: bytes) -> bytes:
    try:
        return _box(identity, peer).decrypt(data)
    except (CryptoError, ValueError, TypeError) as exc:
        raise SealError(f"cannot open box from {wire.peer_id_str(peer)[:16]}: {exc}") from None
