"""Node configuration: defaults, then a TOML file, then command-line flags.

The TOML file uses the same names as the flags (with ``_`` for ``-``)::

    listen = "/ip4/0.0.0.0/tcp/4001"
    bootstrap = ["/ip4/203.0.113.7/tcp/4001/p2p/12D3KooW..."]
    api_port = 8700
    experts = ["model=smollm2-135m,domains=general+geography,price=0.1"]
    validator = false
    genesis = "testnet/genesis.json"
    network = "my-network"        # or a spec file: sets genesis and adds bootstrap (p2pnet.netspec)

Unknown keys and values of the wrong type are errors that name the key.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from p2pnet.errors import P2PNetError
from p2pnet.files import SmallFileError, read_small_text

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


MAX_JUDGES = 16
"""The most experts asked to rank one query's answers (the --judges bound)."""


class ConfigError(P2PNetError):
    """A configuration file or flag has a bad value."""


def default_data_dir() -> Path:
    """``$P2PNET_HOME`` if set, else ``~/.p2pnet``."""
    env = os.environ.get("P2PNET_HOME")
    return Path(env).expanduser() if env else Path.home() / ".p2pnet"


@dataclass(frozen=True)
class NodeConfig:
    data_dir: Path = field(default_factory=default_data_dir)
    listen: tuple = ("/ip4/127.0.0.1/tcp/4001",)
    bootstrap: tuple = ()
    announce_addrs: tuple = ()
    api_host: str = "127.0.0.1"
    api_port: int = 8700
    api_key: Optional[str] = None
    api_allowed_hosts: tuple = ()    # Host names the API answers besides loopback and its own address
    api_allowed_origins: tuple = ()  # web origins allowed to call the API (none by default)
    experts: tuple = ()
    model_store: Optional[Path] = None  # models live in <model_store>/models; default: data_dir
    no_experts: bool = False
    threads: int = 0
    gpu_layers: int = 0
    validator: bool = False
    genesis: Optional[Path] = None
    # a network spec (file or NAME, p2pnet.netspec): with_network() adds its bootstrap addresses and
    # makes its genesis the node's; afterwards it holds the network's name
    network: Optional[str] = None
    dht: bool = False  # also find peers by ID through a Kademlia DHT (p2pnet.gossip.dht)
    # An announcement is true for announce_ttl_s; a node re-announces when its cards or role change (at most
    # once per announce_min_gap_s) and otherwise every announce_interval_s (the refresh period, ttl/3).
    announce_interval_s: float = 30.0
    announce_ttl_s: float = 90.0
    announce_min_gap_s: float = 3.0
    # connections kept: below conn_low the node dials known peers; above conn_high it closes the least
    # useful back down to conn_low (docs/benchmarks.md, "Scale")
    conn_low: int = 8
    conn_high: int = 16
    judges: int = 0  # experts asked to rank each query's answers (peer judging); 0 = off
    probe_interval_s: float = -1.0  # seconds between probe queries; -1 = every 300 s on validators, else off
    # a single answer whose own confidence (exp of its tokens' mean log-probability) is below this gets a
    # second expert; 0.6 escalates 28% of the default model's answers, 74% of them wrong (bench/cascade.py)
    escalate_below: float = 0.6
    # how much a price (per 1k tokens) counts against an expert's sampled quality when choosing
    # respondents: 0 ignores price; docs/results.md's cost scenarios start at 0.02 and keep a budget (below)
    cost_weight: float = 0.01
    # spend this much per query on average (the prices per 1k tokens of the experts a query asks, summed;
    # probes included): cost_weight becomes a starting point the node moves to keep it
    # (p2pnet.experts.budget); 0 = off
    budget: float = 0.0
    log_level: str = "info"
    max_message_bytes: int = 1 << 20
    # NAT traversal (p2pnet.gossip.relay, docs/testnet.md "NAT traversal"): serve as a relay
    # (auto: while public; on; off) within these limits; nodes behind NAT hold want_relays reservations
    nat_traversal: bool = True  # false: none of the below (no reachability check, relays, DCUtR)
    relay: str = "auto"
    relay_max_reservations: int = 64
    relay_max_circuits: int = 32
    relay_max_circuit_bytes: int = 64 << 20
    relay_max_circuit_s: int = 1800
    relay_reservation_ttl_s: int = 900
    want_relays: int = 2
    hole_punch: bool = True
    announce_private: bool = False  # announce RFC 1918 / CGNAT addresses (a LAN-only network)

    def validate(self) -> "NodeConfig":
        import multiaddr

        for key in ("listen", "bootstrap", "announce_addrs"):
            for addr in getattr(self, key):
                try:
                    multiaddr.Multiaddr(addr)
                except Exception as exc:
                    raise ConfigError(f"{key}: {addr!r} is not a multiaddr ({exc})") from None
        from p2pnet.gossip.listen import ListenAddrError, parse_listen_addr

        for addr in self.listen:
            try:
                parse_listen_addr(addr)  # the form only; whether it can be bound is checked at start
            except ListenAddrError as exc:
                raise ConfigError(str(exc)) from None  # "listen address ...: why; use ..."
        for addr in self.bootstrap:
            if "/p2p/" not in addr:
                raise ConfigError(f"bootstrap: {addr!r} must end in /p2p/<peer id>")
        if not 0 <= self.api_port <= 65535:
            raise ConfigError(f"api_port: {self.api_port} is not a TCP port")
        from p2pnet.api.server import is_loopback

        if not is_loopback(self.api_host) and not self.api_key:
            raise ConfigError(
                f"api_host: binding the API to {self.api_host} needs an api_key "
                "(flag --api-key or $P2PNET_API_KEY)"
            )
        from p2pnet.api.guard import RequestGuard

        try:
            RequestGuard(self.api_host, self.api_allowed_hosts, self.api_allowed_origins)
        except ValueError as exc:
            raise ConfigError(f"api_allowed_hosts/api_allowed_origins: {exc}") from None
        if self.validator and self.genesis is None and self.network is None:
            raise ConfigError("validator: a validator needs --network NAME|FILE or --genesis FILE")
        if self.log_level not in ("debug", "info", "warning", "error"):
            raise ConfigError(f"log_level: {self.log_level!r} is not debug/info/warning/error")
        if not 0 <= self.judges <= MAX_JUDGES:
            raise ConfigError(f"judges: {self.judges} is not between 0 and {MAX_JUDGES}")
        if not 0.0 <= self.escalate_below <= 1.0:
            raise ConfigError(f"escalate_below: {self.escalate_below} is not between 0 and 1")
        if not 0.0 <= self.cost_weight <= 1.0:
            raise ConfigError(f"cost_weight: {self.cost_weight} is not between 0 and 1")
        if not (0.0 <= self.budget < float("inf")):
            raise ConfigError(f"budget: {self.budget} is not a price of 0 or more")
        if self.budget and not self.cost_weight:
            raise ConfigError("budget: a budget moves cost_weight, which is 0 (price-blind); set cost_weight above 0")
        from p2pnet.wire import MAX_ANNOUNCE_TTL_S

        if not 1 <= self.announce_ttl_s <= MAX_ANNOUNCE_TTL_S:
            raise ConfigError(f"announce_ttl_s: {self.announce_ttl_s} is not between 1 and {MAX_ANNOUNCE_TTL_S}")
        if not 0 < self.announce_interval_s <= self.announce_ttl_s / 2:
            raise ConfigError(f"announce_interval_s: {self.announce_interval_s} must be above 0 and at most "
                              f"half of announce_ttl_s ({self.announce_ttl_s})")
        if self.announce_min_gap_s < 0:
            raise ConfigError(f"announce_min_gap_s: {self.announce_min_gap_s} must not be negative")
        if not 1 <= self.conn_low <= self.conn_high:
            raise ConfigError(f"conn_low/conn_high: need 1 <= conn_low ({self.conn_low}) <= conn_high "
                              f"({self.conn_high})")
        if self.relay not in ("auto", "on", "off"):
            raise ConfigError(f"relay: {self.relay!r} is not auto, on or off")
        for key in ("relay_max_reservations", "relay_max_circuits", "relay_max_circuit_bytes",
                    "relay_max_circuit_s", "relay_reservation_ttl_s"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key}: {getattr(self, key)} must be at least 1")
        if not 0 <= self.want_relays <= 8:
            raise ConfigError(f"want_relays: {self.want_relays} is not between 0 and 8")
        if self.threads < 0 or self.gpu_layers < 0:
            raise ConfigError("threads/gpu_layers must not be negative")
        return self


