import dataclasses

import pytest

from p2pnet import wire
from p2pnet.consensus import core as c
from p2pnet.consensus.replica import Replica
from p2pnet.consensus.reputation import genesis_state
from p2pnet.consensus.sim import (
    INVALID, Simulation, make_signer, scenario_txs, sim_genesis, sim_params, validator_seed,
)
from p2pnet.consensus.store import MemoryLedger, verify_chain
from p2pnet.consensus.validators import PRECOMMIT, PREVOTE, ValidatorSet


def test_happy_path_blocks_link_and_carry_commits_and_state_hashes():
    sim = Simulation(1, n=4)
    for i, tx in enumerate(scenario_txs()[:10]):
        assert sim.submit_tx(i % 4, tx)[0]
    assert sim.run_until_height(6, 30_000)
    assert sim.safety_violation() is None
    led = sim.nodes[2].ledger
    assert verify_chain(led) is None
    assert sum(len(led.block(h).txs) for h in range(1, led.height() + 1)) == 10
    b1, b2 = led.block(1), led.block(2)
    assert b1.last_commit is None and b1.header.state_hash == genesis_state(sim.genesis).hash()
    assert b2.last_commit.block_hash == b1.hash() and b2.header.prev_hash == b1.hash()
    assert sim.now < 2_000  # no timeouts needed: well under one propose timeout per block


def test_thresholds_by_power_not_count():
    # one validator with 4 of 7 power cannot decide alone, but the other three together cannot either
    sim = Simulation(2, n=4, powers=[4, 1, 1, 1])
    powers = {v.peer_id: v.power for v in sim.genesis.validators}
    heavy = next(i for i, n in enumerate(sim.nodes) if powers[n.peer_id] == 4)
    sim.crash(heavy)
    assert not sim.run_until_height(1, 10_000)
    sim.restart(heavy)
    assert sim.run_until_height(2, 30_000)
    assert sim.safety_violation() is None


def test_bad_vote_signature_is_ignored_and_chain_goes_on():
    sim = Simulation(3, n=4)
    assert sim.run_until_height(2, 20_000)
    core = sim.nodes[0].replica.core
    other = sim.nodes[1]
    forged = wire.Vote(sim.genesis.chain_id, PREVOTE, core.height, 0, b"x" * 32, other.peer_id, b"\x01" * 64)
    sim.nodes[0].replica.step(c.VoteIn(forged), sim.now)
    assert core.counters.get("vote_bad_signature") == 1
    assert other.peer_id not in core.h.by_hash.get((0, PREVOTE), {}).get(b"x" * 32, {})
    assert sim.run_until_height(5, 40_000)


@pytest.mark.parametrize("kind, reason", [
    ("state_hash", "state_hash mismatch"),
    ("tx_root", "tx_root mismatch"),
    ("last_commit", "last_commit: bad commit signature"),
    ("future", "time too far in the future"),
    ("bad_tx", "tx 0"),
])
def test_invalid_proposals_are_rejected_and_chain_goes_on(kind, reason):
    sim = Simulation(4, n=4, byzantine={0: INVALID}, corrupt_kinds=[kind])
    assert sim.run_until_height(9, 120_000)
    assert sim.safety_violation() is None
    bad = sim.nodes[0].peer_id
    led = sim.nodes[1].ledger
    assert all(led.block(h).header.proposer != bad for h in range(2, led.height() + 1))
    reasons = [sim.nodes[i].replica.core.last_invalid for i in (1, 2, 3)]
    assert any(r and reason in r for r in reasons), reasons
    assert verify_chain(led) is None


