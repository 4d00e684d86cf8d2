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

The package: :mod:`~p2pnet.wire.codec` (the codec, limits and the
:class:`Message` base), :mod:`~p2pnet.wire.keys` (peer IDs),
:mod:`~p2pnet.wire.messages` (every message type) and
:mod:`~p2pnet.wire.envelope` (signing, decoding, replays). Everything is
imported here: ``from p2pnet import wire`` then ``wire.Query``.
"""

from p2pnet.wire.codec import (
    BAD_SIGNATURE, DROP_REASONS, MALFORMED, MAX_MESSAGE_BYTES, MAX_STALENESS_MS, OVERSIZED, REPLAYED, SCHEMA,
    STALE, UNKNOWN_TYPE, WIRE_VERSION, Message, WireError, packb, unpackb)
from p2pnet.wire.keys import (
    b58decode, b58encode, peer_id_bytes, peer_id_from_public_key, peer_id_str, public_key_from_peer_id)
from p2pnet.wire.messages import (
    KINDS, LEGACY_ANNOUNCE_TTL_S, MAX_ANNOUNCE_BYTES, MAX_ANNOUNCE_TTL_S, MAX_BLOCK_TXS, MAX_DIRECTORY_BYTES,
    MAX_DIRECTORY_ENTRIES, MAX_LEDGER_VALIDATORS, MESSAGE_TYPES, RATING_SIGNALS, Ack, Announce, Answer,
    AnswerBody, AnswerChunk, Block, BlockBatch, BlockHeader, BlockRequest, Broadcast, Cancel, ChatMessage,
    Commit, CommitSig, DirectoryReply, DirectoryRequest, Flush, ModelCard, PromptBody, Proposal, Query,
    Rating, RpcError, SealedPrompt, Tx, Vote, signal_parts)
from p2pnet.wire.envelope import (
    Envelope, ReplayGuard, Signer, open_envelope, verify_signature)

__all__ = [  # what the package holds (the submodules' public names)
    "WIRE_VERSION", "MAX_MESSAGE_BYTES", "MAX_STALENESS_MS", "MALFORMED", "OVERSIZED", "BAD_SIGNATURE",
    "UNKNOWN_TYPE", "REPLAYED", "STALE", "SCHEMA", "DROP_REASONS", "WireError", "Message", "packb", "unpackb",
    "peer_id_from_public_key", "public_key_from_peer_id", "b58encode", "b58decode", "peer_id_str",
    "peer_id_bytes", "ModelCard", "MAX_ANNOUNCE_TTL_S", "LEGACY_ANNOUNCE_TTL_S", "Announce",
    "MAX_DIRECTORY_ENTRIES", "MAX_DIRECTORY_BYTES", "MAX_ANNOUNCE_BYTES", "DirectoryRequest",
    "DirectoryReply", "Broadcast", "RpcError", "Ack", "Flush", "ChatMessage", "PromptBody", "SealedPrompt",
    "Query", "AnswerBody", "Answer", "AnswerChunk", "Cancel", "MAX_LEDGER_VALIDATORS", "MAX_BLOCK_TXS",
    "RATING_SIGNALS", "signal_parts", "Rating", "CommitSig", "Commit", "BlockHeader", "Block", "Proposal",
    "Vote", "BlockRequest", "BlockBatch", "Tx", "MESSAGE_TYPES", "KINDS", "Envelope", "Signer",
    "verify_signature", "open_envelope", "ReplayGuard"
]
