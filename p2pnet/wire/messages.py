"""The message types: peers and experts, queries and answers, the ledger.
Each is a frozen dataclass that encodes to the list of its fields
(:mod:`p2pnet.wire.codec`); :data:`KINDS` names the ones an envelope may carry."""

from __future__ import annotations

import types
from dataclasses import dataclass
from typing import ClassVar, Optional, Tuple

from p2pnet.wire.codec import Message, _check, packb
from p2pnet.wire.keys import public_key_from_peer_id


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