def test_forged_commit_on_a_fetched_block_is_rejected():
    sim = Simulation(5, n=4)
    assert sim.run_until_height(4, 30_000)
    src = sim.nodes[0].ledger
    g = sim.genesis
    from p2pnet.consensus.replica import Replica
    fresh = Replica(g, MemoryLedger(g))  # a follower at height 1
    fresh.start(sim.now)
    block, commit = src.block(1), src.commit(1)
    bad_sig = dataclasses.replace(commit, sigs=tuple(dataclasses.replace(s, signature=bytes(64)) for s in commit.sigs))
    too_few = dataclasses.replace(commit, sigs=commit.sigs[:2])
    dup = dataclasses.replace(commit, sigs=(commit.sigs[0],) * 4)
    outsider = make_signer(b"o" * 32)
    foreign = dataclasses.replace(commit, sigs=commit.sigs[:2] + (wire.CommitSig(outsider.peer_id, bytes(64)),))
    other_block = dataclasses.replace(commit, block_hash=b"\x07" * 32)
    for forged in (bad_sig, too_few, dup, foreign, other_block):
        fresh.add_synced(wire.BlockBatch((block,), forged))
        fresh.step(c.TxsAvailable(), sim.now)
        assert fresh.ledger.height() == 0
    assert fresh.core.counters["synced_block_rejected"] == 5
    fresh.add_synced(src.blocks_for_sync(1, 4))
    for _ in range(4):
        fresh.step(c.TimeoutIn(fresh.core.height, 0, "commit"), sim.now)
    assert fresh.ledger.height() == 4 and fresh.ledger.block(4).hash() == src.block(4).hash()
    assert verify_chain(fresh.ledger) is None


def test_proposal_from_a_non_proposer_is_ignored():
    sim = Simulation(6, n=4)
    assert sim.run_until_height(2, 20_000)
    rep = sim.nodes[0].replica
    core = rep.core
    h = core.height
    proposer = core.vset.proposer(h, 5)
    wrong = next(n for n in sim.nodes if n.peer_id != proposer)
    block = core._build_block()
    actions = rep.step(c.ProposalIn(wrong.peer_id, wire.Proposal(h, 5, -1, block)), sim.now)
    assert any(isinstance(a, c.Misbehaviour) for a in actions)
    assert 5 not in core.h.proposals


def test_sign_state_prevents_double_signing():
    g = sim_genesis(4)
    from p2pnet.consensus.sim import validator_seed
    signer = make_signer(validator_seed(1))
    led = MemoryLedger(g)
    from p2pnet.consensus.replica import Replica
    led.save_sign_state(c.SignState(1, 3, c.SIGN_PRECOMMIT, b"", b"\x05" * 64))
    rep = Replica(g, led, signer)
    actions = rep.start(0)
    # it resumes at round 3 in the precommit step: it signs nothing at or below (1, 3, precommit)
    assert rep.core.round == 3 and rep.core.round_step == c.PRECOMMIT_STEP
    votes = [a.message for a in actions if isinstance(a, c.Broadcast) and isinstance(a.message, wire.Vote)]
    assert votes == []
    assert rep.core._may_sign(c.SIGN_PREVOTE, b"") is None
    # round 4 is new ground
    rep.step(c.TimeoutIn(1, 3, "precommit"), 10)
    assert rep.core.round == 4 and led.sign_state().hrs() >= (1, 3, c.SIGN_PRECOMMIT)


def test_persist_comes_before_the_vote_leaves():
    sim = Simulation(7, n=4)
    rep = sim.nodes[0].replica
    order = []
    orig = rep.ledger.save_sign_state
    rep.ledger.save_sign_state = lambda rec: (order.append(("persist", rec.hrs())), orig(rec))
    actions = rep.step(c.TimeoutIn(1, 0, "propose"), 1000)  # prevote nil if no proposal yet
    for a in actions:
        if isinstance(a, c.Broadcast) and isinstance(a.message, wire.Vote):
            order.append(("send", (a.message.height, a.message.round, a.message.vote_type + 1)))
    assert order and order[0][0] == "persist"
    sends = [o for o in order if o[0] == "send"]
    for s in sends:
        assert ("persist", s[1]) in order[: order.index(s)]


def test_restart_with_lmdb_never_double_signs(tmp_path):
    from p2pnet.consensus.store import Ledger
    ledgers = {}

    def factory(i, g):
        ledgers[i] = Ledger.open(tmp_path / f"n{i}", genesis=g)
        return ledgers[i]

    sim = Simulation(8, n=4, ledger_factory=factory, drop=0.05, delay_ms=(1, 80))
    for step in range(6):
        sim.run_until(sim.now + 700)
        victim = step % 4
        sim.crash(victim)
        sim.run_until(sim.now + 150)
        sim.restart(victim)
    assert sim.run_until_height(sim.max_height() + 2, sim.now + 60_000)
    assert sim.safety_violation() is None
    for led in ledgers.values():
        assert verify_chain(led) is None
        led.close()


