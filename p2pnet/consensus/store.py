"""The ledger: blocks, indexes, the reputation state and the validator's sign
record, in LMDB (:class:`Ledger`) or in memory (:class:`MemoryLedger`, tests and
simulation). :func:`verify_chain` replays a stored chain from genesis;
:func:`quick_check` checks the head and the sign record, cheaply, at start.

The sign record (``meta/sign_state``, the double-sign guard) is stored as
``_SIGN_MAGIC + sha256(payload) + payload``, so any changed byte is detected;
one written by an earlier release (the bare msgpack payload) is still read,
strictly, and rewritten in the new form when the ledger is opened for
writing. The reputation state's sha256 is stored beside it
(``meta/app_state_sha256``, in the same transaction) so a damaged state is
found without replaying the chain; a ledger written by an earlier release
gets it with its next block."""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import lmdb

from p2pnet import wire
from p2pnet.consensus.core import SIGN_PRECOMMIT, SIGN_PREVOTE, SIGN_PROPOSAL, SignState, Tip
from p2pnet.consensus.errors import LedgerError
from p2pnet.consensus.genesis import Genesis, genesis_from_json
from p2pnet.consensus.reputation import STATE_VERSION, ReputationState, Rules, apply_block, genesis_state, tx_hash
from p2pnet.consensus.validators import ValidatorSet, commit_hash, tx_root

_BIG = 1 << 30
_META_GENESIS = b"genesis"
_META_HEIGHT = b"height"
_META_STATE = b"app_state"
_META_SIGN = b"sign_state"
_META_STATE_DIGEST = b"app_state_sha256"

_SIGN_MAGIC = b"\xc1\xc1S1"
"""Starts a checksummed sign record. 0xc1 is never valid msgpack, so changing
any one byte of it cannot make the record pass as one of the old, bare form
(which starts with 0x98, an array of 8)."""
_DIGEST = 32


class SignStateDamaged(LedgerError):
    """The stored sign record is not one this code wrote."""


def encode_sign_state(record: SignState) -> bytes:
    payload = record.to_bytes()
    return _SIGN_MAGIC + hashlib.sha256(payload).digest() + payload


def is_legacy_sign_state(data: bytes) -> bool:
    return not data.startswith(_SIGN_MAGIC)


def decode_sign_state(data: bytes) -> SignState:
    """The record in stored bytes (either form); SignStateDamaged if the
    checksum fails or the bytes are not exactly one well-typed record."""
    if data.startswith(_SIGN_MAGIC):
        digest = data[len(_SIGN_MAGIC):len(_SIGN_MAGIC) + _DIGEST]
        payload = data[len(_SIGN_MAGIC) + _DIGEST:]
        if hashlib.sha256(payload).digest() != digest:
            raise SignStateDamaged("sign state (meta/sign_state) fails its checksum")
    else:
        payload = data
    try:
        obj = wire.unpackb(payload, max_bytes=_BIG)
    except wire.WireError as exc:
        raise SignStateDamaged(f"sign state (meta/sign_state) is undecodable ({exc})") from None
    types = (int, int, int, bytes, bytes, int, bytes, list)
    if not isinstance(obj, list) or len(obj) != len(types) or any(
            not isinstance(v, t) or isinstance(v, bool) for v, t in zip(obj, types)) \
            or not all(isinstance(v, bytes) for v in obj[7]):
        raise SignStateDamaged("sign state (meta/sign_state) is not a sign record")
    return SignState.from_bytes(payload)


def _h(height: int) -> bytes:
    return struct.pack(">Q", height)


def decode_block(data: bytes) -> wire.Block:
    return wire.Block.from_obj(wire.unpackb(data, max_bytes=_BIG))


def decode_commit(data: bytes) -> wire.Commit:
    return wire.Commit.from_obj(wire.unpackb(data, max_bytes=_BIG))


