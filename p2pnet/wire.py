"""Every message p2pnet puts on the wire, and the signed envelope around it.

Messages are frozen dataclasses. A message encodes to a msgpack *list* of its
fields in declaration order (never a map), so the bytes are canonical: the same
message always packs to the same bytes, which is what gets signed and hashed.

Envelope (msgpack list)::

    [version, kind, sender, seq, ts_ms, body, sig]

``sender`` is the sender's libp2p peer ID in bytes (an Ed25519 identity
multihash, so it carries the public key), ``seq`` a per-sender sequence number
that never repeats (it starts from the wall clock in microseconds), ``ts_ms`` the
sender's wall clock, ``body`` the message's field list and ``sig`` an Ed25519
signature over ``packb([version, kind, sender, seq, ts_ms, body])``.

Decoding enforces a size limit, the envelope form, the message schema (types
and per-message ``validate``), and the signature. Replays and stale messages are
caught by :class:`ReplayGuard`, which a receiver keeps per node.

New fields are appended with a default, so older bodies still decode. The
messages about one query or one announcement (``EXTENSIBLE``) also decode when
a newer node appends fields: those are ignored. Ledger and consensus messages
must match their schema exactly.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import heapq
import time
import types
import typing
from collections import OrderedDict
from dataclasses import dataclass
from typing import ClassVar, Optional, Tuple

import msgpack
from nacl.exceptions import BadSignatureError, CryptoError
from nacl.signing import SigningKey, VerifyKey

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

_PEER_ID_PREFIX = bytes.fromhex("002408011220")  # identity multihash of an Ed25519 key


class WireError(P2PNetError):
    """A message that cannot be accepted; ``reason`` is one of DROP_REASONS."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


# --------------------------------------------------------------------------- keys


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


# ----------------------------------------------------------------------- messages


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


# --- peers and experts


@dataclass(frozen=True)
class ModelCard(Message):
    """What an expert offers: the model, its measured speed, price and load;
    for a knowledge expert also its knowledge base (name, passage count and
    the sha256 of its passages, see p2pnet.experts.knowledge)."""

    KIND: ClassVar[str] = "model_card"
    EXTENSIBLE: ClassVar[bool] = True
    expert_id: str
    model: str
    sha256: str
    quantization: str
    n_ctx: int
    domains: Tuple[str, ...]
    prompt_tps: float
    gen_tps: float
    price_per_1k: float
    load: int
    max_concurrency: int
    backend: str = ""
    gpu_layers: int = 0
    knowledge: str = ""  # the knowledge base's name; "": a bare model
    knowledge_passages: int = 0
    knowledge_sha256: str = ""  # hex sha256 of its passages
    terms: bytes = b""  # a Bloom filter of its knowledge base's terms (p2pnet.experts.domains)
    terms_hashes: int = 0  # bit positions per term in ``terms``

    MAX_KNOWLEDGE_PASSAGES: ClassVar[int] = 1_000_000
    MAX_TERMS_BYTES: ClassVar[int] = 4096

    def validate(self) -> None:
        _check(0 < len(self.expert_id) <= 64, "expert_id length")
        _check(0 < len(self.domains) <= 32, "domains count")
        _check(all(0 < len(d) <= 64 for d in self.domains), "domain length")
        _check(self.price_per_1k >= 0 and self.max_concurrency >= 1 and self.load >= 0, "card numbers")
        _check(len(self.knowledge) <= 64, "knowledge name length")
        _check(0 <= self.knowledge_passages <= self.MAX_KNOWLEDGE_PASSAGES, "knowledge passage count")
        _check(self.knowledge_sha256 == "" or (len(self.knowledge_sha256) == 64 and all(
            c in "0123456789abcdef" for c in self.knowledge_sha256)), "knowledge_sha256 must be 64 hex digits")
        _check(bool(self.knowledge) == bool(self.knowledge_sha256) == (self.knowledge_passages > 0),
               "knowledge name, passage count and sha256 go together")
        _check(len(self.terms) <= self.MAX_TERMS_BYTES, f"terms: more than {self.MAX_TERMS_BYTES} bytes")
        _check(bool(self.terms) == (self.terms_hashes > 0) and 0 <= self.terms_hashes <= 16,
               "terms and terms_hashes (1..16) go together")

    @property
    def voice(self) -> str:
        """What makes two experts copies of one another: the model file and the
        knowledge base it answers with ("sha256" or "sha256+knowledge sha256");
        "" when the card announces no model sha256 (never taken for a copy)."""
        if not self.sha256:
            return ""
        return f"{self.sha256}+{self.knowledge_sha256}" if self.knowledge_sha256 else self.sha256


