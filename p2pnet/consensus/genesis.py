"""The genesis: chain id, validator set and chain parameters, as JSON.

Format (all keys required except ``params`` members, which default)::

    {"chain_id": "p2pnet-local", "genesis_time_ms": 0,
     "validators": [{"peer_id": "12D3KooW...", "pub_key": "<64 hex>", "power": 10}],
     "params": {"timeout_propose_ms": 1000, ...}}
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence, Tuple

from p2pnet import wire
from p2pnet.consensus.errors import GenesisError
from p2pnet.files import SmallFileError, read_small_text

MAX_TOTAL_POWER = 100_000
MAX_VALIDATORS = 200
MAX_SIGNAL_WEIGHT = 10_000_000


@dataclass(frozen=True)
class Params:
    """Chain parameters. Times in milliseconds; reputation numbers fixed point (1e6 = 1.0)."""

    timeout_propose_ms: int = 1000
    timeout_propose_delta_ms: int = 500
    timeout_prevote_ms: int = 500
    timeout_prevote_delta_ms: int = 250
    timeout_precommit_ms: int = 500
    timeout_precommit_delta_ms: int = 250
    timeout_commit_ms: int = 0
    create_empty_blocks_interval_ms: int = 30_000
    max_clock_drift_ms: int = 10_000
    max_block_txs: int = 500
    max_tx_bytes: int = 1024
    # reputation (see docs/reputation.md)
    max_ratings_per_rater_per_block: int = 16
    prior_alpha: int = 1_000_000
    prior_beta: int = 1_000_000
    newcomer_weight: int = 50_000
    newcomer_pool_cap: int = 2_000_000
    max_rater_weight: int = 500_000
    validator_weight: int = 1_000_000
    standing_half_evidence: int = 10_000_000
    pair_cap: int = 3_000_000
    decay_epoch_blocks: int = 1000
    decay_per_epoch_ppm: int = 990_000
    # how much a rating counts, by the signal it rests on (a rating naming
    # several signals counts as the heaviest of them)
    weight_probe_ppm: int = 1_000_000
    weight_judge_ppm: int = 1_000_000
    weight_agreement_ppm: int = 1_000_000
    weight_feedback_ppm: int = 1_000_000
    weight_failure_ppm: int = 1_000_000

    def validate(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if type(v) is not int or v < 0:
                raise GenesisError(f"params.{f.name}: expected a non-negative integer, got {v!r}")
        for name in ("max_block_txs", "max_tx_bytes", "max_ratings_per_rater_per_block",
                     "decay_epoch_blocks", "prior_alpha", "prior_beta", "timeout_propose_ms",
                     "timeout_prevote_ms", "timeout_precommit_ms", "standing_half_evidence"):
            if getattr(self, name) == 0:
                raise GenesisError(f"params.{name}: must be positive")
        if self.max_block_txs * self.max_tx_bytes > 768 * 1024:
            raise GenesisError("params.max_block_txs: max_block_txs * max_tx_bytes must stay under 768 KiB "
                               "(a block must fit one wire message)")
        if self.decay_per_epoch_ppm > 1_000_000:
            raise GenesisError("params.decay_per_epoch_ppm: at most 1000000")
        for name in ("newcomer_weight", "max_rater_weight", "validator_weight"):
            if getattr(self, name) > 1_000_000:
                raise GenesisError(f"params.{name}: at most 1000000 (1.0)")
        for signal in wire.RATING_SIGNALS:
            if self.signal_weight(signal) > MAX_SIGNAL_WEIGHT:
                raise GenesisError(f"params.weight_{signal}_ppm: at most {MAX_SIGNAL_WEIGHT} "
                                   f"({MAX_SIGNAL_WEIGHT // 1_000_000}.0)")

    def signal_weight(self, signal: str) -> int:
        """How much a rating resting on ``signal`` counts (fixed point, 1e6 = 1.0)."""
        return max(getattr(self, f"weight_{part}_ppm") for part in wire.signal_parts(signal))

    def timeout_ms(self, step: str, round_: int) -> int:
        base = getattr(self, f"timeout_{step}_ms")
        return base + round_ * getattr(self, f"timeout_{step}_delta_ms")


@dataclass(frozen=True)
class Validator:
    peer_id: bytes
    pub_key: bytes
    power: int

    @property
    def peer_id_text(self) -> str:
        return wire.peer_id_str(self.peer_id)


@dataclass(frozen=True)
class Genesis:
    chain_id: str
    genesis_time_ms: int
    validators: Tuple[Validator, ...]
    params: Params

    def to_json_obj(self) -> dict:
        return {
            "chain_id": self.chain_id,
            "genesis_time_ms": self.genesis_time_ms,
            "validators": [
                {"peer_id": v.peer_id_text, "pub_key": v.pub_key.hex(), "power": v.power}
                for v in self.validators
            ],
            "params": dataclasses.asdict(self.params),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_json_obj(), indent=2, sort_keys=False) + "\n"

    def canonical_bytes(self) -> bytes:
        return json.dumps(self.to_json_obj(), sort_keys=True, separators=(",", ":")).encode()

    def hash(self) -> bytes:
        return hashlib.sha256(self.canonical_bytes()).digest()


def _require(obj: dict, key: str, kind, where: str = ""):
    if key not in obj:
        raise GenesisError(f"{where}{key}: missing")
    value = obj[key]
    if kind is int and (type(value) is not int):
        raise GenesisError(f"{where}{key}: expected an integer, got {value!r}")
    if kind is not int and not isinstance(value, kind):
        raise GenesisError(f"{where}{key}: expected {kind.__name__}, got {type(value).__name__}")
    return value


def genesis_from_obj(obj: object) -> Genesis:
    """Check and convert a decoded genesis JSON object."""
    if not isinstance(obj, dict):
        raise GenesisError("genesis: expected a JSON object")
    unknown = set(obj) - {"chain_id", "genesis_time_ms", "validators", "params", "comment"}
    if unknown:
        raise GenesisError(f"{sorted(unknown)[0]}: unknown key")
    chain_id = _require(obj, "chain_id", str)
    if not 0 < len(chain_id) <= 64:
        raise GenesisError("chain_id: must have 1..64 characters")
    genesis_time_ms = _require(obj, "genesis_time_ms", int)
    if genesis_time_ms < 0:
        raise GenesisError("genesis_time_ms: must not be negative")
    raw_vals = _require(obj, "validators", list)
    if not 0 < len(raw_vals) <= MAX_VALIDATORS:
        raise GenesisError(f"validators: need 1..{MAX_VALIDATORS} entries")
    validators = []
    for i, rv in enumerate(raw_vals):
        where = f"validators[{i}]."
        if not isinstance(rv, dict):
            raise GenesisError(f"validators[{i}]: expected an object")
        pid_text = _require(rv, "peer_id", str, where)
        pk_hex = _require(rv, "pub_key", str, where)
        power = _require(rv, "power", int, where)
        try:
            pub_key = bytes.fromhex(pk_hex)
            if len(pub_key) != 32:
                raise ValueError
        except ValueError:
            raise GenesisError(f"{where}pub_key: expected 64 hex digits") from None
        try:
            peer_id = wire.peer_id_bytes(pid_text)
        except (ValueError, wire.WireError):
            raise GenesisError(f"{where}peer_id: not an Ed25519 peer ID") from None
        if wire.peer_id_from_public_key(pub_key) != peer_id:
            raise GenesisError(f"{where}peer_id: does not match pub_key")
        if power <= 0:
            raise GenesisError(f"{where}power: must be positive")
        validators.append(Validator(peer_id, pub_key, power))
    if len({v.peer_id for v in validators}) != len(validators):
        raise GenesisError("validators: duplicate peer_id")
    if sum(v.power for v in validators) > MAX_TOTAL_POWER:
        raise GenesisError(f"validators: total power above {MAX_TOTAL_POWER}")
    raw_params = obj.get("params", {})
    if not isinstance(raw_params, dict):
        raise GenesisError("params: expected an object")
    names = {f.name for f in dataclasses.fields(Params)}
    for key in raw_params:
        if key not in names:
            raise GenesisError(f"params.{key}: unknown key")
    params = Params(**raw_params)
    params.validate()
    validators.sort(key=lambda v: v.peer_id)
    return Genesis(chain_id, genesis_time_ms, tuple(validators), params)


def genesis_from_json(text: str | bytes) -> Genesis:
    try:
        obj = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise GenesisError(f"genesis: not JSON ({exc})") from None
    return genesis_from_obj(obj)


def load_genesis(path: str | Path) -> Genesis:
    """Read and check a genesis file; GenesisError naming the bad key."""
    try:
        text = read_small_text(path, "a genesis file")
    except OSError as exc:
        raise GenesisError(f"genesis {path}: {exc.strerror or exc}") from None
    except SmallFileError as exc:
        raise GenesisError(f"genesis {path} {exc}") from None
    return genesis_from_json(text)


def generate_genesis(
    public_keys: Sequence[bytes],
    powers: Optional[Iterable[int]] = None,
    chain_id: str = "p2pnet-local",
    genesis_time_ms: Optional[int] = None,
    params: Optional[Params] = None,
) -> Genesis:
    """A genesis for the given validator public keys (32-byte Ed25519 keys).

    Write it with ``Path(p).write_text(genesis.to_json())``."""
    powers = list(powers) if powers is not None else [10] * len(public_keys)
    if len(powers) != len(public_keys):
        raise GenesisError("validators: one power per public key")
    obj = {
        "chain_id": chain_id,
        "genesis_time_ms": int(time.time() * 1000) if genesis_time_ms is None else genesis_time_ms,
        "validators": [
            {"peer_id": wire.peer_id_str(wire.peer_id_from_public_key(bytes(pk))), "pub_key": bytes(pk).hex(),
             "power": p}
            for pk, p in zip(public_keys, powers)
        ],
        "params": dataclasses.asdict(params or Params()),
    }
    return genesis_from_obj(obj)
