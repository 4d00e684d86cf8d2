import hashlib

from hypothesis import given, settings, strategies as st

from p2pnet import wire
from p2pnet.consensus.genesis import Params
from p2pnet.consensus.mempool import Mempool
from p2pnet.consensus.sim import make_signer


def rating(respondent_seed=b"r" * 32, k=0, domain="code"):
    return wire.Rating(query_hash=hashlib.sha256(b"%d" % k).digest(),
                       respondent=wire.Signer(respondent_seed).peer_id, expert_id="e", domain=domain,
                       answer_hash=b"", score=0.5)


def test_admits_valid_and_rejects_duplicate():
    mp = Mempool(Params())
    raw = make_signer(b"a" * 32).seal(rating())
    assert mp.add(raw) == (True, "ok")
    ok, reason = mp.add(raw)
    assert not ok and reason.startswith("duplicate")
    assert len(mp) == 1 and mp.size_bytes == len(raw)


def test_bad_signature_rejected():
    mp = Mempool(Params())
    raw = bytearray(make_signer(b"a" * 32).seal(rating()))
    raw[-5] ^= 1
    ok, reason = mp.add(bytes(raw))
    assert not ok and "bad_signature" in reason and len(mp) == 0


def test_garbage_and_wrong_type_rejected():
    mp = Mempool(Params())
    assert mp.add(b"\x00\x01")[1].startswith("invalid")
    other = make_signer(b"a" * 32).seal(wire.Broadcast(text="hi"))
    assert "not a transaction type" in mp.add(other)[1]


def test_self_rating_rejected():
    signer = make_signer(b"a" * 32)
    ok, reason = Mempool(Params()).add(signer.seal(rating(respondent_seed=b"a" * 32)))
    assert not ok and "self-rating" in reason


def test_oversize_rejected():
    mp = Mempool(Params(max_tx_bytes=100))
    ok, reason = mp.add(make_signer(b"a" * 32).seal(rating()))
    assert not ok and reason.startswith("oversize")


def test_replay_of_committed_or_pending_nonce_rejected():
    signer = make_signer(b"a" * 32)
    first, second = signer.seal(rating(k=1)), signer.seal(rating(k=2))
    committed = {}
    mp = Mempool(Params(), committed_nonce=lambda r: committed.get(r, 0))
    assert mp.add(first)[0]
    env = wire.open_envelope(first)
    committed[env.sender] = env.seq  # first got committed
    mp.update([mp.get(hashlib.sha256(first).digest())])
    assert len(mp) == 0
    ok, reason = mp.add(first)
    assert not ok and reason.startswith("replay")
    assert mp.add(second)[0]


def test_full_pool_refuses_instead_of_growing():
    mp = Mempool(Params(), max_txs=3)
    signer = make_signer(b"a" * 32)
    results = [mp.add(signer.seal(rating(k=k))) for k in range(5)]
    assert [ok for ok, _ in results] == [True, True, True, False, False]
    assert results[-1][1].startswith("full") and len(mp) == 3
    mp2 = Mempool(Params(), max_bytes=600)
    assert [mp2.add(signer.seal(rating(k=k)))[0] for k in range(5)].count(True) == 2


def test_reap_round_robin_and_per_rater_cap():
    p = Params(max_ratings_per_rater_per_block=2)
    mp = Mempool(p)
    signers = [make_signer(bytes([i + 1]) * 32) for i in range(3)]
    for s in signers:
        for k in range(4):
            assert mp.add(s.seal(rating(k=k)))[0]
    txs = mp.reap(100)
    assert len(txs) == 6
    raters = [wire.open_envelope(t).sender for t in txs]
    assert all(raters.count(s.peer_id) == 2 for s in signers)
    for s in signers:  # nonces increase per rater
        seqs = [wire.open_envelope(t).seq for t in txs if wire.open_envelope(t).sender == s.peer_id]
        assert seqs == sorted(seqs)
    assert mp.reap(4) == txs[:4]


@settings(max_examples=25, deadline=None)
@given(st.permutations(list(range(8))))
def test_reap_is_independent_of_arrival_order(order):
    signers = [make_signer(bytes([i + 1]) * 32) for i in range(2)]
    txs = [signers[i % 2].seal(rating(k=i)) for i in range(8)]
    a, b = Mempool(Params()), Mempool(Params())
    for t in txs:
        a.add(t)
    for i in order:
        b.add(txs[i])
    assert a.reap(100, height=3) == b.reap(100, height=3)
