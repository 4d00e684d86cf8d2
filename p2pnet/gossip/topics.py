"""GossipSub topic names. The version suffix changes with the wire format.

Announcements are sharded by domain: an expert's announcement goes on the
announce shard of each domain its cards serve (``announce_shard``), taken by
the experts of that domain (and, if switched on, the coordinators asking in
it: shards.py);
validators' announcements (few) go on ``ANNOUNCE``, which every node takes."""

from p2pnet import wire

ANNOUNCE = "p2pnet/announce/1"
QUERIES = "p2pnet/queries/1"
ANSWERS = "p2pnet/answers/1"
CONSENSUS = "p2pnet/consensus/1"
TXS = "p2pnet/txs/1"
BROADCAST = "p2pnet/broadcast/1"

ALL = (ANNOUNCE, QUERIES, ANSWERS, CONSENSUS, TXS, BROADCAST)

SHARD_PREFIX = ANNOUNCE + "/d/"

RPC_PROTOCOL = "/p2pnet/rpc/1.0.0"
QUERY_PROTOCOL = "/p2pnet/query/1.0.0"  # Query and Cancel, straight to a respondent (direct.py)

# what each topic's validator lets through (inbound.py)
TOPIC_KINDS = {
    ANNOUNCE: {wire.Announce.KIND},
    QUERIES: {wire.Query.KIND, wire.Cancel.KIND},
    ANSWERS: {wire.Answer.KIND},  # AnswerChunks travel only over direct streams
    CONSENSUS: {wire.Proposal.KIND, wire.Vote.KIND},
    TXS: {wire.Rating.KIND, wire.Tx.KIND},  # Tx: an aged rating re-stamped by its node
    BROADCAST: {wire.Broadcast.KIND},
}


def announce_shard(domain: str) -> str:
    """The topic of the announcements of ``domain``'s experts."""
    return SHARD_PREFIX + domain


def is_announce(topic: str) -> bool:
    """``ANNOUNCE`` or one of its domain shards."""
    return topic == ANNOUNCE or topic.startswith(SHARD_PREFIX)


def shard_domain(topic: str) -> str:
    """The domain of an announce shard ("" for any other topic)."""
    return topic[len(SHARD_PREFIX):] if topic.startswith(SHARD_PREFIX) else ""


def kinds_of(topic: str) -> frozenset:
    """The message kinds ``topic`` carries (none: not a topic of ours)."""
    if shard_domain(topic):
        return frozenset({wire.Announce.KIND})
    return frozenset(TOPIC_KINDS.get(topic, ()))
