"""GossipSub topic names. The version suffix changes with the wire format.

Announcements are sharded by domain: an expert's announcement goes on the
announce shard of each domain its cards serve (``announce_shard``), taken by
the experts of that domain and the coordinators asking in it (shards.py);
validators' announcements (few) go on ``ANNOUNCE``, which every node takes."""

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


def announce_shard(domain: str) -> str:
    """The topic of the announcements of ``domain``'s experts."""
    return SHARD_PREFIX + domain


def is_announce(topic: str) -> bool:
    """``ANNOUNCE`` or one of its domain shards."""
    return topic == ANNOUNCE or topic.startswith(SHARD_PREFIX)


def shard_domain(topic: str) -> str:
    """The domain of an announce shard ("" for any other topic)."""
    return topic[len(SHARD_PREFIX):] if topic.startswith(SHARD_PREFIX) else ""
