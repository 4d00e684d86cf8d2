import lmdb
import pytest

from p2pnet.consensus.core import SignState
from p2pnet.consensus.errors import LedgerError
from p2pnet.consensus.genesis import generate_genesis
from p2pnet.consensus.replica import Replica
from p2pnet.consensus.sim import Simulation, make_signer, scenario_txs, sim_genesis, validator_seed
from p2pnet.consensus.store import Ledger, verify_chain


def build_chain(n_heights=6):
    sim = Simulation(3, n=4)
    for i, tx in enumerate(scenario_txs()[:12]):
        sim.submit_tx(i % 4, tx)
    assert sim.run_until_height(n_heights, 60_000)
    return sim


def test_write_read_reopen(tmp_path):
    sim = build_chain()
    src = sim.nodes[0].ledger
    led = Ledger.open(tmp_path / "ledger", genesis=sim.genesis)
    rep = Replica(sim.genesis, led)
    for h in range(1, src.height() + 1):
        rep._commit(src.block(h), src.commit(h))
    assert led.height() == src.height()
    top = src.block(src.height())
    led.close()
    led = Ledger.open(tmp_path / "ledger")  # the genesis comes from the ledger
    assert led.genesis == sim.genesis and led.height() == src.height()
    assert led.block(led.height()).hash() == top.hash()
    assert led.height_of_hash(top.hash()) == led.height()
    for h in range(1, led.height() + 1):
        for i, tx in enumerate(led.block(h).txs):
            import hashlib
            assert led.tx_location(hashlib.sha256(tx).digest()) == (h, i)
    assert led.app_state_bytes() == src.app_state_bytes()
    assert verify_chain(led) is None
    tip = led.tip()
    assert tip.height == led.height() and tip.commit.block_hash == tip.block_hash
    led.close()


def test_sign_state_survives_reopen_and_blocks_double_sign(tmp_path):
    g = sim_genesis(4)
    led = Ledger.open(tmp_path / "l", genesis=g)
    rec = SignState(1, 2, 3, b"h" * 32, b"s" * 64, 1, b"", (b"v",))
    led.save_sign_state(rec)
    led.close()
    led = Ledger.open(tmp_path / "l", genesis=g)
    assert led.sign_state() == rec
    rep = Replica(g, led, make_signer(validator_seed(0)))
    assert rep.core.sign_state == rec
    assert rep.core._may_sign(1, b"x" * 32) is None  # (1, 0, propose) <= (1, 2, precommit)
    led.close()


READ_HEIGHT = (
    "import sys; from p2pnet.consensus.store import Ledger; "
    "led = Ledger.open(sys.argv[1], readonly=True); print(led.height()); "
    "led.save_sign_state(None)"
)


def _read_height(path):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", READ_HEIGHT, str(path)], capture_output=True, text=True,
                          timeout=60)
    assert "read-only" in proc.stderr  # the reader cannot write
    return int(proc.stdout.strip())


def test_readonly_beside_writer(tmp_path):
    """Another process reads while this one holds the ledger open for writing."""
    sim = build_chain(3)
    w = Ledger.open(tmp_path / "l", genesis=sim.genesis)
    rep = Replica(sim.genesis, w)
    rep._commit(sim.nodes[0].ledger.block(1), sim.nodes[0].ledger.commit(1))
    assert _read_height(tmp_path / "l") == 1
    rep._commit(sim.nodes[0].ledger.block(2), sim.nodes[0].ledger.commit(2))
    assert _read_height(tmp_path / "l") == 2
    w.close()


def test_open_errors(tmp_path):
    with pytest.raises(LedgerError, match="no ledger"):
        Ledger.open(tmp_path / "missing", readonly=True)
    with pytest.raises(LedgerError, match="needs a genesis"):
        Ledger.open(tmp_path / "new")
    g = sim_genesis(4)
    Ledger.open(tmp_path / "x", genesis=g).close()
    other = generate_genesis([make_signer(b"z" * 32).public_key], chain_id="other")
    with pytest.raises(LedgerError, match="another genesis"):
        Ledger.open(tmp_path / "x", genesis=other)


def test_append_must_follow(tmp_path):
    sim = build_chain(3)
    led = Ledger.open(tmp_path / "l", genesis=sim.genesis)
    with pytest.raises(LedgerError, match="does not follow"):
        led.append(sim.nodes[0].ledger.block(2), sim.nodes[0].ledger.commit(2), b"")
    led.close()


def _tamper(path, db, key, fn):
    env = lmdb.open(str(path), max_dbs=8)
    d = env.open_db(db)
    with env.begin(write=True) as txn:
        txn.put(key, fn(bytes(txn.get(key, db=d))), db=d)
    env.close()


@pytest.mark.parametrize("what, expect", [
    ("flip_tx_byte", "tx_root mismatch"),
    ("flip_state_byte", "stored reputation state differs"),
    ("flip_commit_sig", "stored commit"),
])
def test_verify_chain_detects_tampering(tmp_path, what, expect):
    import struct

    sim = build_chain(5)
    path = tmp_path / "l"
    led = Ledger.open(path, genesis=sim.genesis)
    rep = Replica(sim.genesis, led)
    src = sim.nodes[0].ledger
    for h in range(1, src.height() + 1):
        rep._commit(src.block(h), src.commit(h))
    assert verify_chain(led) is None
    led.close()
    # find a block with txs
    h_tx = next(h for h in range(1, src.height() + 1) if src.block(h).txs)
    if what == "flip_tx_byte":
        raw = src.block_bytes(h_tx)
        tx = src.block(h_tx).txs[0]
        pos = raw.index(tx) + len(tx) - 70  # inside the tx body, not its signature

        def flip(b):
            return b[:pos] + bytes([b[pos] ^ 1]) + b[pos + 1:]
        _tamper(path, b"blocks", struct.pack(">Q", h_tx), flip)
    elif what == "flip_state_byte":
        _tamper(path, b"meta", b"app_state", lambda b: b[:-1] + bytes([b[-1] ^ 1]))
    else:
        _tamper(path, b"commits", struct.pack(">Q", 2), lambda b: b[:-3] + bytes([b[-3] ^ 1]) + b[-2:])
    led = Ledger.open(path, readonly=True)
    err = verify_chain(led)
    led.close()
    assert err is not None and expect in err, err


WRITER = '''
import sys
from p2pnet.consensus.replica import Replica
from p2pnet.consensus.sim import Simulation
from p2pnet.consensus.store import Ledger
sim = Simulation(5, n=4)
assert sim.run_until_height(40, 600_000)
src = sim.nodes[0].ledger
led = Ledger.open(sys.argv[1], genesis=sim.genesis)
rep = Replica(sim.genesis, led)
for h in range(1, 41):
    rep._commit(src.block(h), src.commit(h))
    print(h, flush=True)
    if h >= 5:
        sys.stdin.readline()  # wait to be killed
'''


def test_sigkill_mid_writes_leaves_a_consistent_ledger(tmp_path):
    import signal
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path / "l")], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:
            if int(line) >= 5:
                break
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdin.close()
        proc.stdout.close()
    led = Ledger.open(tmp_path / "l", readonly=True)
    assert led.height() == 5
    assert verify_chain(led) is None
    led.close()