class _LedgerReads:
    """Reads shared by both stores, over the raw getters."""

    genesis: Optional[Genesis]

    def height(self) -> int:
        raise NotImplementedError

    def block_bytes(self, height: int) -> Optional[bytes]:
        raise NotImplementedError

    def commit_bytes(self, height: int) -> Optional[bytes]:
        raise NotImplementedError

    def sign_state_bytes(self) -> Optional[bytes]:
        raise NotImplementedError

    def state_with_digest(self) -> Tuple[Optional[bytes], Optional[bytes]]:
        """The stored reputation state and its stored sha256 (None if the
        store keeps none), read together."""
        return self.app_state_bytes(), None

    def sign_state(self) -> Optional[SignState]:
        data = self.sign_state_bytes()
        return decode_sign_state(data) if data else None

    def block(self, height: int) -> Optional[wire.Block]:
        data = self.block_bytes(height)
        return decode_block(data) if data is not None else None

    def commit(self, height: int) -> Optional[wire.Commit]:
        """The commit this node holds for block ``height``."""
        data = self.commit_bytes(height)
        return decode_commit(data) if data is not None else None

    def tip(self) -> Tip:
        h = self.height()
        if h == 0:
            return Tip(0, b"", self.genesis.genesis_time_ms if self.genesis else 0, None)
        block = self.block(h)
        return Tip(h, block.hash(), block.header.time_ms, self.commit(h))

    def app_state(self, rules: Rules) -> ReputationState:
        data = self.app_state_bytes()
        return ReputationState.from_bytes(rules, data) if data else ReputationState(rules)

    def blocks_for_sync(self, from_height: int, to_height: int, max_bytes: int = 900_000,
                        max_blocks: int = 64) -> wire.BlockBatch:
        """Blocks ``from_height..`` (as many as fit), with the commit of the last."""
        blocks: List[wire.Block] = []
        size = 0
        for h in range(from_height, min(to_height, self.height(), from_height + max_blocks - 1) + 1):
            data = self.block_bytes(h)
            if data is None or (blocks and size + len(data) > max_bytes):
                break
            size += len(data)
            blocks.append(decode_block(data))
        commit = self.commit(blocks[-1].header.height) if blocks else None
        return wire.BlockBatch(tuple(blocks), commit)


class MemoryLedger(_LedgerReads):
    """The ledger in dicts; survives a simulated crash because the simulator
    keeps the object."""

    def __init__(self, genesis: Genesis) -> None:
        self.genesis = genesis
        self._blocks: Dict[int, bytes] = {}
        self._commits: Dict[int, bytes] = {}
        self._by_hash: Dict[bytes, int] = {}
        self._txs: Dict[bytes, Tuple[int, int]] = {}
        self._state: Optional[bytes] = None
        self._sign: Optional[bytes] = None

    def height(self) -> int:
        return len(self._blocks)

    def block_bytes(self, height: int) -> Optional[bytes]:
        return self._blocks.get(height)

    def commit_bytes(self, height: int) -> Optional[bytes]:
        return self._commits.get(height)

    def height_of_hash(self, block_hash: bytes) -> Optional[int]:
        return self._by_hash.get(block_hash)

    def tx_location(self, h: bytes) -> Optional[Tuple[int, int]]:
        return self._txs.get(h)

    def app_state_bytes(self) -> Optional[bytes]:
        return self._state

    def sign_state_bytes(self) -> Optional[bytes]:
        return self._sign

    def save_sign_state(self, record: SignState) -> None:
        self._sign = encode_sign_state(record)

    def append(self, block: wire.Block, commit: wire.Commit, state_bytes: bytes) -> None:
        h = block.header.height
        if h != self.height() + 1:
            raise LedgerError(f"block {h} does not follow height {self.height()}")
        self._blocks[h] = block.pack()
        self._commits[h] = commit.pack()
        self._by_hash[block.hash()] = h
        for i, tx in enumerate(block.txs):
            self._txs[tx_hash(tx)] = (h, i)
        self._state = state_bytes

    def close(self) -> None:
        pass


