"""A network spec: one JSON file that names a p2pnet network.

::

    {"p2pnet_network": 1,
     "name": "acme-net",
     "genesis_hash": "<sha256 hex of the genesis document's canonical JSON>",
     "genesis": {"chain_id": "acme-net", "genesis_time_ms": ..., "validators": [...], "params": {...}},
     "bootstrap": ["/dns4/boot1.acme.example/tcp/4001/p2p/12D3KooW...",
                   "/ip4/203.0.113.7/tcp/4001/p2p/12D3KooW..."],
     "comment": "optional free text"}

The genesis is the ledger's own genesis document
(:mod:`p2pnet.consensus.genesis`); ``genesis_hash`` is the sha256 of that
document as written, in canonical JSON (sorted keys, no spaces): for a spec
that `network init` writes it equals ``Genesis.hash()``. A spec whose
genesis was edited or damaged is refused with one error, and two nodes that
load specs with the same hash follow the same genesis document. The hash is
taken over the document, not over ``Genesis`` with its defaults filled in,
so a later p2pnet that adds a chain parameter with a default still accepts
the spec (the node then writes the same document for its ledger). The bootstrap addresses are where a joining node dials first:
``/ip4/``, ``/ip6/``, ``/dns4/``, ``/dns6/`` or ``/dns/``, then ``/tcp/PORT``,
ending in ``/p2p/<peer id>``.

JSON rather than TOML: the genesis is already JSON with a canonical encoding
that the hash is taken over, the standard library both reads and writes JSON
(``tomllib`` only reads, and ``network init`` writes specs), and one file can
embed the genesis document unchanged.

A spec is found by path, or by NAME in the user's networks directory
(``$XDG_CONFIG_HOME/p2pnet/networks``, else ``~/.config/p2pnet/networks``)
and then among the specs shipped in ``p2pnet_testnet/networks``. Every error
is a :class:`NetworkSpecError` whose message names the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence

from p2pnet import wire
from p2pnet.consensus.errors import GenesisError
from p2pnet.consensus.genesis import Genesis, genesis_from_obj
from p2pnet.errors import P2PNetError
from p2pnet.files import SmallFileError, read_small_text

FORMAT = 1
MAX_SPEC_BYTES = 256 * 1024
MAX_BOOTSTRAP = 64
MAX_ADDR_CHARS = 256
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
HOST_PROTOCOLS = ("ip4", "ip6", "dns", "dns4", "dns6")
KEYS = {"p2pnet_network", "name", "genesis_hash", "genesis", "bootstrap", "comment"}


class NetworkSpecError(P2PNetError):
    """A network spec cannot be found, read or trusted."""


@dataclass(frozen=True)
class NetworkSpec:
    name: str
    genesis: Genesis
    bootstrap: tuple[str, ...]
    comment: str = ""
    source: Optional[Path] = None  # the file it was read from, if any
    genesis_doc: Optional[dict] = None  # the genesis document as written (default: genesis.to_json_obj())

    def document(self) -> dict:
        return self.genesis_doc if self.genesis_doc is not None else self.genesis.to_json_obj()

    @property
    def genesis_hash(self) -> str:
        return document_hash(self.document())

    def bootstrap_peers(self) -> list[str]:
        """The peer IDs of the bootstrap addresses, in order, without repeats."""
        return list(dict.fromkeys(addr.rsplit("/p2p/", 1)[1] for addr in self.bootstrap))

    def to_json_obj(self) -> dict:
        obj = {"p2pnet_network": FORMAT, "name": self.name, "genesis_hash": self.genesis_hash,
               "genesis": self.document(), "bootstrap": list(self.bootstrap)}
        if self.comment:
            obj["comment"] = self.comment
        return obj

    def to_json(self) -> str:
        return json.dumps(self.to_json_obj(), indent=2) + "\n"

    def summary(self) -> dict:
        """What `p2pnet network show --json` prints."""
        return {"name": self.name, "file": str(self.source) if self.source else None,
                "genesis_hash": self.genesis_hash, "chain_id": self.genesis.chain_id,
                "genesis_time_ms": self.genesis.genesis_time_ms,
                "validators": [{"peer_id": v.peer_id_text, "power": v.power} for v in self.genesis.validators],
                "bootstrap": list(self.bootstrap), "comment": self.comment}


# ---------------------------------------------------------------- checking

def document_hash(doc: dict) -> str:
    """sha256 hex of a genesis document's canonical JSON (as Genesis.hash() takes it)."""
    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def check_name(name: object) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ValueError(f"name: {name!r} is not a network name (1-64 of a-z 0-9 . _ -, starting with a "
                         "letter or digit)")
    return name


