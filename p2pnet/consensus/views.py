"""JSON views of the ledger and the reputation state, shared by the CLI and
the node's HTTP API (``GET /ledger/block``, ``/ledger/verify``, ``/reputation``)."""

from __future__ import annotations

from typing import Optional

from p2pnet import wire
from p2pnet.consensus.errors import LedgerError
from p2pnet.consensus.reputation import ReputationState, Rules, standings, tx_hash


def tx_json(raw: bytes) -> dict:
    out = {"hash": tx_hash(raw).hex(), "bytes": len(raw)}
    try:
        env = wire.open_envelope(raw)
    except wire.WireError as exc:
        out["error"] = str(exc)
        return out
    out.update({"kind": env.kind, "rater": env.sender_str, "nonce": env.seq, "ts_ms": env.ts_ms})
    m = env.message
    if isinstance(m, wire.Rating):
        out.update({"respondent": wire.peer_id_str(m.respondent), "expert_id": m.expert_id, "domain": m.domain,
                    "score": m.score, "signal": m.signal, "query_hash": m.query_hash.hex(),
                    "answer_hash": m.answer_hash.hex()})
    return out


def block_json(ledger, height: Optional[int] = None) -> dict:
    """The block at ``height`` (the latest if None) as JSON; LedgerError if absent."""
    top = ledger.height()
    h = top if height is None else height
    block = ledger.block(h) if 1 <= h <= top else None
    if block is None:
        raise LedgerError(f"no block at height {h} (ledger height {top})" if h else "the ledger has no blocks yet")
    hdr = block.header
    commit = ledger.commit(h)
    return {
        "height": h,
        "hash": block.hash().hex(),
        "chain_id": hdr.chain_id,
        "time_ms": hdr.time_ms,
        "proposer": wire.peer_id_str(hdr.proposer),
        "prev_hash": hdr.prev_hash.hex(),
        "tx_root": hdr.tx_root.hex(),
        "state_hash": hdr.state_hash.hex(),
        "last_commit_hash": hdr.last_commit_hash.hex(),
        "tx_count": len(block.txs),
        "txs": [tx_json(t) for t in block.txs],
        "commit": None if commit is None else {
            "round": commit.round, "signers": [wire.peer_id_str(s.validator) for s in commit.sigs]},
        "ledger_height": top,
    }


def reputation_json(state: ReputationState, domain: Optional[str] = None) -> dict:
    return {
        "height": state.height,
        "state_hash": state.hash().hex(),
        "domain": domain,
        "standings": [s.to_json() for s in standings(state, domain)],
    }


def verify_json(ledger) -> dict:
    from p2pnet.consensus.store import verify_chain

    err = verify_chain(ledger)
    return {"ok": err is None, "height": ledger.height(), "error": err}


def ledger_state(ledger) -> ReputationState:
    """The reputation state stored in a ledger (whose genesis it holds)."""
    if ledger.genesis is None:
        raise LedgerError("the ledger holds no genesis")
    return ledger.app_state(Rules.from_genesis(ledger.genesis))
