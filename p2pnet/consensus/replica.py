"""One node's consensus state put together: core + reputation app + mempool +
ledger. It carries out the actions that touch only local state (persist the
sign record, commit a block) and hands back the ones that need the network
or a timer. The Trio driver and the simulator both run this same code."""

from __future__ import annotations

from typing import Dict, List, Optional

from p2pnet import wire
from p2pnet.consensus import core as c
from p2pnet.consensus.app import ReputationApp
from p2pnet.consensus.errors import ConsensusError
from p2pnet.consensus.genesis import Genesis
from p2pnet.consensus.mempool import Mempool
from p2pnet.consensus.reputation import Rules
from p2pnet.consensus.validators import Verify

MAX_SYNC_QUEUE = 256


class Replica:
    def __init__(self, genesis: Genesis, ledger, signer: Optional[c.VoteSigner] = None,
                 verify: Verify = wire.verify_signature, mempool: Optional[Mempool] = None) -> None:
        self.genesis = genesis
        self.ledger = ledger
        self.rules = Rules.from_genesis(genesis)
        self.mempool = mempool or Mempool(genesis.params)
        self.app = ReputationApp(ledger.app_state(self.rules), self.mempool)
        self.core = c.Core(genesis, self.app, ledger.tip(), signer, ledger.sign_state(), verify)
        self._sync: List[c.BlockIn] = []
        self.counters: Dict[str, int] = {}

    @property
    def height(self) -> int:
        """The height being decided (last committed + 1)."""
        return self.core.height

    @property
    def state(self):
        return self.app.state

    def start(self, now_ms: int) -> List[c.Action]:
        return self.step(c.Start(), now_ms)

    def step(self, event: c.Event, now_ms: int) -> List[c.Action]:
        """Feed one event; returns the actions left for the caller (Broadcast,
        ScheduleTimeout, RequestBlocks, Misbehaviour, and CommitBlock as news),
        persisting and committing having been done already, in order."""
        out: List[c.Action] = []
        self._run(event, now_ms, out)
        self._drain_sync(now_ms, out)
        return out

    def _run(self, event: c.Event, now_ms: int, out: List[c.Action]) -> None:
        for action in self.core.step(event, now_ms):
            if isinstance(action, c.PersistSigned):
                self.ledger.save_sign_state(action.record)
            elif isinstance(action, c.CommitBlock):
                self._commit(action.block, action.commit)
                out.append(action)
            else:
                out.append(action)

    def _commit(self, block: wire.Block, commit: wire.Commit) -> None:
        try:
            state, decoded = self.app.execute(block)
        except ValueError as exc:  # the core checked it: a bug or a corrupt store
            raise ConsensusError(f"committed block {block.header.height} does not apply: {exc}") from None
        self.ledger.append(block, commit, state.to_bytes())
        self.app.adopt(state, decoded)

    # ---- catching up
    def add_synced(self, batch: wire.BlockBatch) -> int:
        """Queue fetched blocks (each certified by the next one's last_commit,
        the last by the batch's commit); returns how many were queued."""
        blocks = batch.blocks
        n = 0
        for i, block in enumerate(blocks):
            commit = blocks[i + 1].last_commit if i + 1 < len(blocks) else batch.commit
            if commit is None or block.header.height < self.core.height:
                continue
            if len(self._sync) >= MAX_SYNC_QUEUE:
                break
            self._sync.append(c.BlockIn(block, commit))
            n += 1
        self._sync.sort(key=lambda ev: ev.block.header.height)
        return n

    def _drain_sync(self, now_ms: int, out: List[c.Action]) -> None:
        while self._sync:
            head = self._sync[0]
            h = head.block.header.height
            if h < self.core.height:
                self._sync.pop(0)
                continue
            if h > self.core.height or self.core.round_step == c.COMMIT:
                return
            self._sync.pop(0)
            self._run(head, now_ms, out)

    def tx_in(self, raw: bytes, now_ms: int, env=None):
        """Admit a tx to the mempool; (accepted, reason, actions). ``env``: the
        same bytes already opened (``wire.open_envelope``), to skip a second
        signature check."""
        ok, reason = self.mempool.add(raw, env)
        actions: List[c.Action] = []
        if ok and self.core.round_step == c.WAIT:
            actions = self.step(c.TxsAvailable(), now_ms)
        return ok, reason, actions
