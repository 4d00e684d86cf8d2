"""The Trio driver: connects one node's consensus replica to the network.

One task owns the round state: inbound proposals and votes, fetched blocks,
new-tx wake-ups and timeouts all reach it through one bounded channel (timers
through its own deadline). Own votes are persisted by the replica before the
driver sees the Broadcast action, so they are on disk before they leave.

The ``net`` object (duck-typed, provided by the node)::

    async def publish(message: wire.Message) -> None      # consensus topic, signed envelope
    async def publish_tx(envelope: bytes) -> None          # tx topic, the rater's own envelope
    async def request(peer_id: bytes, message: wire.Message) -> wire.Message
    def peers() -> list[bytes]
"""

from __future__ import annotations

import heapq
import logging
import math
import time
from typing import Callable, Dict, List, Optional, Tuple

import trio

from p2pnet import wire
from p2pnet.consensus import core as c
from p2pnet.consensus.genesis import Genesis
from p2pnet.consensus.mempool import Mempool
from p2pnet.consensus.replica import Replica

log = logging.getLogger(__name__)

CONSENSUS_KINDS = frozenset({wire.Proposal.KIND, wire.Vote.KIND})
TX_KINDS = frozenset({wire.Rating.KIND, wire.Tx.KIND})
SYNC_PEERS_TRIED = 3
OBSERVED_SYNC_RETRY_S = 1.0


def wall_clock_ms() -> int:
    return int(time.time() * 1000)