class Ledger(_LedgerReads):
    """The ledger in an LMDB environment at ``<data_dir>/ledger/``.

    A block, its commit, its indexes and the state it produces are written in
    one write transaction; the sign record in its own (synced before the vote
    it guards is sent). Open ``readonly=True`` to read beside a running node.
    """

    def __init__(self, env: lmdb.Environment, dbs: dict, genesis: Optional[Genesis], readonly: bool) -> None:
        self.env = env
        self._dbs = dbs
        self.genesis = genesis
        self.readonly = readonly

    @classmethod
    def open(cls, path: str | Path, genesis: Optional[Genesis] = None, readonly: bool = False,
             map_size: int = 1 << 30) -> "Ledger":
        """Open (creating unless ``readonly``) the ledger at ``path``. The
        genesis is stored on creation; a different one later is an error."""
        path = Path(path)
        try:
            if readonly:
                if not (path / "data.mdb").exists():
                    raise LedgerError(f"no ledger at {path}")
                env = lmdb.open(str(path), readonly=True, max_dbs=8, lock=True)
            else:
                path.mkdir(parents=True, exist_ok=True)
                env = lmdb.open(str(path), map_size=map_size, max_dbs=8)
            names = ("meta", "blocks", "commits", "hashes", "txs")
            dbs = {n: env.open_db(n.encode(), create=not readonly) for n in names}
        except lmdb.Error as exc:
            raise LedgerError(f"cannot open ledger at {path}: {exc}") from None
        with env.begin() as txn:
            stored = txn.get(_META_GENESIS, db=dbs["meta"])
        if stored is not None:
            stored_genesis = genesis_from_json(bytes(stored))
            if genesis is not None and stored_genesis.hash() != genesis.hash():
                env.close()
                raise LedgerError(f"ledger at {path} belongs to another genesis (chain {stored_genesis.chain_id})")
            genesis = stored_genesis
        elif not readonly:
            if genesis is None:
                env.close()
                raise LedgerError(f"new ledger at {path} needs a genesis")
            with env.begin(write=True) as txn:
                txn.put(_META_GENESIS, genesis.canonical_bytes(), db=dbs["meta"])
        led = cls(env, dbs, genesis, readonly)
        state = led.app_state_bytes()
        version = ReputationState.version_of(state) if state else STATE_VERSION
        if version != STATE_VERSION:
            led.close()
            raise LedgerError(f"ledger at {path} holds a reputation state of format {version}, written by "
                              f"another release of p2pnet (this one reads format {STATE_VERSION}); "
                              f"move the directory aside to start a new ledger")
        if not readonly:
            led._migrate_sign_state()
        return led

    def _migrate_sign_state(self) -> None:
        """Rewrite a sign record of the old, bare form with its checksum (a
        damaged one is left as it is, for the start check to report)."""
        data = self.sign_state_bytes()
        if data and is_legacy_sign_state(data):
            try:
                record = decode_sign_state(data)
            except SignStateDamaged:
                return
            self.save_sign_state(record)

    def close(self) -> None:
        self.env.close()

    def __enter__(self) -> "Ledger":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _get(self, db: str, key: bytes) -> Optional[bytes]:
        with self.env.begin() as txn:
            v = txn.get(key, db=self._dbs[db])
        return bytes(v) if v is not None else None

    def height(self) -> int:
        v = self._get("meta", _META_HEIGHT)
        return struct.unpack(">Q", v)[0] if v else 0

    def block_bytes(self, height: int) -> Optional[bytes]:
        return self._get("blocks", _h(height))

    def commit_bytes(self, height: int) -> Optional[bytes]:
        return self._get("commits", _h(height))

    def height_of_hash(self, block_hash: bytes) -> Optional[int]:
        v = self._get("hashes", block_hash)
        return struct.unpack(">Q", v)[0] if v else None

    def tx_location(self, h: bytes) -> Optional[Tuple[int, int]]:
        v = self._get("txs", h)
        return struct.unpack(">QI", v) if v else None

    def app_state_bytes(self) -> Optional[bytes]:
        return self._get("meta", _META_STATE)

    def sign_state_bytes(self) -> Optional[bytes]:
        return self._get("meta", _META_SIGN)

    def state_with_digest(self) -> Tuple[Optional[bytes], Optional[bytes]]:
        with self.env.begin() as txn:
            state = txn.get(_META_STATE, db=self._dbs["meta"])
            digest = txn.get(_META_STATE_DIGEST, db=self._dbs["meta"])
            return (bytes(state) if state is not None else None, bytes(digest) if digest is not None else None)

    def _write(self, fn) -> None:
        if self.readonly:
            raise LedgerError("ledger opened read-only")
        while True:
            try:
                with self.env.begin(write=True) as txn:
                    fn(txn)
                return
            except lmdb.MapFullError:
                self.env.set_mapsize(self.env.info()["map_size"] * 2)

    def save_sign_state(self, record: SignState) -> None:
        self._write(lambda txn: txn.put(_META_SIGN, encode_sign_state(record), db=self._dbs["meta"]))

    def append(self, block: wire.Block, commit: wire.Commit, state_bytes: bytes) -> None:
        h = block.header.height
        block_hash = block.hash()

        def write(txn) -> None:
            cur = txn.get(_META_HEIGHT, db=self._dbs["meta"])
            cur = struct.unpack(">Q", cur)[0] if cur else 0
            if h != cur + 1:
                raise LedgerError(f"block {h} does not follow height {cur}")
            txn.put(_h(h), block.pack(), db=self._dbs["blocks"])
            txn.put(_h(h), commit.pack(), db=self._dbs["commits"])
            txn.put(block_hash, _h(h), db=self._dbs["hashes"])
            for i, tx in enumerate(block.txs):
                txn.put(tx_hash(tx), struct.pack(">QI", h, i), db=self._dbs["txs"])
            txn.put(_META_STATE, state_bytes, db=self._dbs["meta"])
            txn.put(_META_STATE_DIGEST, hashlib.sha256(state_bytes).digest(), db=self._dbs["meta"])
            txn.put(_META_HEIGHT, _h(h), db=self._dbs["meta"])

        self._write(write)