_TYPES = {f.name: f for f in dataclasses.fields(NodeConfig)}


def _coerce(key: str, value: Any) -> Any:
    default = _TYPES[key].default
    if key in ("data_dir", "genesis", "model_store"):
        if isinstance(value, Path):
            return value
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a path string")
        return Path(value).expanduser()
    if isinstance(default, tuple):
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{key}: expected a list of strings")
        return tuple(value)
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number")
        return float(value)
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer")
        return value
    if value is not None and not isinstance(value, str):
        raise ConfigError(f"{key}: expected a string")
    return value


def load_file(path: Path) -> dict:
    try:
        raw = tomllib.loads(read_small_text(path, "a TOML config file"))
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"config file {path}: {exc.strerror or exc}") from None
    except SmallFileError as exc:
        raise ConfigError(f"config file {path} {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: {exc}") from None
    out = {}
    for key, value in raw.items():
        if key not in _TYPES:
            raise ConfigError(f"config file {path}: unknown key {key!r}")
        out[key] = _coerce(key, value)
    return out


def nat_settings(cfg: NodeConfig):
    """The NAT-traversal part of ``cfg`` (p2pnet.gossip.relay.NatSettings);
    None when ``nat_traversal`` is off."""
    from p2pnet.gossip.relay import NatSettings

    if not cfg.nat_traversal:
        return None

    return NatSettings(relay=cfg.relay, relay_max_reservations=cfg.relay_max_reservations,
                       relay_max_circuits=cfg.relay_max_circuits,
                       relay_max_circuit_bytes=cfg.relay_max_circuit_bytes,
                       relay_max_circuit_s=cfg.relay_max_circuit_s,
                       relay_reservation_ttl_s=cfg.relay_reservation_ttl_s, want_relays=cfg.want_relays,
                       hole_punch=cfg.hole_punch, announce_private=cfg.announce_private)