class ConsensusService:
    """Runs consensus for one node (validator or follower).

    ``await nursery.start(service.run)`` returns once it is running. Feed it
    with :meth:`deliver` (verified envelopes from the consensus and tx
    topics), answer peers' BlockRequests with :meth:`serve_request`, and take
    local ratings with :meth:`submit_tx`.
    """

    def __init__(self, ledger, signer: wire.Signer, genesis: Genesis, mempool: Optional[Mempool] = None,
                 net=None, clock: Callable[[], int] = wall_clock_ms, inbox_size: int = 1024,
                 outbox_size: int = 1024, on_commit: Optional[Callable[[wire.Block, wire.Commit], None]] = None,
                 verify=wire.verify_signature) -> None:
        self.ledger = ledger
        self.signer = signer
        self.genesis = genesis
        self.net = net
        self.clock = clock
        self.on_commit = on_commit
        self.replica = Replica(genesis, ledger, signer, verify=verify, mempool=mempool)
        self.mempool = self.replica.mempool
        self._in_send, self._in_recv = trio.open_memory_channel(inbox_size)
        self._out_send, self._out_recv = trio.open_memory_channel(outbox_size)
        self._timers: List[Tuple[float, int, c.TimeoutIn]] = []
        self._seq = 0
        self._syncing = False
        self._wake_pending = False
        self._last_observed_sync = -math.inf
        self._height_changed = trio.Event()
        self._nursery: Optional[trio.Nursery] = None
        self.counters: Dict[str, int] = {}

    # ------------------------------------------------------------ public
    @property
    def height(self) -> int:
        """The last committed height."""
        return self.replica.height - 1

    @property
    def state(self):
        """The current reputation state (immutable; safe to read from any task)."""
        return self.replica.state

    @property
    def is_validator(self) -> bool:
        return self.replica.core.is_validator

    def status(self) -> dict:
        h, r, step = self.replica.core.status()
        return {"height": self.height, "round": r, "step": step, "validator": self.is_validator,
                "mempool": len(self.mempool), "counters": dict(self.counters)}

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._publisher)
                self._apply(self.replica.start(self.clock()))
                task_status.started()
                await self._loop()
        finally:
            # an announcement handled during shutdown must not start a sync in
            # a closed nursery (it raised "Nursery is closed to new arrivals")
            self._nursery = None

    async def deliver(self, env: wire.Envelope) -> None:
        """One verified inbound envelope. Never blocks: when the queue is
        full the message is dropped and counted."""
        if env.kind in TX_KINDS:
            if env.kind == wire.Tx.KIND:
                ok, reason = self.mempool.add(env.message.envelope)
            else:
                ok, reason = self.mempool.add(env.raw, env)
            if ok:
                self._wake()
            return
        if env.kind not in CONSENSUS_KINDS:
            self._count("unexpected_kind")
            return
        if env.sender == self.signer.peer_id:
            return
        if env.kind == wire.Proposal.KIND:
            event = c.ProposalIn(env.sender, env.message)
        else:
            event = c.VoteIn(env.message)
        try:
            self._in_send.send_nowait(event)
        except trio.WouldBlock:
            self._count("dropped_inbox_full")

    async def serve_request(self, env: wire.Envelope) -> wire.Message:
        """Answer a peer's BlockRequest with a BlockBatch (possibly empty)."""
        msg = env.message
        if not isinstance(msg, wire.BlockRequest):
            raise TypeError(f"cannot serve {env.kind}")
        return self.ledger.blocks_for_sync(msg.from_height, msg.to_height)

    def submit_tx(self, envelope: bytes) -> Tuple[bool, str]:
        """A local rating (its signed envelope): admit to the mempool and
        gossip it. Returns (accepted, reason)."""
        ok, reason = self.mempool.add(envelope)
        if ok:
            self._wake()
            self._publish(("tx", envelope))
        return ok, reason

    def observe_height(self, peer_id: bytes, committed_height: int) -> None:
        """A peer says it has committed ``committed_height`` (e.g. from its
        Announce): fetch what we lack from it."""
        if committed_height < self.replica.height or self._nursery is None:
            return
        now = trio.current_time()
        if now - self._last_observed_sync < OBSERVED_SYNC_RETRY_S:
            return
        self._last_observed_sync = now
        self._start_sync(c.RequestBlocks(self.replica.height, committed_height, (peer_id,)))

    async def wait_for_height(self, height: int) -> None:
        """Return once ``height`` is committed here."""
        while self.height < height:
            await self._height_changed.wait()

    # ------------------------------------------------------------ the state task
    async def _loop(self) -> None:
        while True:
            now = trio.current_time()
            while self._timers and self._timers[0][0] <= now:
                _, _, timeout = heapq.heappop(self._timers)
                self._step(timeout)
            if self.replica.core.round_step == c.WAIT and len(self.mempool):
                self._step(c.TxsAvailable())
            deadline = self._timers[0][0] if self._timers else math.inf
            with trio.move_on_at(deadline):
                item = await self._in_recv.receive()
                self._wake_pending = False
                if isinstance(item, wire.BlockBatch):
                    self.replica.add_synced(item)
                    self._step(c.TxsAvailable())
                elif item is not None:
                    self._step(item)

    def _step(self, event: c.Event) -> None:
        self._apply(self.replica.step(event, self.clock()))

    def _apply(self, actions: List[c.Action]) -> None:
        for a in actions:
            if isinstance(a, c.Broadcast):
                self._publish(a.message)
            elif isinstance(a, c.ScheduleTimeout):
                self._seq += 1
                heapq.heappush(self._timers, (trio.current_time() + a.delay_ms / 1000, self._seq, a.event()))
            elif isinstance(a, c.CommitBlock):
                self._count("committed")
                self._height_changed.set()
                self._height_changed = trio.Event()
                if self.on_commit is not None:
                    self.on_commit(a.block, a.commit)
            elif isinstance(a, c.RequestBlocks):
                self._start_sync(a)
            elif isinstance(a, c.Misbehaviour):
                self._count("misbehaviour")
                log.info("consensus: %s by %s", a.reason, wire.peer_id_str(a.validator)[:16])

    def _wake(self) -> None:
        """Tell the state task that txs arrived, once per turn of its loop."""
        if self._wake_pending or self.replica.core.round_step != c.WAIT:
            return
        try:
            self._in_send.send_nowait(None)
            self._wake_pending = True
        except trio.WouldBlock:
            pass  # the loop is busy and checks the mempool on each turn

    def _count(self, key: str) -> None:
        self.counters[key] = self.counters.get(key, 0) + 1

    # ------------------------------------------------------------ outbound
    def _publish(self, item) -> None:
        try:
            self._out_send.send_nowait(item)
        except trio.WouldBlock:
            self._count("dropped_outbox_full")

    async def _publisher(self) -> None:
        async for item in self._out_recv:
            if self.net is None:
                continue
            try:
                if isinstance(item, tuple):
                    await self.net.publish_tx(item[1])
                else:
                    await self.net.publish(item)
            except Exception as exc:  # the network is best effort; never kill consensus
                self._count("publish_failed")
                log.debug("publish failed: %r", exc)

    # ------------------------------------------------------------ catching up
    def _start_sync(self, req: c.RequestBlocks) -> None:
        if self._syncing or self.net is None or self._nursery is None:
            return
        try:
            self._nursery.start_soon(self._fetch, req)
        except RuntimeError:  # the driver is shutting down: its nursery takes no new tasks
            return
        self._syncing = True

    async def _fetch(self, req: c.RequestBlocks) -> None:
        try:
            connected = list(self.net.peers())
            order = [p for p in req.peers if p in connected] + [p for p in connected if p not in req.peers]
            for peer in order[:SYNC_PEERS_TRIED]:
                try:
                    reply = await self.net.request(peer, wire.BlockRequest(req.from_height, req.to_height))
                except Exception as exc:
                    self._count("sync_request_failed")
                    log.debug("block request to %s failed: %r", wire.peer_id_str(peer)[:16], exc)
                    continue
                if isinstance(reply, wire.BlockBatch) and reply.blocks:
                    self._count("sync_batches")
                    await self._in_send.send(reply)
                    return
        finally:
            self._syncing = False
