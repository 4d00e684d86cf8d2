"""The signed envelope around a message, its signer and its checks:
decoding (:func:`open_envelope`) and replays (:class:`ReplayGuard`)."""

from __future__ import annotations

import hashlib
import heapq
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Optional

from nacl.exceptions import BadSignatureError, CryptoError
from nacl.signing import SigningKey, VerifyKey

from p2pnet.wire.codec import (BAD_SIGNATURE, MALFORMED, MAX_MESSAGE_BYTES, MAX_STALENESS_MS, REPLAYED, SCHEMA,
                               STALE, UNKNOWN_TYPE, WIRE_VERSION, Message, WireError, packb, unpackb)
from p2pnet.wire.keys import peer_id_from_public_key, peer_id_str, public_key_from_peer_id
from p2pnet.wire.messages import KINDS


@dataclass(frozen=True)
class Envelope:
    """A decoded, signature-checked message and who sent it."""

    kind: str
    sender: bytes
    seq: int
    ts_ms: int
    message: Message
    raw: bytes

    @property
    def sender_str(self) -> str:
        return peer_id_str(self.sender)

    def message_id(self) -> bytes:
        return hashlib.sha256(self.raw).digest()


def _signed_part(kind: str, sender: bytes, seq: int, ts_ms: int, body: list) -> bytes:
    return packb([WIRE_VERSION, kind, sender, seq, ts_ms, body])


class Signer:
    """Signs messages as one node. ``seq`` starts from the wall clock in
    microseconds so it keeps growing across restarts."""

    def __init__(self, seed: bytes, clock=time.time) -> None:
        self.signing_key = SigningKey(seed)
        self.public_key = self.signing_key.verify_key.encode()
        self.peer_id = peer_id_from_public_key(self.public_key)
        self._clock = clock
        self._seq = int(clock() * 1_000_000)
        self.last_seq = 0
        """The seq of the envelope ``seal`` made last."""

    def next_seq(self) -> int:
        self._seq = max(self._seq + 1, int(self._clock() * 1_000_000))
        return self._seq

    def sign_bytes(self, data: bytes) -> bytes:
        return self.signing_key.sign(data).signature

    def seal(self, message: Message, ts_ms: Optional[int] = None) -> bytes:
        """Encode and sign ``message`` in an envelope."""
        if type(message).KIND not in KINDS:
            raise TypeError(f"{type(message).__name__} cannot stand alone in an envelope")
        seq = self.last_seq = self.next_seq()
        ts = int(self._clock() * 1000) if ts_ms is None else ts_ms
        body = message.to_obj()
        sig = self.sign_bytes(_signed_part(message.KIND, self.peer_id, seq, ts, body))
        return packb([WIRE_VERSION, message.KIND, self.peer_id, seq, ts, body, sig])


def verify_signature(public_key: bytes, data: bytes, signature: bytes) -> bool:
    try:
        VerifyKey(public_key).verify(data, signature)
        return True
    except (BadSignatureError, CryptoError, ValueError, TypeError):
        return False


def open_envelope(data: bytes, max_bytes: int = MAX_MESSAGE_BYTES) -> Envelope:
    """Decode and check one envelope: size, form, schema, signature.

    Replay and staleness are the caller's to check (see ReplayGuard), since
    they need the receiver's state and clock."""
    if not isinstance(data, (bytes, bytearray)):
        raise WireError(MALFORMED, "not bytes")
    obj = unpackb(bytes(data), max_bytes)
    if not isinstance(obj, list) or len(obj) != 7:
        raise WireError(MALFORMED, "envelope must be a 7-element list")
    version, kind, sender, seq, ts_ms, body, sig = obj
    if version != WIRE_VERSION:
        raise WireError(MALFORMED, f"unsupported wire version {version!r}")
    for name, value, want in (("kind", kind, str), ("sender", sender, bytes), ("seq", seq, int),
                              ("ts_ms", ts_ms, int), ("body", body, list), ("sig", sig, bytes)):
        if type(value) is not want:
            raise WireError(MALFORMED, f"envelope field {name} is {type(value).__name__}, not {want.__name__}")
    cls = KINDS.get(kind)
    if cls is None:
        raise WireError(UNKNOWN_TYPE, f"unknown message type {kind[:40]!r}")
    public_key = public_key_from_peer_id(sender)
    if len(sig) != 64 or not verify_signature(public_key, _signed_part(kind, sender, seq, ts_ms, body), sig):
        raise WireError(BAD_SIGNATURE, f"bad signature on {kind} from {peer_id_str(sender)[:16]}")
    try:
        message = cls.from_obj(body)
    except WireError:
        raise
    except (TypeError, ValueError, OverflowError) as exc:
        raise WireError(SCHEMA, f"{kind}: {exc}") from None
    return Envelope(kind, sender, seq, ts_ms, message, bytes(data))


class ReplayGuard:
    """Per-receiver replay and staleness check.

    For each of at most ``max_senders`` senders (least recently seen evicted)
    it remembers the last ``window`` sequence numbers seen, and a floor: the
    highest seq it has forgotten. A seq at or below the floor, or already
    seen, is a replay. Messages may arrive out of order, as gossip does, as
    long as fewer than ``window`` later ones came first. Timestamps further
    than ``max_staleness_ms`` from the receiver's clock are stale.
    """

    def __init__(self, window: int = 4096, max_senders: int = 10_000,
                 max_staleness_ms: int = MAX_STALENESS_MS) -> None:
        self.window = window
        self.max_senders = max_senders
        self.max_staleness_ms = max_staleness_ms
        self._senders: "OrderedDict[bytes, list]" = OrderedDict()  # sender -> [floor, set, heap]

    def has_seen(self, sender: bytes, seq: int) -> bool:
        """Whether ``seq`` from ``sender`` passed ``check``, or is below the
        window (then it can no longer be told apart from one that did)."""
        entry = self._senders.get(sender)
        return entry is not None and (seq <= entry[0] or seq in entry[1])

    def check(self, env: Envelope, now_ms: int) -> None:
        if abs(now_ms - env.ts_ms) > self.max_staleness_ms:
            raise WireError(STALE, f"timestamp {env.ts_ms} is {now_ms - env.ts_ms} ms off")
        entry = self._senders.get(env.sender)
        if entry is None:
            entry = self._senders[env.sender] = [-1, set(), []]
        floor, seen, heap = entry
        if env.seq <= floor or env.seq in seen:
            raise WireError(REPLAYED, f"seq {env.seq} from {env.sender_str[:16]} already seen")
        seen.add(env.seq)
        heapq.heappush(heap, env.seq)
        if len(heap) > self.window:
            oldest = heapq.heappop(heap)
            seen.discard(oldest)
            entry[0] = max(floor, oldest)
        self._senders.move_to_end(env.sender)
        while len(self._senders) > self.max_senders:
            self._senders.popitem(last=False)
