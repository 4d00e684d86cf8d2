"""How a wire message encodes: the limits, the drop reasons, the error, the
canonical msgpack codec and the :class:`Message` base every message type
extends (see the package doc for the format)."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import typing
from dataclasses import dataclass
from typing import ClassVar

import msgpack

from p2pnet.errors import P2PNetError

WIRE_VERSION = 1
MAX_MESSAGE_BYTES = 1 << 20
"""Default limit for one encoded envelope (1 MiB)."""

MAX_STALENESS_MS = 120_000
"""Messages stamped further than this from the receiver's clock are stale."""

# Reasons a message is dropped; they key the per-peer "dropped" counters.
MALFORMED = "malformed"
OVERSIZED = "oversized"
BAD_SIGNATURE = "bad_signature"
UNKNOWN_TYPE = "unknown_type"
REPLAYED = "replayed"
STALE = "stale"
SCHEMA = "schema"
DROP_REASONS = (MALFORMED, OVERSIZED, BAD_SIGNATURE, UNKNOWN_TYPE, REPLAYED, STALE, SCHEMA)


class WireError(P2PNetError):
    """A message that cannot be accepted; ``reason`` is one of DROP_REASONS."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Message:
    """Base of all wire messages. ``KIND`` names the type on the wire."""

    KIND: ClassVar[str] = ""
    EXTENSIBLE: ClassVar[bool] = False
    """Decoding ignores trailing fields it does not know (a newer version's
    additions), so adding a defaulted field does not cut older nodes off.
    Only for messages about one query or one announcement; ledger and
    consensus messages stay exact, since every validator must read them alike."""

    def validate(self) -> None:
        """Semantic checks beyond the field types; raise WireError(SCHEMA)."""

    def to_obj(self) -> list:
        return _to_obj(self, type(self))

    @classmethod
    def from_obj(cls, obj: object):
        return _from_obj(obj, cls)

    def pack(self) -> bytes:
        """Canonical msgpack bytes of the message alone (for hashing)."""
        return packb(self.to_obj())

    @classmethod
    def unpack(cls, data: bytes):
        try:
            obj = unpackb(data)
        except WireError:
            raise
        return cls.from_obj(obj)

    def digest(self) -> bytes:
        return hashlib.sha256(self.pack()).digest()


def _check(cond: bool, detail: str) -> None:
    if not cond:
        raise WireError(SCHEMA, detail)


def packb(obj: object) -> bytes:
    return msgpack.packb(obj, use_bin_type=True, strict_types=True)


def unpackb(data: bytes, max_bytes: int = MAX_MESSAGE_BYTES) -> object:
    if len(data) > max_bytes:
        raise WireError(OVERSIZED, f"{len(data)} bytes > {max_bytes}")
    try:
        return msgpack.unpackb(
            data, raw=False, strict_map_key=True, use_list=True)
    except (msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, ValueError, TypeError) as exc:
        raise WireError(MALFORMED, f"not msgpack ({type(exc).__name__})") from None
    except Exception as exc:  # msgpack raises a few odd types on hostile input
        raise WireError(MALFORMED, f"not msgpack ({type(exc).__name__})") from None


@functools.lru_cache(maxsize=None)
def _fields(cls: type) -> tuple:
    hints = typing.get_type_hints(cls)
    return tuple((f.name, hints[f.name]) for f in dataclasses.fields(cls))


def _to_obj(value, tp):
    origin = typing.get_origin(tp)
    if origin is typing.Union:
        if value is None:
            return None
        (inner,) = [a for a in typing.get_args(tp) if a is not type(None)]
        return _to_obj(value, inner)
    if origin is tuple:
        (inner, _ell) = typing.get_args(tp)
        return [_to_obj(v, inner) for v in value]
    if dataclasses.is_dataclass(tp):
        return [_to_obj(getattr(value, name), ftp) for name, ftp in _fields(tp)]
    if tp is float:
        return float(value)
    return value


_SCALARS = {int: (int,), float: (float, int), str: (str,), bytes: (bytes,), bool: (bool,)}


def _from_obj(obj, tp, where: str = ""):
    origin = typing.get_origin(tp)
    if origin is typing.Union:
        if obj is None:
            return None
        (inner,) = [a for a in typing.get_args(tp) if a is not type(None)]
        return _from_obj(obj, inner, where)
    if origin is tuple:
        (inner, _ell) = typing.get_args(tp)
        if not isinstance(obj, list):
            raise WireError(SCHEMA, f"{where or 'value'}: expected a list")
        return tuple(_from_obj(v, inner, f"{where}[{i}]") for i, v in enumerate(obj))
    if dataclasses.is_dataclass(tp):
        fields = _fields(tp)
        if not isinstance(obj, list):
            raise WireError(SCHEMA, f"{tp.KIND}: expected a field list")
        required = sum(
            1 for f in dataclasses.fields(tp)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        )
        if len(obj) < required or (len(obj) > len(fields) and not tp.EXTENSIBLE):
            raise WireError(SCHEMA, f"{tp.KIND}: {len(obj)} fields, expected {required}..{len(fields)}")
        kwargs = {
            name: _from_obj(v, ftp, f"{tp.KIND}.{name}") for (name, ftp), v in zip(fields, obj)
        }
        msg = tp(**kwargs)
        msg.validate()
        return msg
    allowed = _SCALARS.get(tp)
    if allowed is None:
        raise TypeError(f"unsupported field type {tp!r}")
    # bool is an int subclass: keep them apart both ways.
    if isinstance(obj, bool) != (tp is bool) or not isinstance(obj, allowed):
        raise WireError(SCHEMA, f"{where}: expected {tp.__name__}, got {type(obj).__name__}")
    return float(obj) if tp is float else obj

