import trio

from p2pnet import wire
from p2pnet.consensus.driver import ConsensusService
from p2pnet.consensus.memnet import MemoryHub
from p2pnet.consensus.sim import make_ratings, make_signer, sim_genesis, sim_params, validator_seed
from p2pnet.consensus.store import Ledger, MemoryLedger, verify_chain


def vclock():
    return int(trio.current_time() * 1000)


async def _run(svc, *, task_status=trio.TASK_STATUS_IGNORED):
    with trio.CancelScope() as cs:
        async with trio.open_nursery() as n:
            await n.start(svc.run)
            task_status.started(cs)


class Net:
    def __init__(self, n=4, followers=0, params=None, ledgers=None):
        self.genesis = sim_genesis(n, params or sim_params(create_empty_blocks_interval_ms=1_000))
        self.hub = MemoryHub()
        self.signers = [make_signer(validator_seed(i)) for i in range(n + followers)]
        self.ledgers = ledgers or [MemoryLedger(self.genesis) for _ in self.signers]
        self.services = [None] * len(self.signers)
        self.scopes = [None] * len(self.signers)

    async def start(self, nursery, i):
        s = self.signers[i]
        svc = ConsensusService(self.ledgers[i], s, self.genesis, net=self.hub.endpoint(s), clock=vclock)
        self.hub.attach(s.peer_id, svc)
        self.services[i] = svc
        self.scopes[i] = await nursery.start(_run, svc)
        return svc

    def stop(self, i):
        self.hub.detach(self.signers[i].peer_id)
        self.scopes[i].cancel()


async def test_validators_commit_submitted_txs(autojump_clock):
    net = Net()
    async with trio.open_nursery() as nursery:
        for i in range(4):
            await net.start(nursery, i)
        t0 = trio.current_time()
        for k, tx in enumerate(make_ratings(40, raters=3)):
            # a rater sends its ratings, in nonce order, through its own node
            assert net.services[k % 3].submit_tx(tx) == (True, "ok")
        assert net.services[0].submit_tx(make_ratings(1)[0])[1].startswith(("duplicate", "replay"))
        led = net.services[1].ledger

        def committed():
            return sum(len(led.block(h).txs) for h in range(1, led.height() + 1))
        while committed() < 40:
            await net.services[1].wait_for_height(led.height() + 1)
        elapsed = trio.current_time() - t0
        assert committed() == 40 and led.height() <= 3
        assert elapsed < 0.5  # no timeout was needed: commits take only the message delays
        for svc in net.services:
            await svc.wait_for_height(3)
        assert {s.ledger.block(3).hash() for s in net.services} == {led.block(3).hash()}
        assert verify_chain(led) is None
        assert net.services[2].state.height == led.height()
        nursery.cancel_scope.cancel()


async def test_late_joiner_fetches_missing_blocks(autojump_clock):
    net = Net(followers=1)
    async with trio.open_nursery() as nursery:
        for i in range(4):
            await net.start(nursery, i)
        await net.services[0].wait_for_height(6)
        follower = await net.start(nursery, 4)
        assert not follower.is_validator
        await follower.wait_for_height(6)  # fetched with BlockRequest, each commit verified
        assert follower.counters.get("sync_batches", 0) >= 1
        assert follower.ledger.block(6).hash() == net.services[0].ledger.block(6).hash()
        assert verify_chain(follower.ledger) is None
        nursery.cancel_scope.cancel()


async def test_validator_restart_from_lmdb_resumes(autojump_clock, tmp_path):
    g = sim_genesis(4, sim_params(create_empty_blocks_interval_ms=500))
    ledgers = [Ledger.open(tmp_path / f"n{i}", genesis=g) for i in range(4)]
    net = Net(ledgers=ledgers)
    net.genesis = g
    try:
        async with trio.open_nursery() as nursery:
            for i in range(4):
                await net.start(nursery, i)
            await net.services[0].wait_for_height(3)
            net.stop(3)
            await net.services[0].wait_for_height(6)  # 3 of 4 keep going
            restarted = await net.start(nursery, 3)
            await restarted.wait_for_height(8)
            assert restarted.ledger.sign_state().height >= 7
            nursery.cancel_scope.cancel()
        for led in ledgers:
            assert verify_chain(led) is None
    finally:
        for led in ledgers:
            led.close()


async def test_deliver_drops_when_full_and_serve_request(autojump_clock):
    g = sim_genesis(4)
    src = make_signer(validator_seed(1))
    svc = ConsensusService(MemoryLedger(g), make_signer(validator_seed(0)), g, clock=vclock, inbox_size=2)
    vote = wire.Vote(g.chain_id, 1, 1, 0, b"", src.peer_id, b"\x00" * 64)
    env = wire.open_envelope(src.seal(vote))
    for _ in range(5):
        await svc.deliver(env)  # not running: the queue fills
    assert svc.counters["dropped_inbox_full"] == 3
    reply = await svc.serve_request(wire.open_envelope(src.seal(wire.BlockRequest(1, 10))))
    assert isinstance(reply, wire.BlockBatch) and reply.blocks == ()
    bad = bytearray(make_ratings(1)[0])
    bad[-3] ^= 1
    ok, reason = svc.submit_tx(bytes(bad))
    assert not ok and "bad_signature" in reason


async def test_an_announcement_during_shutdown_starts_no_sync(autojump_clock):
    """A peer's height heard while the driver stops (its nursery closed to new
    tasks) used to raise "Nursery is closed to new arrivals" in the node's
    announce handler."""
    net = Net(n=1)
    svc = None
    async with trio.open_nursery() as nursery:
        svc = await net.start(nursery, 0)
        nursery_of_driver = svc._nursery
        net.stop(0)
    assert svc._nursery is None
    svc.observe_height(b"\x01" * 38, 50)  # after shutdown: ignored
    svc._nursery = nursery_of_driver       # and in the window before the reference is dropped
    svc.observe_height(b"\x01" * 38, 50)
    assert not svc._syncing