def test_empty_blocks_wait_for_txs_or_the_interval():
    sim = Simulation(9, n=4, params=sim_params(create_empty_blocks_interval_ms=10_000))
    assert not sim.run_until_height(1, 9_000)  # no txs: nothing before the interval (genesis at t=0)
    assert sim.run_until_height(1, 11_000)
    t1 = sim.now
    assert not sim.run_until_height(2, t1 + 9_000)
    assert sim.run_until_height(2, t1 + 11_000)
    led = sim.nodes[0].ledger
    assert led.block(2).header.time_ms - led.block(1).header.time_ms >= 10_000 and not led.block(2).txs
    sim.submit_tx(1, scenario_txs()[0])
    assert sim.run_until_height(3, sim.now + 1_000)  # a tx: a block at once
    assert len(led.block(3).txs) == 1


def test_follower_applies_the_same_blocks():
    sim = Simulation(10, n=4, followers=1)
    follower = sim.nodes[4]
    assert not follower.replica.core.is_validator
    for i, tx in enumerate(scenario_txs()[:6]):
        sim.submit_tx(i % 5, tx)
    assert sim.run_until_height(5, 30_000, nodes=[0, 1, 2, 3, 4])
    assert all(follower.commits[h] == sim.nodes[0].commits[h] for h in range(1, 6))
    assert sim.safety_violation() is None


def test_late_joiner_catches_up_by_fetching_blocks():
    sim = Simulation(11, n=4, followers=1)
    sim.crash(4)
    assert sim.run_until_height(12, 60_000, nodes=[0, 1, 2, 3])
    sim.restart(4)
    target = sim.max_height([0, 1, 2, 3]) + 1
    assert sim.run_until_height(target, sim.now + 20_000, nodes=[4])
    assert verify_chain(sim.nodes[4].ledger) is None


# ---- scripted: the valid value a proposer re-proposes (issue 22, soak seeds 424770, 425258, 425616)

def _script_setup(proposer_round):
    """4 validators; the node under test is the proposer of (1, proposer_round),
    B is the block of the proposer of round 1."""
    g = sim_genesis(4)
    signers = {s.peer_id: s for s in (make_signer(validator_seed(i)) for i in range(4))}
    vset = ValidatorSet(g.validators)
    me = signers[vset.proposer(1, proposer_round)]
    p1 = signers[vset.proposer(1, 1)]
    block = Replica(g, MemoryLedger(g), p1).core._build_block()
    others = [s for s in signers.values() if s.peer_id not in (me.peer_id, p1.peer_id)]
    return g, me, p1, others, block


def _signed_vote(g, signer, vote_type, round_, block_hash):
    v = wire.Vote(g.chain_id, vote_type, 1, round_, block_hash, signer.peer_id)
    return dataclasses.replace(v, signature=signer.sign_bytes(v.sign_bytes()))


def _summary(actions):
    """The actions as short tuples: (kind, round, ...)."""
    out = []
    for a in actions:
        if isinstance(a, c.ScheduleTimeout):
            out.append(("timeout", a.round, a.step))
        elif isinstance(a, c.PersistSigned):
            out.append(("persist", a.record.hrs()))
        elif isinstance(a, c.Broadcast) and isinstance(a.message, wire.Proposal):
            m = a.message
            out.append(("proposal", m.round, m.pol_round, m.block.hash()))
        elif isinstance(a, c.Broadcast) and isinstance(a.message, wire.Vote):
            m = a.message
            out.append(("prevote" if m.vote_type == PREVOTE else "precommit", m.round, m.block_hash))
        else:
            out.append((type(a).__name__,))
    return out


