import json

import pytest

import p2pnet.consensus as consensus
from p2pnet import wire
from p2pnet.consensus.genesis import GenesisError, Params, generate_genesis, genesis_from_obj, load_genesis
from p2pnet.consensus.validators import ValidatorSet


def _keys(n):
    return [wire.Signer(bytes([i + 1]) * 32).public_key for i in range(n)]


def test_sample_testnet_genesis_loads():
    g = load_genesis("testnet/genesis.json")
    assert g.chain_id == "p2pnet-testnet" and len(g.validators) == 4
    assert all(v.power == 10 for v in g.validators)


def test_generate_roundtrip(tmp_path):
    g = generate_genesis(_keys(3), [1, 2, 3], chain_id="c1", genesis_time_ms=5)
    p = tmp_path / "g.json"
    p.write_text(g.to_json())
    g2 = load_genesis(p)
    assert g2 == g and g2.hash() == g.hash()
    assert sorted(v.power for v in g2.validators) == [1, 2, 3]


@pytest.mark.parametrize("mutate, key", [
    (lambda o: o.pop("chain_id"), "chain_id"),
    (lambda o: o.__setitem__("genesis_time_ms", "x"), "genesis_time_ms"),
    (lambda o: o["validators"][0].__setitem__("pub_key", "zz"), "validators[0].pub_key"),
    (lambda o: o["validators"][1].__setitem__("power", 0), "validators[1].power"),
    (lambda o: o["validators"][0].__setitem__("peer_id", o["validators"][1]["peer_id"]), "validators[0].peer_id"),
    (lambda o: o["params"].__setitem__("timeout_propose_ms", -1), "params.timeout_propose_ms"),
    (lambda o: o["params"].__setitem__("bogus", 1), "params.bogus"),
    (lambda o: o["params"].__setitem__("weight_probe_ppm", 10_000_001), "params.weight_probe_ppm"),
    (lambda o: o.__setitem__("extra", 1), "extra"),
])
def test_bad_genesis_names_the_key(mutate, key):
    obj = generate_genesis(_keys(2), chain_id="c").to_json_obj()
    mutate(obj)
    with pytest.raises(GenesisError) as info:
        genesis_from_obj(json.loads(json.dumps(obj)))
    assert str(info.value).startswith(key)


def test_missing_file_is_one_clear_error(tmp_path):
    with pytest.raises(GenesisError, match="genesis"):
        load_genesis(tmp_path / "nope.json")


def test_a_genesis_file_that_is_not_text_or_too_large_names_the_file(tmp_path):
    from p2pnet.files import SMALL_FILE_BYTES

    binary = tmp_path / "bin.json"
    binary.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(GenesisError, match="bin.json is not UTF-8 text, not a genesis file"):
        load_genesis(binary)
    big = tmp_path / "big.json"  # read no further than the bound: the path may name a device
    big.write_bytes(b" " * SMALL_FILE_BYTES + generate_genesis([b"k" * 32]).to_json().encode())
    with pytest.raises(GenesisError, match="big.json is larger than 1 MiB, not a genesis file"):
        load_genesis(big)


def test_block_must_fit_a_message():
    with pytest.raises(GenesisError, match="max_block_txs"):
        Params(max_block_txs=10_000, max_tx_bytes=1024).validate()


def test_proposer_rotation_is_weighted_and_periodic():
    g = generate_genesis(_keys(3), [1, 2, 5], chain_id="c")
    vs = ValidatorSet(g.validators)
    seq = [vs.proposer(h, 0) for h in range(1, 9)]
    counts = {v.peer_id: seq.count(v.peer_id) for v in g.validators}
    assert sorted(counts.values()) == [1, 2, 5]
    assert [vs.proposer(h, 0) for h in range(9, 17)] == seq
    assert vs.proposer(3, 2) == vs.proposer(5, 0)
    # a second set computes the same sequence
    assert [ValidatorSet(g.validators).proposer(h, 0) for h in range(1, 9)] == seq
    assert vs.quorum == 6 and vs.third == 3


def test_exports():
    for name in consensus.__all__:
        assert getattr(consensus, name) is not None
    assert consensus.ConsensusError.__mro__[1].__name__ == "P2PNetError"