def check_bootstrap_addr(addr: object) -> str:
    """``addr`` if it is a dialable bootstrap multiaddr; ValueError saying why not."""
    if not isinstance(addr, str):
        raise ValueError(f"bootstrap: {addr!r} is not a string")
    if len(addr) > MAX_ADDR_CHARS:
        raise ValueError(f"bootstrap: {addr[:40]!r}... is longer than {MAX_ADDR_CHARS} characters")
    import multiaddr

    try:
        maddr = multiaddr.Multiaddr(addr)
        protos = [p.name for p in maddr.protocols()]
    except Exception as exc:
        raise ValueError(f"bootstrap: {addr!r} is not a multiaddr ({exc})") from None
    if len(protos) != 3 or protos[0] not in HOST_PROTOCOLS or protos[1] != "tcp" or protos[2] != "p2p":
        raise ValueError(f"bootstrap: {addr!r} must be /ip4|ip6|dns4|dns6|dns/HOST/tcp/PORT/p2p/<peer id>")
    if int(maddr.value_for_protocol("tcp")) == 0:
        raise ValueError(f"bootstrap: {addr!r} has port 0")
    try:
        wire.peer_id_bytes(addr.rsplit("/p2p/", 1)[1])
    except (ValueError, wire.WireError):
        raise ValueError(f"bootstrap: {addr!r} does not end in an Ed25519 peer ID") from None
    return addr


def spec_from_obj(obj: object, source: Optional[Path] = None) -> NetworkSpec:
    """Check a decoded spec; ValueError (or GenesisError) naming what is wrong."""
    if not isinstance(obj, dict):
        raise ValueError("expected a JSON object")
    unknown = sorted(set(obj) - KEYS)
    if unknown:
        raise ValueError(f"{unknown[0]}: unknown key")
    if obj.get("p2pnet_network") != FORMAT:
        raise ValueError(f"p2pnet_network: expected {FORMAT} (the spec format), got {obj.get('p2pnet_network')!r}")
    name = check_name(obj.get("name"))
    claimed = obj.get("genesis_hash")
    if not isinstance(claimed, str) or not re.fullmatch(r"[0-9a-f]{64}", claimed):
        raise ValueError("genesis_hash: expected 64 lowercase hex digits")
    if "genesis" not in obj:
        raise ValueError("genesis: missing")
    try:
        genesis = genesis_from_obj(obj["genesis"])
    except GenesisError as exc:
        raise ValueError(f"genesis.{exc}") from None
    actual = document_hash(obj["genesis"])
    if actual != claimed:
        raise ValueError(f"genesis_hash: the spec says {claimed[:16]}... but its genesis hashes to "
                         f"{actual[:16]}... (the genesis was changed or the file is damaged)")
    boot = obj.get("bootstrap")
    if not isinstance(boot, list) or not boot:
        raise ValueError("bootstrap: a network needs at least one bootstrap address (a list of multiaddrs)")
    if len(boot) > MAX_BOOTSTRAP:
        raise ValueError(f"bootstrap: at most {MAX_BOOTSTRAP} addresses, not {len(boot)}")
    boot = [check_bootstrap_addr(a) for a in boot]
    if len(set(boot)) != len(boot):
        raise ValueError("bootstrap: an address is listed twice")
    comment = obj.get("comment", "")
    if not isinstance(comment, str):
        raise ValueError("comment: expected a string")
    return NetworkSpec(name, genesis, tuple(boot), comment, source, genesis_doc=obj["genesis"])


def make_spec(name: str, genesis: Genesis, bootstrap: Sequence[str], comment: str = "") -> NetworkSpec:
    """A spec for a new network; NetworkSpecError on a bad name or address."""
    spec = NetworkSpec(name, genesis, tuple(bootstrap), comment)
    try:
        return spec_from_obj(spec.to_json_obj())
    except (ValueError, GenesisError) as exc:
        raise NetworkSpecError(f"network spec: {exc}") from None


# ---------------------------------------------------------------- finding and reading

def user_networks_dir() -> Path:
    """Where a user's own specs live: $XDG_CONFIG_HOME/p2pnet/networks (else ~/.config/...)."""
    base = os.environ.get("XDG_CONFIG_HOME")
    return (Path(base).expanduser() if base else Path.home() / ".config") / "p2pnet" / "networks"


def packaged_networks_dir() -> Path:
    """The specs shipped with p2pnet (``testnet/networks`` in the source tree)."""
    import p2pnet_testnet

    return Path(p2pnet_testnet.__file__).resolve().parent / "networks"