def test_restarted_locked_proposer_reproposes_its_locked_block():
    """A validator locked on B in round 1 restarts; as the proposer of round 2
    it must propose B with its proof-of-lock round (its valid value), not a new
    block: it would not prevote a new block itself, nor would the others locked
    on B. (It used to restore the lock but not the valid value.)"""
    g, me, p1, others, block = _script_setup(2)
    bh = block.hash()
    prevote, precommit = _signed_vote(g, me, PREVOTE, 1, bh), _signed_vote(g, me, PRECOMMIT, 1, bh)
    led = MemoryLedger(g)
    led.save_sign_state(c.SignState(1, 1, c.SIGN_PRECOMMIT, bh, precommit.signature, 1, block.pack(),
                                    (prevote.pack(), precommit.pack())))
    core = Replica(g, led, me).core
    assert _summary(core.step(c.Start(), 10)) == [
        ("timeout", 1, "propose"), ("timeout", 1, "retry"), ("prevote", 1, bh), ("precommit", 1, bh)]
    assert _summary(core.step(c.TimeoutIn(1, 1, "precommit"), 20)) == [
        ("timeout", 2, "propose"), ("timeout", 2, "retry"), ("persist", (1, 2, c.SIGN_PROPOSAL)),
        ("proposal", 2, 1, bh)]
    # it prevotes its own proposal once it holds the proof-of-lock again (3 of 4)
    assert _summary(core.step(c.VoteIn(_signed_vote(g, p1, PREVOTE, 1, bh)), 30)) == []
    assert _summary(core.step(c.VoteIn(_signed_vote(g, others[0], PREVOTE, 1, bh)), 40)) == [
        ("persist", (1, 2, c.SIGN_PREVOTE)), ("prevote", 2, bh)]
    assert (core.locked_round, core.valid_round) == (1, 1)


def test_proof_of_lock_seen_after_its_round_becomes_the_valid_value():
    """2/3+ prevotes for B in round 1 that arrive only in round 2 still make B
    the valid value, so as the proposer of round 3 this node re-proposes B with
    pol_round 1 (which a peer locked on B in round 1 accepts) instead of a new
    block (which it would not). Tendermint's rule L36 looks only at the
    current round; with best-effort gossip and restarts that left no honest
    proposer with the locked value."""
    g, me, p1, others, block = _script_setup(3)
    bh = block.hash()
    core = Replica(g, MemoryLedger(g), me).core  # stepped directly: every action, persists included
    script = [
        (c.Start(), [("timeout", 0, "propose"), ("timeout", 0, "retry")]),
        (c.TimeoutIn(1, 0, "propose"), [("persist", (1, 0, 2)), ("prevote", 0, b"")]),
        (c.TimeoutIn(1, 0, "prevote"), [("persist", (1, 0, 3)), ("precommit", 0, b"")]),
        (c.TimeoutIn(1, 0, "precommit"), [("timeout", 1, "propose"), ("timeout", 1, "retry")]),
        (c.ProposalIn(p1.peer_id, wire.Proposal(1, 1, -1, block)), [("persist", (1, 1, 2)), ("prevote", 1, bh)]),
        (c.TimeoutIn(1, 1, "prevote"), [("persist", (1, 1, 3)), ("precommit", 1, b"")]),
        (c.TimeoutIn(1, 1, "precommit"), [("timeout", 2, "propose"), ("timeout", 2, "retry")]),
        # round 1's prevotes for B come in late, in round 2: nothing to send, but B is now the valid value
        (c.VoteIn(_signed_vote(g, p1, PREVOTE, 1, bh)), []),
        (c.VoteIn(_signed_vote(g, others[0], PREVOTE, 1, bh)), []),
        (c.TimeoutIn(1, 2, "propose"), [("persist", (1, 2, 2)), ("prevote", 2, b"")]),
        (c.TimeoutIn(1, 2, "prevote"), [("persist", (1, 2, 3)), ("precommit", 2, b"")]),
        (c.TimeoutIn(1, 2, "precommit"), [
            ("timeout", 3, "propose"), ("timeout", 3, "retry"), ("persist", (1, 3, c.SIGN_PROPOSAL)),
            ("proposal", 3, 1, bh), ("persist", (1, 3, 2)), ("prevote", 3, bh)]),
    ]
    for k, (event, expected) in enumerate(script):
        assert _summary(core.step(event, 100 * (k + 1))) == expected, (k, event)
    assert (core.locked_round, core.valid_round) == (-1, 1)
