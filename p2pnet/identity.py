"""A node's Ed25519 identity: one key for libp2p and for signing messages.

The key file holds the 32-byte seed as hex. It is created on first start with
mode 0600, and a node refuses to use a key file that others can read.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from nacl.public import PrivateKey as BoxPrivateKey
from nacl.signing import SigningKey

from p2pnet import wire
from p2pnet.errors import P2PNetError

KEY_FILE = "node.key"


class IdentityError(P2PNetError):
    """The key file is missing, malformed or unsafe."""


@dataclass(frozen=True)
class Identity:
    seed: bytes

    @property
    def public_key(self) -> bytes:
        return SigningKey(self.seed).verify_key.encode()

    @property
    def peer_id(self) -> bytes:
        return wire.peer_id_from_public_key(self.public_key)

    @property
    def peer_id_str(self) -> str:
        return wire.peer_id_str(self.peer_id)

    def signer(self) -> wire.Signer:
        return wire.Signer(self.seed)

    def box_key(self) -> BoxPrivateKey:
        """The X25519 key derived from this identity, for sealed prompts."""
        return SigningKey(self.seed).to_curve25519_private_key()

    def libp2p_key_pair(self):
        from libp2p.crypto.ed25519 import create_new_key_pair

        return create_new_key_pair(self.seed)


def load_or_create(data_dir: Path) -> Identity:
    """Load ``data_dir/node.key``, creating it (and the dir) on first use."""
    data_dir = Path(data_dir)
    path = data_dir / KEY_FILE
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        seed = os.urandom(32)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, seed.hex().encode() + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        return Identity(seed)
    return load(path)


def load(path: Path) -> Identity:
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise IdentityError(f"no key file at {path} (run `p2pnet node start` once to create it)") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise IdentityError(
            f"key file {path} is accessible by other users (mode {stat.S_IMODE(mode):04o}); "
            f"fix it with: chmod 600 {path}"
        )
    try:
        with open(path, "rb") as fh:
            data = fh.read(_KEY_FILE_MAX + 1)
    except OSError as exc:
        raise IdentityError(f"cannot read key file {path}: {exc.strerror or exc}") from None
    seed = _parse_seed(data)
    if seed is None:
        raise IdentityError(
            f"key file {path} is not a hex Ed25519 seed (64 hex digits); it is damaged or not a p2pnet "
            f"key: restore it from a backup, or move it aside to start with a new identity"
        )
    return Identity(seed)


_KEY_FILE_MAX = 4096
"""A key file is 65 bytes; anything much larger is not one (and is not read whole)."""


def _parse_seed(data: bytes):
    """The 32-byte seed a key file holds, or None for anything else: bytes
    that are not ASCII, not hex, not exactly 64 hex digits, or too many."""
    if len(data) > _KEY_FILE_MAX:
        return None
    try:
        text = data.decode("ascii").strip()
        seed = bytes.fromhex(text)
    except (UnicodeDecodeError, ValueError):
        return None
    return seed if len(seed) == 32 and len(text) == 64 else None