def verify_chain(ledger: _LedgerReads, genesis: Optional[Genesis] = None) -> Optional[str]:
    """Replay every stored block from genesis; None if all is consistent, else
    a description of the first inconsistency."""
    genesis = genesis or ledger.genesis
    if genesis is None:
        return "no genesis"
    vset = ValidatorSet(genesis.validators)
    chain_id = genesis.chain_id
    state = genesis_state(genesis)
    prev_hash, prev_time = b"", genesis.genesis_time_ms
    top, done = ledger.height(), 0
    while True:
        for h in range(done + 1, top + 1):
            checked = _block_problem(ledger, vset, chain_id, h, state, prev_hash, prev_time)
            if isinstance(checked, str):
                return checked
            state, prev_hash, prev_time = checked
        done = top
        # a running node may have committed since the height was read: the stored
        # state is then of a later block, and those blocks are replayed too
        stored = ledger.app_state_bytes()
        stored_height = _state_height(stored)
        if stored_height is None or stored_height <= top:
            break
        top = stored_height
    if top and stored != state.to_bytes():
        return f"stored reputation state differs from the replay of {top} blocks"
    return _state_digest_problem(ledger) or sign_state_problem(ledger)


def _state_height(data: Optional[bytes]) -> Optional[int]:
    """The height a stored reputation state is of, None if unreadable."""
    if not data:
        return None
    try:
        obj = wire.unpackb(data, max_bytes=1 << 40)
    except (wire.WireError, ValueError, TypeError):
        return None
    return obj[1] if isinstance(obj, list) and len(obj) > 1 and type(obj[1]) is int else None


def _block_problem(ledger, vset, chain_id, h, state, prev_hash, prev_time):
    """A description of what is wrong with block ``h``, or (state after it,
    its hash, its time)."""
    where = f"block {h}"
    try:
        block = ledger.block(h)
        commit = ledger.commit(h)
    except (wire.WireError, ValueError, TypeError) as exc:
        return f"{where}: undecodable ({exc})"
    if block is None or commit is None:
        return f"{where}: missing"
    hdr = block.header
    block_hash = block.hash()
    if hdr.chain_id != chain_id or hdr.height != h:
        return f"{where}: wrong chain_id or height"
    if hdr.prev_hash != prev_hash:
        return f"{where}: prev_hash does not link to block {h - 1}"
    if hdr.time_ms <= prev_time:
        return f"{where}: time not after block {h - 1}"
    if hdr.proposer not in vset:
        return f"{where}: proposer is not a validator"
    if hdr.tx_root != tx_root(block.txs):
        return f"{where}: tx_root mismatch"
    if hdr.last_commit_hash != commit_hash(block.last_commit):
        return f"{where}: last_commit_hash mismatch"
    if h > 1:
        err = vset.verify_commit(chain_id, block.last_commit, h - 1, prev_hash)
        if err:
            return f"{where}: last_commit: {err}"
    if hdr.state_hash != state.hash():
        return f"{where}: state_hash mismatch"
    try:
        state = apply_block(state, block)
    except ValueError as exc:
        return f"{where}: txs: {exc}"
    err = vset.verify_commit(chain_id, commit, h, block_hash)
    if err:
        return f"{where}: stored commit: {err}"
    if ledger.height_of_hash(block_hash) != h:
        return f"{where}: block-hash index mismatch"
    for i, tx in enumerate(block.txs):
        if ledger.tx_location(tx_hash(tx)) != (h, i):
            return f"{where}: tx index mismatch for tx {i}"
    return state, block_hash, hdr.time_ms


_DECODE_ERRORS = (wire.WireError, ValueError, TypeError, KeyError, IndexError)


def _state_digest_problem(ledger: _LedgerReads) -> Optional[str]:
    stored, digest = ledger.state_with_digest()
    if digest is None:
        return None  # written by an earlier release; the next block adds it
    if stored is None or hashlib.sha256(stored).digest() != digest:
        return "stored reputation state fails its checksum (meta/app_state_sha256)"
    return None


