"""Connects the consensus service to a node: the consensus and tx topics, block
sync over direct requests, the coordinator's rating queue, reputation for the
selection policy, and the ledger routes of the HTTP API.

Ratings leave the durable queue only once a committed block holds them; until
then they are re-submitted (re-signed with a fresh nonce when their nonce has
gone stale) so none that was recorded is lost."""

from __future__ import annotations

import logging
from pathlib import Path

import trio

from p2pnet import wire
from p2pnet.api.errors import HttpError
from p2pnet.api.http import Request, Response
from p2pnet.consensus import ConsensusService, Ledger, LedgerError, load_genesis
from p2pnet.consensus import reputation
from p2pnet.consensus.store import check_ledger_at
from p2pnet.consensus.views import block_json, reputation_json, verify_json
from p2pnet.errors import P2PNetError
from p2pnet.gossip import topics

log = logging.getLogger("p2pnet.ledger")

RESUBMIT_INTERVAL_S = 5.0
TX_WRAP_AGE_MS = wire.MAX_STALENESS_MS // 4
"""A rating older than this is gossiped inside a fresh wire.Tx (see _Net.publish_tx)."""


class _Net:
    """The network interface ConsensusService expects, over the node's gossip."""

    def __init__(self, network) -> None:
        self.network = network

    async def publish(self, message: wire.Message) -> None:
        await self.network.publish(topics.CONSENSUS, message)

    async def publish_tx(self, envelope: bytes) -> None:
        """Gossip a rating. One stamped so long ago that receivers would drop
        it as stale (queued across a restart, or through a stalled chain)
        travels inside a fresh ``wire.Tx``: their staleness and replay checks
        apply to that wrapper, and the ledger's nonce rule still lets the
        rating itself commit at most once (re-signing it instead would give
        it a second nonce)."""
        if self._aged(envelope):
            await self.network.publish(topics.TXS, wire.Tx(envelope))
        else:
            self.network.publish_raw_nowait(topics.TXS, envelope)

    def _aged(self, envelope: bytes) -> bool:
        try:
            env = wire.open_envelope(envelope)
        except wire.WireError:
            return False  # not ours to judge here: receivers drop it and say why
        return self.network.clock() * 1000 - env.ts_ms > TX_WRAP_AGE_MS

    async def request(self, peer: bytes, message: wire.Message) -> wire.Message:
        return await self.network.request(peer, message)

    def peers(self) -> list[bytes]:
        return self.network.peers()


class LedgerService:
    def __init__(self, node, ratings) -> None:
        cfg = node.config
        self.node = node
        self.ratings = ratings
        self.genesis = load_genesis(cfg.genesis)
        is_validator = any(v.peer_id == node.signer.peer_id for v in self.genesis.validators)
        if cfg.validator and not is_validator:
            raise P2PNetError(f"--validator: this node ({node.peer_id}) is not a validator in {cfg.genesis}")
        path = Path(cfg.data_dir) / "ledger"
        self.ledger = Ledger.open(path, genesis=self.genesis)
        try:
            check_ledger_at(path, self.genesis, self.ledger)  # the head and the sign record, cheaply
        except LedgerError:
            self.ledger.close()
            raise
        self.service = ConsensusService(self.ledger, node.signer, self.genesis, net=_Net(node.network),
                                        on_commit=self._on_commit)
        self.coordinator = None  # set by build_services: traffic shares for /reputation
        self._kick = trio.Event()
        net = node.network
        net.on(topics.CONSENSUS, self.service.deliver)
        net.on(topics.TXS, self.service.deliver)
        net.on(topics.ANNOUNCE, self._on_announce)
        net.on_request(wire.BlockRequest.KIND, self.service.serve_request)

    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self.service.run)
            nursery.start_soon(self._resubmitter)
            task_status.started()

    # ---- coordinator hooks

    def standing(self, peer: bytes, domain: str) -> tuple[float, float, float]:
        """(posterior mean, evidence, probe evidence) of ``peer`` in ``domain`` in the committed
        state: ``reputation.standing_view``, what the simulator reads too."""
        return reputation.standing_view(self.service.state, peer, domain)

    def submit_rating(self, envelope: bytes) -> None:
        ok, reason = self.service.submit_tx(envelope)
        if not ok:
            log.info("rating not admitted yet (%s); it stays queued", reason)
            self._kick.set()

    # ---- commits

    def _on_commit(self, block: wire.Block, commit: wire.Commit) -> None:
        mine = set()
        for raw in block.txs:
            mine.add(reputation.tx_hash(raw))
        done = [key for key, raw in self.ratings.pending() if reputation.tx_hash(raw) in mine]
        if done:
            self.ratings.remove(done)
        self.node.network.announce_soon()

    async def _resubmitter(self) -> None:
        """Re-offer queued ratings that no committed block holds yet."""
        while True:
            with trio.move_on_after(RESUBMIT_INTERVAL_S):
                await self._kick.wait()
            self._kick = trio.Event()
            committed = []
            for key, raw in self.ratings.pending(limit=500):
                if self.ledger.tx_location(reputation.tx_hash(raw)) is not None:
                    committed.append(key)
                    continue
                ok, reason = self.service.submit_tx(raw)
                if not ok and reason.startswith("replay: nonce not above"):
                    self._reseal(key, raw)
            if committed:
                self.ratings.remove(committed)

    def _reseal(self, key: int, raw: bytes) -> None:
        """A queued rating whose nonce went stale: sign it again with a fresh one."""
        try:
            env = wire.open_envelope(raw)
        except wire.WireError:
            self.ratings.remove([key])
            return
        if env.sender != self.node.signer.peer_id:
            self.ratings.remove([key])
            return
        fresh = self.node.signer.seal(env.message)
        self.ratings.remove([key])
        self.ratings.put(fresh)
        self.service.submit_tx(fresh)

    async def _on_announce(self, env: wire.Envelope) -> None:
        if env.message.height:
            self.service.observe_height(env.sender, env.message.height)

    # ---- node service hooks

    def announce_extra(self) -> dict:
        return {"validator": self.service.is_validator, "height": self.service.height}

    def status(self) -> dict:
        st = self.service.status()
        return {"height": st["height"], "validator": st["validator"], "ledger": st,
                "chain_id": self.genesis.chain_id}

    def mount(self, router) -> None:
        async def block(request: Request) -> Response:
            raw = request.arg("height")
            try:
                height = None if raw is None else int(raw)
            except ValueError:
                raise HttpError(400, "height must be an integer", param="height") from None
            try:
                return Response.json(200, block_json(self.ledger, height))
            except LedgerError as exc:
                raise HttpError(404, str(exc), code="not_found") from None

        async def verify(request: Request) -> Response:
            return Response.json(200, await trio.to_thread.run_sync(verify_json, self.ledger))

        async def standings(request: Request) -> Response:
            out = reputation_json(self.service.state, request.arg("domain"))
            if self.coordinator is not None:
                out["traffic"] = self.coordinator.traffic()
            return Response.json(200, out)

        router.add("GET", "/ledger/block", block)
        router.add("GET", "/ledger/verify", verify)
        router.add("GET", "/reputation", standings)

    def close(self) -> None:
        self.ledger.close()


async def start_ledger(node, nursery, ratings) -> LedgerService:
    service = LedgerService(node, ratings)
    await nursery.start(service.run)
    return service