def with_network(cfg: NodeConfig) -> NodeConfig:
    """``cfg`` joined to the network ``cfg.network`` names (a spec file or
    NAME): the spec's bootstrap addresses come after any --bootstrap ones,
    and its genesis (written into the data dir) becomes the node's. A
    --genesis of another chain is an error; NetworkSpecError names a bad spec."""
    if cfg.network is None:
        return cfg
    from p2pnet import netspec

    spec = netspec.resolve(cfg.network)
    genesis = cfg.genesis
    if genesis is not None:
        from p2pnet.consensus import load_genesis

        if load_genesis(genesis).hash() != spec.genesis.hash():
            raise ConfigError(f"genesis: {genesis} is not the genesis of network {spec.name} "
                              f"({spec.source}); drop --genesis, --network brings its own")
    else:
        genesis = netspec.genesis_file_for(spec, cfg.data_dir)
    bootstrap = tuple(dict.fromkeys([*cfg.bootstrap, *spec.bootstrap]))
    return dataclasses.replace(cfg, genesis=genesis, bootstrap=bootstrap, network=spec.name)


def build(config_file: Optional[Path] = None, **flags: Any) -> NodeConfig:
    """Defaults < config file < flags (flags that are None/empty are unset)."""
    values: dict = {}
    if config_file is not None:
        values.update(load_file(Path(config_file)))
    for key, value in flags.items():
        if key not in _TYPES:
            raise ConfigError(f"unknown setting {key!r}")
        if value is None or value == () or value == []:
            continue
        values[key] = _coerce(key, list(value) if isinstance(value, tuple) else value)
    if "api_key" not in values and os.environ.get("P2PNET_API_KEY"):
        values["api_key"] = os.environ["P2PNET_API_KEY"]
    return NodeConfig(**values).validate()