MAX_ANNOUNCE_TTL_S = 600
"""The longest an announcement may say it stays true (``Announce.ttl_s``)."""

LEGACY_ANNOUNCE_TTL_S = 30
"""How long an announcement without a ``ttl_s`` (an older node's) is kept."""


@dataclass(frozen=True)
class Announce(Message):
    """Where a node listens, what it hosts, and its role. Sent when that
    changes and otherwise every refresh period; true for ``ttl_s`` seconds
    from its envelope's timestamp (0: an older node's, kept
    ``LEGACY_ANNOUNCE_TTL_S``)."""

    KIND: ClassVar[str] = "announce"
    EXTENSIBLE: ClassVar[bool] = True
    addrs: Tuple[str, ...]
    cards: Tuple[ModelCard, ...] = ()
    validator: bool = False
    height: int = 0
    ttl_s: int = 0

    def validate(self) -> None:
        _check(len(self.addrs) <= 16 and all(len(a) <= 256 for a in self.addrs), "addrs")
        _check(len(self.cards) <= 64, "too many cards")
        _check(0 <= self.ttl_s <= MAX_ANNOUNCE_TTL_S, f"ttl_s must be 0..{MAX_ANNOUNCE_TTL_S}")
        for card in self.cards:
            card.validate()

    @property
    def lifetime_s(self) -> int:
        return self.ttl_s or LEGACY_ANNOUNCE_TTL_S


MAX_DIRECTORY_ENTRIES = 512
"""The most announcements one DirectoryReply carries."""

MAX_DIRECTORY_BYTES = 512 * 1024
"""The most bytes of announcements one DirectoryReply carries (its frame is
read with this limit plus room for the envelope)."""

MAX_ANNOUNCE_BYTES = 64 * 1024
"""The largest announcement envelope a DirectoryReply may hold."""


@dataclass(frozen=True)
class DirectoryRequest(Message):
    """Sent over a direct stream by a node that joins, and now and then to
    one peer: "send me the announcements you hold" (with ``domain``: only
    those of experts serving it). ``announce``: the asker's own signed
    Announce envelope, taken as if gossiped (push-pull: a node that does not
    gossip its announcement spreads it this way). The reply is a DirectoryReply."""

    KIND: ClassVar[str] = "directory_request"
    limit: int = MAX_DIRECTORY_ENTRIES
    domain: str = ""
    announce: bytes = b""

    def validate(self) -> None:
        _check(1 <= self.limit <= MAX_DIRECTORY_ENTRIES, "directory request limit")
        _check(len(self.domain) <= 64 and len(self.announce) <= MAX_ANNOUNCE_BYTES, "directory request size")


@dataclass(frozen=True)
class DirectoryReply(Message):
    """The current, unexpired announcements a peer holds: each the original
    signed Announce envelope, checked by the receiver as if gossiped."""

    KIND: ClassVar[str] = "directory_reply"
    announces: Tuple[bytes, ...]

    def validate(self) -> None:
        _check(len(self.announces) <= MAX_DIRECTORY_ENTRIES, "too many announcements")
        _check(all(len(a) <= MAX_ANNOUNCE_BYTES for a in self.announces), "announcement too large")
        _check(sum(len(a) for a in self.announces) <= MAX_DIRECTORY_BYTES, "directory too large")