def sign_state_problem(ledger: _LedgerReads) -> Optional[str]:
    """None if the sign record (the double-sign guard) is intact and fits the
    chain, else what is wrong with it. Read before the height: a running node
    signs only at its height + 1, and its height only grows."""
    try:
        ss = ledger.sign_state()
    except SignStateDamaged as exc:
        return str(exc)
    if ss is None:
        return None
    top = ledger.height()
    where = "sign state (meta/sign_state)"
    if not 1 <= ss.height <= top + 1:
        return f"{where} is for height {ss.height}, but the chain is at {top} (a node signs only at its height + 1)"
    if ss.round < 0 or ss.step not in (SIGN_PROPOSAL, SIGN_PREVOTE, SIGN_PRECOMMIT):
        return f"{where} holds round {ss.round}, step {ss.step}"
    if len(ss.block_hash) not in (0, 32) or len(ss.signature) not in (0, 64):
        return f"{where} holds a block hash or signature of the wrong size"
    if not -1 <= ss.locked_round <= ss.round or (ss.locked_round == -1 and ss.locked_block):
        return f"{where} holds a lock (round {ss.locked_round}) that does not fit round {ss.round}"
    try:
        if ss.locked_block and decode_block(ss.locked_block).header.height != ss.height:
            return f"{where} holds a locked block of another height"
        for packed in ss.votes:
            vote = wire.Vote.unpack(packed)
            if vote.height != ss.height or vote.round > ss.round:
                return f"{where} holds a vote for another height or a later round"
    except _DECODE_ERRORS as exc:
        return f"{where} holds an undecodable block or vote ({exc})"
    return None


def head_problem(ledger: _LedgerReads, genesis: Optional[Genesis] = None) -> Optional[str]:
    """Cheap checks of the head: the top block decodes, links to the one
    below, matches its tx root and index, its stored commit certifies it,
    and the stored reputation state is at its height and intact."""
    genesis = genesis or ledger.genesis
    if genesis is None:
        return "no genesis"
    top = ledger.height()
    state_bytes = ledger.app_state_bytes()
    if top == 0:
        if ledger.block_bytes(1) is not None:
            return "height is 0 but block 1 is stored"
        return None
    where = f"head block {top}"
    try:
        block, commit = ledger.block(top), ledger.commit(top)
        below = ledger.block(top - 1) if top > 1 else None
    except _DECODE_ERRORS as exc:
        return f"{where}: undecodable ({exc})"
    if block is None or commit is None or (top > 1 and below is None):
        return f"{where}: missing (or its commit, or the block below)"
    hdr = block.header
    block_hash = block.hash()
    if hdr.chain_id != genesis.chain_id or hdr.height != top:
        return f"{where}: wrong chain_id or height"
    if hdr.prev_hash != (below.hash() if below is not None else b""):
        return f"{where}: prev_hash does not link to block {top - 1}"
    if hdr.tx_root != tx_root(block.txs) or hdr.last_commit_hash != commit_hash(block.last_commit):
        return f"{where}: tx_root or last_commit_hash mismatch"
    err = ValidatorSet(genesis.validators).verify_commit(genesis.chain_id, commit, top, block_hash)
    if err:
        return f"{where}: stored commit: {err}"
    if ledger.height_of_hash(block_hash) != top:
        return f"{where}: block-hash index mismatch"
    if state_bytes is None:
        return f"no reputation state stored at height {top}"
    err = _state_digest_problem(ledger)
    if err:
        return err
    try:
        state = ReputationState.from_bytes(Rules.from_genesis(genesis), state_bytes)
    except _DECODE_ERRORS as exc:
        return f"stored reputation state is undecodable ({exc})"
    if state.height != top:
        return f"stored reputation state is at height {state.height}, not {top}"
    return None


def quick_check(ledger: _LedgerReads, genesis: Optional[Genesis] = None) -> Optional[str]:
    """What start runs: :func:`head_problem`, then :func:`sign_state_problem`."""
    return head_problem(ledger, genesis) or sign_state_problem(ledger)


def check_ledger_at(path: str | Path, genesis: Optional[Genesis] = None, ledger: Optional[Ledger] = None) -> None:
    """LedgerError, in one line naming ``path`` and ``ledger verify``, unless
    :func:`quick_check` passes on the ledger there (``ledger`` if open
    already). No ledger at ``path`` yet passes."""
    path = Path(path)
    if ledger is None:
        if not (path / "data.mdb").exists():
            return
        with Ledger.open(path, genesis=genesis, readonly=True) as led:
            return check_ledger_at(path, genesis, led)
    try:
        problem = quick_check(ledger, genesis)
    except _DECODE_ERRORS as exc:
        problem = f"unreadable ({type(exc).__name__}: {exc})"
    if problem:
        data_dir = path.parent if path.name == "ledger" else path
        raise LedgerError(f"the ledger at {path} is damaged: {problem}; refusing to start "
                          f"(a full check: p2pnet ledger verify --data-dir {data_dir})")
