"""The ledger as the dashboard shows it: the last blocks and their ratings,
the validators and the last commit each one signed, ``verify``, and each
expert's standing over ledger height.

The standing over height is not stored anywhere: it is recomputed by
replaying the committed blocks from the genesis state with the real
reputation code (``reputation.apply_block``, ``reputation.standings``), once,
then block by block as the chain grows. A point is kept at every block that
holds ratings, thinned to at most ``max_points`` (every other old point goes
when there are too many), so memory and the page stay bounded however long
the chain is.

``verify`` (``verify_chain``, what `p2pnet ledger verify` runs) replays the
whole chain, so it runs again only when the height changed, at least
``verify_every_s`` later, and at most a tenth of the time it takes.

``refresh`` reads LMDB and replays, so the service runs it in a worker
thread, one at a time; the event loop only reads ``snapshot``, a dict
replaced whole at the end of each refresh.
"""

from __future__ import annotations

import time
from typing import Any, Optional

from p2pnet import wire
from p2pnet.consensus import reputation
from p2pnet.consensus.genesis import Genesis
from p2pnet.consensus.views import block_json, verify_json

RATINGS_SHOWN = 12  # per block


class LedgerHistory:
    def __init__(self, genesis: Genesis, *, max_points: int = 240, replay_batch: int = 5000,
                 blocks_shown: int = 8, votes_window: int = 64, series_shown: int = 12,
                 verify_every_s: float = 3.0, clock=time.monotonic) -> None:
        self.genesis = genesis
        self.max_points = max(4, max_points)
        self.replay_batch = replay_batch
        self.blocks_shown = blocks_shown
        self.votes_window = votes_window
        self.series_shown = series_shown
        self.verify_every_s = verify_every_s
        self.clock = clock
        self._state = reputation.genesis_state(genesis)
        self._points: list[tuple[int, dict]] = []  # (height, {(peer, domain): (score, count)})
        self._error: Optional[str] = None
        self._blocks: dict[int, dict] = {}  # height -> shown block; committed blocks never change
        self._last_signed: dict[str, tuple[int, int]] = {}  # validator -> (height, round) of its last commit sig
        self._scanned = 0  # commits scanned for signatures up to this height
        self._verify: Optional[dict] = None
        self._verify_due = float("-inf")
        self.snapshot: dict = self._compose(0)

    # ------------------------------------------------------------ refresh (worker thread)

    def refresh(self, ledger) -> dict:
        """Catch up with ``ledger`` and return the new snapshot (also kept in ``snapshot``)."""
        top = ledger.height()
        self._advance(ledger, top)
        self._scan_commits(ledger, top)
        self._load_blocks(ledger, top)
        now = self.clock()
        if self._verify is None or (self._verify["height"] != top and now >= self._verify_due):
            self._verify = {**verify_json(ledger), "checked_ms": int(time.time() * 1000)}
            took = self.clock() - now
            # verify replays the whole chain: on a long one, at most a tenth of the time
            self._verify_due = now + max(self.verify_every_s, 10 * took)
        self.snapshot = self._compose(top)
        return self.snapshot

    def _advance(self, ledger, top: int) -> None:
        """Replay blocks after the replayed height, at most ``replay_batch`` per refresh."""
        state = self._state
        stop = min(top, state.height + self.replay_batch)
        while self._error is None and state.height < stop:
            h = state.height + 1
            block = ledger.block(h)
            if block is None:
                self._error = f"block {h} is missing from the ledger"
                break
            try:
                state = reputation.apply_block(state, block)
            except ValueError as exc:
                self._error = f"replaying block {h} failed: {exc}"
                break
            if block.txs:
                self._points.append((h, {(s.peer_id, s.domain): (s.score, s.count)
                                         for s in reputation.standings(state)}))
                if len(self._points) > self.max_points:
                    # keep the newest point; every other older one goes
                    self._points = self._points[:-1][::2] + self._points[-1:]
        self._state = state

    def _scan_commits(self, ledger, top: int) -> None:
        start = max(self._scanned + 1, top - self.votes_window + 1, 1)
        for h in range(start, top + 1):
            commit = ledger.commit(h)
            if commit is None:
                continue
            for sig in commit.sigs:
                self._last_signed[wire.peer_id_str(sig.validator)] = (h, commit.round)
        self._scanned = max(self._scanned, top)

    def _load_blocks(self, ledger, top: int) -> None:
        wanted = range(max(1, top - self.blocks_shown + 1), top + 1)
        for h in wanted:
            if h not in self._blocks:
                self._blocks[h] = _shown_block(block_json(ledger, h))
        for h in [h for h in self._blocks if h not in wanted]:
            del self._blocks[h]

    # ------------------------------------------------------------ the snapshot

    def _compose(self, top: int) -> dict:
        validators = []
        for v in self.genesis.validators:
            name = v.peer_id_text
            signed = self._last_signed.get(name)
            validators.append({"peer_id": name, "power": v.power,
                               "last_signed_height": signed[0] if signed else None,
                               "last_signed_round": signed[1] if signed else None})
        return {
            "height": top,
            "chain_id": self.genesis.chain_id,
            "genesis_hash": self.genesis.hash().hex(),
            "blocks": [self._blocks[h] for h in sorted(self._blocks, reverse=True)],
            "validators": validators,
            "votes_window": self.votes_window,
            "verify": self._verify,
            "history": self._history(),
        }

    def _history(self) -> dict:
        """The series of the experts with the most ratings at the replayed height."""
        state = self._state
        points = list(self._points)
        if not points or points[-1][0] != state.height:
            # the standings at the replayed height (decay moves them between ratings)
            points.append((state.height, {(s.peer_id, s.domain): (s.score, s.count)
                                          for s in reputation.standings(state)}))
        last = points[-1][1]
        keys = sorted(last, key=lambda k: (-last[k][1], k))[:self.series_shown]
        series = [{"peer_id": peer, "domain": domain, "count": last[(peer, domain)][1],
                   "points": [[h, round(scores[(peer, domain)][0], 4)] for h, scores in points
                              if (peer, domain) in scores]}
                  for peer, domain in keys]
        return {"replayed_height": state.height, "points": len(points), "max_points": self.max_points,
                "series": series, "error": self._error,
                "prior": round(reputation.score(state, b"", ""), 4)}


def _shown_block(block: dict) -> dict:
    txs = block.get("txs", [])
    ratings = [{key: tx.get(key) for key in ("rater", "respondent", "expert_id", "domain", "score", "signal")}
               for tx in txs if "respondent" in tx]
    commit: Any = block.get("commit") or {}
    return {
        "height": block["height"], "hash": block["hash"], "time_ms": block["time_ms"],
        "proposer": block["proposer"], "tx_count": block["tx_count"], "round": commit.get("round"),
        "signers": commit.get("signers", []), "ratings": ratings[:RATINGS_SHOWN],
        "ratings_total": len(ratings),
    }