@dataclass(frozen=True)
class Broadcast(Message):
    """A plain text message, used by the swarm smoke job, tests and benchmarks."""

    KIND: ClassVar[str] = "broadcast"
    text: str
    sent_ns: int = 0
    pad: bytes = b""


@dataclass(frozen=True)
class RpcError(Message):
    """The reply to a direct request that could not be served."""

    KIND: ClassVar[str] = "rpc_error"
    code: str  # busy | bad_request | unsupported | internal
    message: str = ""


@dataclass(frozen=True)
class Ack(Message):
    """The reply to a direct request that needs no other answer."""

    KIND: ClassVar[str] = "ack"
    note: str = ""


@dataclass(frozen=True)
class Flush(Message):
    """Sent over a direct stream by a node that is shutting down: "reply once
    you have my gossip message number ``seq``". The reply is an Ack whose note
    is ``seen`` or ``not_seen``, so the node knows its last messages are out."""

    KIND: ClassVar[str] = "flush"
    seq: int


# --- queries and answers


@dataclass(frozen=True)
class ChatMessage(Message):
    KIND: ClassVar[str] = "chat_message"
    EXTENSIBLE: ClassVar[bool] = True
    role: str
    content: str

    def validate(self) -> None:
        _check(self.role in ("system", "user", "assistant"), f"role {self.role!r}")


@dataclass(frozen=True)
class PromptBody(Message):
    """The plaintext inside a SealedPrompt's box."""

    KIND: ClassVar[str] = "prompt_body"
    EXTENSIBLE: ClassVar[bool] = True
    messages: Tuple[ChatMessage, ...]
    max_tokens: int
    temperature: float = 0.0
    stream: bool = False  # send AnswerChunks as the text is generated

    def validate(self) -> None:
        _check(0 < len(self.messages) <= 256, "message count")
        _check(0 < self.max_tokens <= 32768, "max_tokens")
        _check(0.0 <= self.temperature <= 2.0, "temperature")
        for m in self.messages:
            m.validate()


@dataclass(frozen=True)
class SealedPrompt(Message):
    """A PromptBody encrypted (NaCl box) from the coordinator to one respondent."""

    KIND: ClassVar[str] = "sealed_prompt"
    EXTENSIBLE: ClassVar[bool] = True
    recipient: bytes
    expert_id: str
    box: bytes


@dataclass(frozen=True)
class Query(Message):
    KIND: ClassVar[str] = "query"
    EXTENSIBLE: ClassVar[bool] = True
    query_id: bytes
    domain: str
    deadline_ms: int
    prompts: Tuple[SealedPrompt, ...]

    def validate(self) -> None:
        _check(len(self.query_id) == 16, "query_id must have 16 bytes")
        _check(0 < len(self.prompts) <= 16, "respondent count")


@dataclass(frozen=True)
class AnswerBody(Message):
    """The plaintext inside an Answer's box."""

    KIND: ClassVar[str] = "answer_body"
    EXTENSIBLE: ClassVar[bool] = True
    text: str
    finish_reason: str
    confidence: Optional[float] = None  # the expert's own, in [0, 1]; None: its engine cannot tell
    passages: Tuple[str, ...] = ()  # ids of the knowledge passages the expert put into its prompt

    MAX_PASSAGES: ClassVar[int] = 16

    def validate(self) -> None:
        _check(self.confidence is None or 0.0 <= self.confidence <= 1.0, "confidence must lie in [0, 1]")
        _check(len(self.passages) <= self.MAX_PASSAGES and all(0 < len(p) <= 128 for p in self.passages),
               "passages: at most 16 ids of 1 to 128 characters")


