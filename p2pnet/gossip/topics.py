"""GossipSub topic names. The version suffix changes with the wire format."""

ANNOUNCE = "p2pnet/announce/1"
QUERIES = "p2pnet/queries/1"
ANSWERS = "p2pnet/answers/1"
CONSENSUS = "p2pnet/consensus/1"
TXS = "p2pnet/txs/1"
BROADCAST = "p2pnet/broadcast/1"

ALL = (ANNOUNCE, QUERIES, ANSWERS, CONSENSUS, TXS, BROADCAST)

RPC_PROTOCOL = "/p2pnet/rpc/1.0.0"
QUERY_PROTOCOL = "/p2pnet/query/1.0.0"  # Query and Cancel, straight to a respondent (direct.py)