def search_dirs() -> list[Path]:
    return [user_networks_dir(), packaged_networks_dir()]


def load_spec(path: str | Path) -> NetworkSpec:
    """Read and check the spec at ``path``; one NetworkSpecError naming the file."""
    path = Path(path)
    try:
        text = read_small_text(path, "a network spec", limit=MAX_SPEC_BYTES)
    except FileNotFoundError:
        raise NetworkSpecError(f"network spec {path}: no such file") from None
    except IsADirectoryError:
        raise NetworkSpecError(f"network spec {path}: is a directory, not a file") from None
    except OSError as exc:
        raise NetworkSpecError(f"network spec {path}: {exc.strerror or exc}") from None
    except SmallFileError as exc:
        why = f"is larger than {MAX_SPEC_BYTES >> 10} KiB" if "larger" in str(exc) else "is not UTF-8 text"
        raise NetworkSpecError(f"network spec {path}: {why}, not a network spec") from None
    try:
        obj = json.loads(text)
    except ValueError as exc:
        raise NetworkSpecError(f"network spec {path}: not JSON ({exc})") from None
    try:
        return spec_from_obj(obj, source=path)
    except (ValueError, GenesisError) as exc:
        raise NetworkSpecError(f"network spec {path}: {exc}") from None


def looks_like_path(ref: str) -> bool:
    return "/" in ref or os.sep in ref or ref.endswith(".json")


def find_spec(ref: str, dirs: Optional[Iterable[Path]] = None) -> Path:
    """The file ``ref`` names: a path, or NAME looked up in ``dirs``
    (default :func:`search_dirs`, the user's first)."""
    if not ref:
        raise NetworkSpecError("--network: give a spec file or a network name")
    if looks_like_path(ref) or Path(ref).is_file():
        return Path(ref).expanduser()
    dirs = list(search_dirs() if dirs is None else dirs)
    if not NAME_RE.match(ref):
        raise NetworkSpecError(f"--network: {ref!r} is neither a file nor a network name")
    for d in dirs:
        candidate = d / f"{ref}.json"
        if candidate.is_file():
            return candidate
    known = sorted(known_networks(dirs))
    raise NetworkSpecError(f"no network named {ref!r} in {', '.join(str(d) for d in dirs)}"
                           + (f" (known: {', '.join(known)})" if known else "")
                           + "; give the spec file's path instead")


def known_networks(dirs: Optional[Iterable[Path]] = None) -> dict[str, Path]:
    """NAME -> file of every spec in ``dirs`` (earlier directories win)."""
    out: dict[str, Path] = {}
    for d in (search_dirs() if dirs is None else dirs):
        try:
            files = sorted(Path(d).glob("*.json"))
        except OSError:
            continue
        for f in files:
            out.setdefault(f.stem, f)
    return out


def resolve(ref: str, dirs: Optional[Iterable[Path]] = None) -> NetworkSpec:
    """Find and load the spec ``ref`` (a file or a NAME)."""
    return load_spec(find_spec(ref, dirs))


# ---------------------------------------------------------------- validator keys for `network init`

def validator_public_key(ref: str) -> bytes:
    """The Ed25519 public key ``ref`` stands for: a peer ID (``12D3KooW...``,
    as `p2pnet node id` prints: the key is inside it), a node's data
    directory (its node.key), or a key file. Only public keys leave it."""
    from p2pnet.identity import KEY_FILE, IdentityError, load

    path = Path(ref).expanduser()
    if path.is_dir():
        path = path / KEY_FILE
        if not path.exists():
            raise NetworkSpecError(f"validator {ref}: no {KEY_FILE} in that directory "
                                   "(run `p2pnet node id --data-dir DIR` to create one)")
    if path.is_file():
        try:
            return load(path).public_key
        except IdentityError as exc:
            raise NetworkSpecError(f"validator {ref}: {exc}") from None
    try:
        return wire.public_key_from_peer_id(wire.peer_id_bytes(ref))
    except (ValueError, wire.WireError):
        raise NetworkSpecError(f"validator {ref!r}: not a peer ID (12D3KooW...), a node data directory "
                               "or a key file") from None


def genesis_file_for(spec: NetworkSpec, data_dir: Path) -> Path:
    """Write the spec's genesis into ``data_dir/networks/NAME.genesis.json``
    (rewritten only when it differs) and return its path: the ledger reads
    its genesis from a file."""
    from p2pnet.files import write_json_atomic

    path = Path(data_dir) / "networks" / f"{spec.name}.genesis.json"
    want = spec.document()
    try:
        if json.loads(path.read_text()) == want:
            return path
    except (OSError, ValueError):
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, want)
    return path