@dataclass(frozen=True)
class Answer(Message):
    """An expert's signed reply. ``answer_hash`` is sha256 of the answer text."""

    KIND: ClassVar[str] = "answer"
    EXTENSIBLE: ClassVar[bool] = True
    query_id: bytes
    expert_id: str
    status: str  # ok | busy | error | cancelled | timeout | rejected (the prompt itself, e.g. too long)
    box: bytes
    answer_hash: bytes
    prompt_tokens: int = 0
    completion_tokens: int = 0
    gen_ms: int = 0
    error: str = ""

    STATUSES: ClassVar[tuple] = ("ok", "busy", "error", "cancelled", "timeout", "rejected")

    def validate(self) -> None:
        _check(len(self.query_id) == 16, "query_id must have 16 bytes")
        _check(self.status in self.STATUSES, f"status {self.status!r}")
        _check(self.status != "ok" or len(self.answer_hash) == 32, "answer_hash")


@dataclass(frozen=True)
class AnswerChunk(Message):
    """Part of an answer while it is generated, sealed to the coordinator and
    sent over a direct stream; the signed Answer still follows."""

    KIND: ClassVar[str] = "answer_chunk"
    EXTENSIBLE: ClassVar[bool] = True
    query_id: bytes
    expert_id: str
    index: int
    box: bytes


@dataclass(frozen=True)
class Cancel(Message):
    KIND: ClassVar[str] = "cancel"
    EXTENSIBLE: ClassVar[bool] = True
    query_id: bytes


# --- ledger

MAX_LEDGER_VALIDATORS = 200
MAX_BLOCK_TXS = 10_000


RATING_SIGNALS = ("probe", "judge", "agreement", "feedback", "failure")
"""What a rating's score rests on. Several signals that scored one answer
together are joined with "+" ("judge+agreement")."""


def signal_parts(signal: str) -> Tuple[str, ...]:
    """The signals named in a Rating's ``signal``; WireError unless each is
    one of RATING_SIGNALS, named once."""
    parts = tuple(signal.split("+"))
    _check(all(p in RATING_SIGNALS for p in parts) and len(set(parts)) == len(parts),
           f"signal must be one of {', '.join(RATING_SIGNALS)}, or several joined by '+'")
    return parts


@dataclass(frozen=True)
class Rating(Message):
    """A coordinator's rating of one answer. As a ledger transaction it travels
    as its signed envelope: the rater is the envelope's sender and the nonce its
    seq."""

    KIND: ClassVar[str] = "rating"
    query_hash: bytes
    respondent: bytes
    expert_id: str
    domain: str
    answer_hash: bytes
    score: float
    signal: str = "agreement"

    def validate(self) -> None:
        _check(len(self.query_hash) == 32 and len(self.answer_hash) in (0, 32), "hash lengths")
        _check(0.0 <= self.score <= 1.0, "score must lie in [0, 1]")
        _check(0 < len(self.domain) <= 64 and len(self.expert_id) <= 64, "domain/expert_id")
        signal_parts(self.signal)
        public_key_from_peer_id(self.respondent)


@dataclass(frozen=True)
class CommitSig(Message):
    KIND: ClassVar[str] = "commit_sig"
    validator: bytes
    signature: bytes

    def validate(self) -> None:
        _check(len(self.validator) == 38 and len(self.signature) == 64, "commit_sig lengths")


@dataclass(frozen=True)
class Commit(Message):
    """Precommits of more than 2/3 of the voting power for one block."""

    KIND: ClassVar[str] = "commit"
    height: int
    round: int
    block_hash: bytes
    sigs: Tuple[CommitSig, ...]

    def validate(self) -> None:
        _check(self.height >= 1 and self.round >= 0, "commit height/round")
        _check(len(self.block_hash) == 32, "commit block_hash")
        _check(0 < len(self.sigs) <= MAX_LEDGER_VALIDATORS, "commit sig count")


