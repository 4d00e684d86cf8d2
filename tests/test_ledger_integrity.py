"""Ledger integrity (issue 22, item 11): the sign record (the double-sign
guard) is checksummed and checked by `ledger verify`, and a node refuses to
start, in one line, on a ledger whose head or sign record is damaged."""

import os
import shutil
import struct
import subprocess
import sys

import lmdb
import pytest

from p2pnet.consensus import store
from p2pnet.consensus.core import SIGN_PRECOMMIT, SIGN_PREVOTE, SignState
from p2pnet.consensus.errors import LedgerError
from p2pnet.consensus.replica import Replica
from p2pnet.consensus.sim import Simulation, scenario_txs
from p2pnet.consensus.store import Ledger, verify_chain

from .conftest_net import NODE_CLI, start_node_process, stop_process

RUN = NODE_CLI


def p2pnet(*args, home, timeout=120):
    env = {**os.environ, "P2PNET_HOME": str(home)}
    env.pop("P2PNET_DEBUG", None)
    return subprocess.run([sys.executable, "-c", RUN, *args], capture_output=True, text=True, timeout=timeout,
                          env=env)


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """A data dir whose ledger holds a real 5+ block chain of a 4-validator
    simulation, with validator 0's real sign record, and the genesis file."""
    sim = Simulation(21, n=4)
    for i, tx in enumerate(scenario_txs()[:12]):
        sim.submit_tx(i % 4, tx)
    assert sim.run_until_height(5, 60_000)
    root = tmp_path_factory.mktemp("chain")
    src = sim.nodes[0].ledger
    led = Ledger.open(root / "node" / "ledger", genesis=sim.genesis)
    rep = Replica(sim.genesis, led)
    for h in range(1, src.height() + 1):
        rep._commit(src.block(h), src.commit(h))
    record = src.sign_state()
    assert record is not None and record.height <= led.height() + 1
    led.save_sign_state(record)
    assert verify_chain(led) is None
    led.close()
    (root / "genesis.json").write_text(sim.genesis.to_json())
    return root


def copy_of(chain, tmp_path):
    shutil.copytree(chain / "node", tmp_path / "node")
    return tmp_path / "node"


def tamper(data_dir, db, key, fn):
    env = lmdb.open(str(data_dir / "ledger"), max_dbs=8)
    d = env.open_db(db)
    with env.begin(write=True) as txn:
        old = txn.get(key, db=d)
        txn.put(key, fn(bytes(old) if old is not None else None), db=d)
    env.close()


def flip_at(pos):
    return lambda b: b[:pos] + bytes([b[pos] ^ 0x01]) + b[pos + 1:]


def head_height(data_dir):
    with Ledger.open(data_dir / "ledger", readonly=True) as led:
        return led.height()


# ---------------------------------------------------------------- the sign record


def test_every_single_byte_change_of_the_sign_record_is_detected(chain):
    with Ledger.open(chain / "node" / "ledger", readonly=True) as led:
        stored = led.sign_state_bytes()
        record = led.sign_state()
    assert store.decode_sign_state(stored) == record and store.encode_sign_state(record) == stored
    for pos in range(len(stored)):
        for new in {stored[pos] ^ 0x01, stored[pos] ^ 0xFF, 0x98, 0x00}:
            if new == stored[pos]:
                continue
            with pytest.raises(store.SignStateDamaged):
                store.decode_sign_state(stored[:pos] + bytes([new]) + stored[pos + 1:])
    for cut in (1, 2, 40, len(stored) - 1):
        with pytest.raises(store.SignStateDamaged):
            store.decode_sign_state(stored[:cut])


def test_an_old_bare_sign_record_is_read_strictly_and_rewritten_with_its_checksum(tmp_path, chain):
    data_dir = copy_of(chain, tmp_path)
    with Ledger.open(data_dir / "ledger", readonly=True) as led:
        record = led.sign_state()
    tamper(data_dir, b"meta", b"sign_state", lambda b: record.to_bytes())  # as an earlier release wrote it
    with Ledger.open(data_dir / "ledger", readonly=True) as led:
        assert led.sign_state() == record and led.sign_state_bytes() == record.to_bytes()
    with Ledger.open(data_dir / "ledger") as led:  # opened for writing: migrated
        assert led.sign_state_bytes() == store.encode_sign_state(record)
    bare = record.to_bytes()
    for bad in (bare + b"\x00", bare[:-1], b"\x93\x01\x02\x03", b"\x98" + bare[1:].replace(b"\x00", b"\xc0", 1)):
        with pytest.raises(store.SignStateDamaged):
            store.decode_sign_state(bad)


@pytest.mark.parametrize("record, expect", [
    (SignState(99, 0, SIGN_PREVOTE, b"\x01" * 32, b"\x02" * 64), "is for height 99"),
    (SignState(1, 0, 7, b"\x01" * 32, b"\x02" * 64), "step 7"),
    (SignState(1, 0, SIGN_PREVOTE, b"\x01" * 31, b"\x02" * 64), "wrong size"),
    (SignState(1, 0, SIGN_PRECOMMIT, b"", b"\x02" * 64, 3), "does not fit round 0"),
    (SignState(1, 0, SIGN_PREVOTE, b"", b"\x02" * 64, -1, b"", (b"junk",)), "undecodable"),
])
def test_a_well_formed_record_that_does_not_fit_the_chain_is_reported(tmp_path, chain, record, expect):
    data_dir = copy_of(chain, tmp_path)
    with Ledger.open(data_dir / "ledger") as led:
        led.save_sign_state(record)
        assert expect in store.sign_state_problem(led)
        assert expect in verify_chain(led)