@dataclass(frozen=True)
class BlockHeader(Message):
    KIND: ClassVar[str] = "block_header"
    chain_id: str
    height: int
    time_ms: int
    prev_hash: bytes
    proposer: bytes
    tx_root: bytes
    state_hash: bytes
    last_commit_hash: bytes

    def validate(self) -> None:
        _check(0 < len(self.chain_id) <= 64, "chain_id")
        _check(self.height >= 1 and self.time_ms >= 0, "header height/time")
        _check(len(self.prev_hash) == (0 if self.height == 1 else 32), "prev_hash")
        _check(len(self.proposer) == 38, "proposer")
        _check(len(self.tx_root) == 32 and len(self.state_hash) == 32, "tx_root/state_hash")
        _check(len(self.last_commit_hash) == 32, "last_commit_hash")


@dataclass(frozen=True)
class Block(Message):
    KIND: ClassVar[str] = "block"
    header: BlockHeader
    txs: Tuple[bytes, ...]
    last_commit: Optional[Commit] = None

    def hash(self) -> bytes:
        return self.header.digest()

    def validate(self) -> None:
        _check(len(self.txs) <= MAX_BLOCK_TXS, "too many txs")
        _check((self.last_commit is None) == (self.header.height == 1), "last_commit presence")
        _check(self.last_commit is None or self.last_commit.height == self.header.height - 1,
               "last_commit height")


@dataclass(frozen=True)
class Proposal(Message):
    KIND: ClassVar[str] = "proposal"
    height: int
    round: int
    pol_round: int
    block: Block

    def validate(self) -> None:
        _check(self.height >= 1 and self.round >= 0, "proposal height/round")
        _check(-1 <= self.pol_round < self.round, "pol_round")
        _check(self.block.header.height == self.height, "proposal block height")


@dataclass(frozen=True)
class Vote(Message):
    """A prevote (1) or precommit (2). Signed on its own (over
    :meth:`sign_bytes`) because precommits are kept in commits."""

    KIND: ClassVar[str] = "vote"
    chain_id: str
    vote_type: int
    height: int
    round: int
    block_hash: bytes  # b"" is nil
    validator: bytes
    signature: bytes = b""

    def sign_bytes(self) -> bytes:
        return packb([self.chain_id, self.vote_type, self.height, self.round, self.block_hash, self.validator])

    def validate(self) -> None:
        _check(self.vote_type in (1, 2), "vote_type")
        _check(self.height >= 1 and self.round >= 0, "height/round")
        _check(len(self.block_hash) in (0, 32), "block_hash")


@dataclass(frozen=True)
class BlockRequest(Message):
    KIND: ClassVar[str] = "block_request"
    from_height: int
    to_height: int

    def validate(self) -> None:
        _check(1 <= self.from_height <= self.to_height, "block request range")


@dataclass(frozen=True)
class BlockBatch(Message):
    """Blocks for a catching-up node; ``commit`` certifies the last one."""

    KIND: ClassVar[str] = "block_batch"
    blocks: Tuple[Block, ...]
    commit: Optional[Commit] = None

    def validate(self) -> None:
        heights = [b.header.height for b in self.blocks]
        _check(heights == list(range(heights[0], heights[0] + len(heights))) if heights else True,
               "block batch heights must be consecutive")
        _check(not heights or (self.commit is not None and self.commit.height == heights[-1]),
               "block batch commit")


@dataclass(frozen=True)
class Tx(Message):
    """A ledger transaction gossiped to the mempool: a signed envelope."""

    KIND: ClassVar[str] = "tx"
    envelope: bytes


MESSAGE_TYPES: Tuple[type, ...] = (
    Announce, DirectoryRequest, DirectoryReply, Broadcast, RpcError, Ack, Flush, Query, Answer, AnswerChunk,
    Cancel, Rating, Proposal, Vote, BlockRequest, BlockBatch, Tx, Block, Commit,
)
KINDS = types.MappingProxyType({cls.KIND: cls for cls in MESSAGE_TYPES})
"""The message types that may stand alone in an envelope, by KIND."""


# ---------------------------------------------------------------- generic codec


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


# --------------------------------------------------------------------- envelopes


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