def test_ledger_verify_checks_the_sign_record(tmp_path, chain):
    data_dir = copy_of(chain, tmp_path)
    p = p2pnet("ledger", "verify", "--data-dir", str(data_dir), home=tmp_path)
    assert p.returncode == 0 and p.stdout.startswith("OK"), (p.stdout, p.stderr)
    tamper(data_dir, b"meta", b"sign_state", flip_at(60))  # a byte of the record itself
    p = p2pnet("ledger", "verify", "--data-dir", str(data_dir), home=tmp_path)
    assert p.returncode == 1 and p.stdout.strip() == \
        "INCONSISTENT: sign state (meta/sign_state) fails its checksum", (p.stdout, p.stderr)


# ---------------------------------------------------------------- the head


def _flip_head_block(data_dir):
    key = struct.pack(">Q", head_height(data_dir))
    tamper(data_dir, b"blocks", key, lambda b: b.replace(b"p2pnet-sim", b"p2pnet-siM", 1))


def _flip_head_block_tail(data_dir):
    """The last byte: inside the last signature of the block's last_commit."""
    tamper(data_dir, b"blocks", struct.pack(">Q", head_height(data_dir)), lambda b: flip_at(len(b) - 1)(b))


def _flip_head_commit(data_dir):
    tamper(data_dir, b"commits", struct.pack(">Q", head_height(data_dir)), lambda b: flip_at(len(b) - 3)(b))


def _flip_state(data_dir):
    tamper(data_dir, b"meta", b"app_state", lambda b: flip_at(len(b) - 1)(b))


def _flip_sign_state(data_dir):
    tamper(data_dir, b"meta", b"sign_state", flip_at(60))


DAMAGE = {
    "head block": (_flip_head_block, "head block"),
    "head block tail": (_flip_head_block_tail, "last_commit_hash mismatch"),
    "head commit": (_flip_head_commit, "stored commit"),
    "reputation state": (_flip_state, "reputation state"),
    "sign state": (_flip_sign_state, "sign state (meta/sign_state) fails its checksum"),
}


@pytest.mark.parametrize("what", sorted(DAMAGE))
def test_quick_check_finds_damage_at_the_head(tmp_path, chain, what):
    data_dir = copy_of(chain, tmp_path)
    damage, expect = DAMAGE[what]
    damage(data_dir)
    with pytest.raises(LedgerError) as info:
        store.check_ledger_at(data_dir / "ledger")
    msg = str(info.value)
    assert expect in msg and f"p2pnet ledger verify --data-dir {data_dir}" in msg and "\n" not in msg


# ---------------------------------------------------------------- a real node


def start_node(data_dir, genesis, home, wait_s=90):
    """Start `p2pnet node start` on ``data_dir``; return (process, log path)
    once it says ready or has exited, within ``wait_s``."""
    log = data_dir.parent / f"{data_dir.name}.log"
    proc = start_node_process(["node", "start", "--data-dir", data_dir, "--genesis", genesis,
                               "--listen", "/ip4/127.0.0.1/tcp/0", "--api-port", "0", "--no-experts"],
                              log, home, wait_s)
    return proc, log


stop = stop_process


@pytest.mark.slow
def test_a_node_starts_on_the_intact_chain(tmp_path, chain):
    data_dir = copy_of(chain, tmp_path)
    proc, log = start_node(data_dir, chain / "genesis.json", tmp_path)
    try:
        assert proc.poll() is None, log.read_text()
    finally:
        stop(proc)


@pytest.mark.slow
@pytest.mark.parametrize("what", sorted(DAMAGE))
def test_a_node_refuses_a_damaged_ledger_in_one_line(tmp_path, chain, what):
    data_dir = copy_of(chain, tmp_path)
    damage, expect = DAMAGE[what]
    damage(data_dir)
    proc, log = start_node(data_dir, chain / "genesis.json", tmp_path)
    try:
        assert proc.poll() == 1, log.read_text()  # exited, not ready
    finally:
        stop(proc)
    lines = log.read_text().strip().splitlines()
    assert len(lines) == 1, lines
    line = lines[0]
    assert line.startswith(f"p2pnet: error: the ledger at {data_dir / 'ledger'} is damaged: ") and expect in line
    assert f"p2pnet ledger verify --data-dir {data_dir}" in line and "Traceback" not in line


def test_verify_replays_blocks_a_running_node_commits_meanwhile(tmp_path, chain):
    """`ledger verify` beside a running node: the node commits after verify has
    read the height, so the stored state is of a later block. Verify replays
    those blocks too instead of reporting a mismatch (it used to)."""
    src = Ledger.open(copy_of(chain, tmp_path) / "ledger")
    try:
        top = src.height()
        assert top >= 5
        led = store.MemoryLedger(src.genesis)
        rep = Replica(src.genesis, led)
        for h in range(1, top - 1):
            rep._commit(src.block(h), src.commit(h))

        class CommitsDuringVerify:
            """``led``, whose node commits its last two blocks right after
            verify has read the height."""
            reads = 0

            def __getattr__(self, name):
                return getattr(led, name)

            def height(self):
                h = led.height()
                self.reads += 1
                if self.reads == 1:
                    for late in range(h + 1, top + 1):
                        rep._commit(src.block(late), src.commit(late))
                return h

        live = CommitsDuringVerify()
        assert verify_chain(live) is None
        assert led.height() == top
        # a stored state that really differs is still reported
        led._state = led._state[:-1] + bytes([led._state[-1] ^ 1])
        assert "stored reputation state differs" in verify_chain(led)
    finally:
        src.close()
